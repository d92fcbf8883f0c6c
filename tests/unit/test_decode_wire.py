"""The decoder's msgspec fast path (:func:`pipeline.decode._decode_wire`): it reads the messages producers
send, and refuses, for the general path to judge, every message it could read differently from orjson.

Every fuzzer of the decoder (tests/unit/test_decode_fuzz.py, tests/fuzz/) also checks, on any input, that
:func:`decode_message` gives what the general path alone gives (tests/fuzz/properties.py).
"""

from __future__ import annotations

import json
import sys
from typing import Any, get_args

import orjson
import pytest

from pipeline.decode import _decode_general, _decode_wire, decode_message
from pipeline.events import TYPE_TOPIC, Event, Reason
from pipeline.wire import WireType

LIKE = b'{"event_id":"e1","type":"like","ts":%s,"account_id":"a","actor_id":%s}'
GOOD_LIKE: dict[str, Any] = {"event_id": "e1", "type": "like", "ts": 5, "actor_id": "u", "account_id": "a"}
SNAPSHOT = b'{"event_id":"s1","type":"followers","ts":"2026-01-01T00:00:00Z","account_id":"a","followers":%s}'


def both(payload: bytes, topic: str | None = "likes") -> tuple[list[Event] | None, tuple[list[Event], list[Reason]]]:
    """The fast path's events (or None), and the general path's events and reasons."""
    events, rejections = _decode_general(payload, topic, 1024 * 1024)
    assert decode_message(payload, topic) == (events, rejections)
    return _decode_wire(payload, topic), (events, [r.reason for r in rejections])


def test_what_producers_send_takes_the_fast_path() -> None:
    batch = [
        {"event_id": "e1", "type": "like", "ts": 1767225600123, "actor_id": "u1", "account_id": "a1", "post_id": "p"},
        {"event_id": "e2", "type": "reply", "ts": "2026-01-01T01:00:00.5+01:00", "actor_id": "u", "account_id": "a",
         "in_reply_to": "e1"},
        {"event_id": "e3", "type": "mention", "ts": "2026-01-01T00:00:00.000Z", "actor_id": "u", "account_id": "a"},
    ]  # fmt: skip
    fast, (events, reasons) = both(orjson.dumps(batch), None)
    assert reasons == [] and fast == events and len(events) == 3
    assert events[1] == Event("e2", "reply", 1767225600500, "u", "a", None, "e1", None)
    fast, (events, reasons) = both(SNAPSHOT % b"12", "follows")
    assert fast == events == [Event("s1", "followers", 1767225600000, "", "a", None, None, 12)]
    fast, _ = both(orjson.dumps(batch[0]), "likes")
    assert fast is not None and fast[0].post_id == "p"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # JSON both parsers read alike: the fast path must give the general path's values
        (b'{"event_id":"e1","type":"like","ts":1,"account_id":"a","actor_id":"x","actor_id":"y"}', "y"),
        (LIKE % (b"1", b'"\\ud83d\\ude00"'), "\U0001f600"),
        (LIKE % (b"1", b'"a\\u0000b"'), "a\x00b"),
        (LIKE % (b"1", b'"a\x7fb"'), "a\x7fb"),
        (LIKE % (b"1", b'"a\\/b\\u00E9"'), "a/b\u00e9"),
        (b'{"event\\u005fid":"e1","type":"like","ts":1,"account_id":"a","actor_id":"x"}', "x"),
        (LIKE % (b"-0", b'"x"'), "x"),
        (b" \n" + LIKE % (b"1 ", b'"x"') + b"\t\r ", "x"),
    ],
)
def test_json_both_parsers_read_alike(payload: bytes, expected: str) -> None:
    fast, (events, reasons) = both(payload)
    assert reasons == [] and fast == events and events[0].actor_id == expected


@pytest.mark.parametrize(
    "payload",
    [
        LIKE % (b"1", b'"\\ud800"'),  # a lone surrogate
        LIKE % (b"1", b'"\\ude00\\ud83d"'),
        LIKE % (b"1", b'"a\x01b"'),  # a raw control character
        LIKE % (b"1", b'"a\xffb"'),  # not UTF-8
        LIKE % (b"1", b'"a\xed\xa0\x80b"'),  # an encoded surrogate
        LIKE % (b"1.0", b'"x"'),  # a float ts (the general path takes an integral one)
        LIKE % (b"1e3", b'"x"'),
        LIKE % (b"true", b'"x"'),
        LIKE % (b"123456789012345678901234567890", b'"x"'),  # orjson reads it as a float
        LIKE % (b"-1", b'"x"'),
        LIKE % (b"01", b'"x"'),
        LIKE % (b"NaN", b'"x"'),
        LIKE % (b"1", b'"x"') + b" x",
        b"\xef\xbb\xbf" + LIKE % (b"1", b'"x"'),
        b'{"event_id":"e1","type":"like","ts":1,"account_id":"a","actor_id":"x",}',
        b'{"event_id":"e1","type":"like","ts":1,"account_id":"a","actor_id":"x","followers":null}',
        b'{"event_id":"e1","type":"like","ts":1,"account_id":"a","actor_id":"x","extra":1}',  # unknown field
        b'{"event_id":"e1","type":"like","ts":1,"account_id":"a","actor_id":"x","n":123456789012345678901234567}',
        b'{"event_id":"e1","type":"like","ts":1,"account_id":"a","actor_id":"x","n":'
        + b"[" * 2000
        + b"]" * 2000
        + b"}",
        b'{"event_id":"e1","type":"like","ts":1,"account_id":"a"}',  # no actor
        b'{"event_id":"e1","type":"like","ts":"2026-02-30T00:00:00Z","account_id":"a","actor_id":"x"}',
        b'{"event_id":"e1","type":"follow","ts":1,"account_id":"a","actor_id":"x"}',  # not on "likes"
        b'{"event_id":"","type":"like","ts":1,"account_id":"a","actor_id":"x"}',
        SNAPSHOT % b"-1",
        SNAPSHOT % b"null",
        SNAPSHOT % b"true",
        b"[" + LIKE % (b"1", b'"x"') + b"," + LIKE % (b"1", b"null") + b"]",  # one bad element of two
        b"[[" + LIKE % (b"1", b'"x"') + b"]]",
        b"[]",
        b"null",
        b'"like"',
    ],
)
def test_anything_else_goes_to_the_general_path(payload: bytes) -> None:
    fast, _ = both(payload)
    assert fast is None


def test_a_bad_element_rejects_only_itself() -> None:
    payload = b"[" + LIKE % (b"1", b'"x"') + b"," + LIKE % (b"2", b"7") + b"]"
    fast, (events, reasons) = both(payload)
    assert fast is None and [e.ts_ms for e in events] == [1] and reasons == [Reason.WRONG_TYPE]


def test_ascii_escaped_and_plain_encodings_decode_alike() -> None:
    obj = {"event_id": "é1", "type": "mention", "ts": 5, "actor_id": "ü\u2028", "account_id": "\U0001f600"}
    plain, escaped = json.dumps(obj, ensure_ascii=False).encode(), json.dumps(obj).encode()
    assert both(plain)[0] is None  # "mention" is not on "likes": the general path's rejection
    assert both(plain, "mentions")[0] == both(escaped, "mentions")[0] == decode_message(plain, "mentions")[0]
    assert decode_message(escaped, "mentions")[0][0].actor_id == "ü\u2028"


def test_the_wire_types_are_the_contracts() -> None:
    assert set(get_args(WireType)) == set(TYPE_TOPIC)


def test_an_unknown_type_goes_to_the_general_path() -> None:
    fast, (events, reasons) = both(b'{"event_id":"e1","type":"poke","ts":1,"account_id":"a","actor_id":"x"}')
    assert fast is None and events == [] and reasons == [Reason.UNKNOWN_TYPE]


def test_an_event_carries_its_types_one_shared_string() -> None:
    fast, _ = both(orjson.dumps([GOOD_LIKE, GOOD_LIKE]))
    assert fast is not None and fast[0].type is fast[1].type is sys.intern("like")
    events, _ = decode_message(orjson.dumps({**GOOD_LIKE, "ts": 1.0}), "likes")  # the general path
    assert events[0].type is sys.intern("like")
