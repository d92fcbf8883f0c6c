"""Decoding and validation: every bad-input case gets its reason; good events in every ts form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.decode import decode_message, parse_ts
from pipeline.events import MAX_TS_MS, Event, Reason

GOOD = {"event_id": "e1", "type": "like", "ts": 1767225600123, "actor_id": "u1", "account_id": "a1"}


def one(payload: bytes, topic: str | None = "likes") -> tuple[list[Event], list[Reason]]:
    events, rejections = decode_message(payload, topic)
    return events, [r.reason for r in rejections]


def enc(**changes: object) -> bytes:
    obj = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            obj.pop(key)
        else:
            obj[key] = value
    return orjson.dumps(obj)


def test_valid_like() -> None:
    events, reasons = one(enc())
    assert reasons == []
    assert events == [Event("e1", "like", 1767225600123, "u1", "a1")]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1767225600123, 1767225600123),
        ("2026-01-01T00:00:00.123Z", 1767225600123),
        ("2026-01-01T00:00:00Z", 1767225600000),
        ("2026-01-01t00:00:00z", 1767225600000),
        ("2026-01-01 00:00:00.1239999Z", 1767225600123),
        ("2026-01-01T01:00:00.123+01:00", 1767225600123),
        ("2025-12-31T19:30:00.123-04:30", 1767225600123),
    ],
)
def test_ts_forms(ts: object, expected: int) -> None:
    assert parse_ts(ts) == expected
    events, reasons = one(enc(ts=ts))
    assert reasons == [] and events[0].ts_ms == expected


@pytest.mark.parametrize(
    ("ts", "accepted"),
    [
        (MAX_TS_MS, True),  # 2099-12-31T23:59:59.999Z: the last instant accepted
        ("2099-12-31T23:59:59.999Z", True),
        (MAX_TS_MS + 1, False),  # 2100 and later: ClickHouse's DateTime ends in 2106 (window bounds too)
        ("2100-01-01T00:00:00Z", False),
        ("2106-02-08T00:00:00Z", False),
        ("2100-01-01T00:59:00+01:00", True),  # 2099-12-31T23:59Z
        (253402300799999, False),  # 9999-12-31T23:59:59.999Z, accepted until 2026-11
        ("2026-01-01T00:00:00+00:99", False),  # a zone offset's minutes end at 59
        ("2026-01-01T00:00:00-01:60", False),
        ("2026-01-01T00:00:00+23:59", True),
    ],
)
def test_ts_bounds(ts: object, accepted: bool) -> None:
    events, reasons = one(enc(ts=ts))
    assert (reasons, len(events)) == (([], 1) if accepted else ([Reason.INVALID_TS], 0))


def test_whole_number_floats_are_integers_as_json_schema_says() -> None:
    events, reasons = one(enc(ts=1767225600123.0))
    assert reasons == [] and events[0].ts_ms == 1767225600123 and type(events[0].ts_ms) is int
    assert one(enc(ts=1767225600123.5))[1] == [Reason.WRONG_TYPE]
    assert one(enc(ts=1e300))[1] == [Reason.INVALID_TS]
    snapshot = {"event_id": "s", "type": "followers", "ts": 1767225600000, "account_id": "a1", "followers": 120.0}
    events, reasons = one(orjson.dumps(snapshot), topic="follows")
    assert reasons == [] and events[0].followers == 120 and type(events[0].followers) is int


@pytest.mark.parametrize(("followers", "accepted"), [(0, True), (2**53 - 1, True), (2**53, False), (2**63 - 1, False)])
def test_followers_bounds(followers: int, accepted: bool) -> None:
    snapshot = {"event_id": "s", "type": "followers", "ts": 1767225600000, "account_id": "a1", "followers": followers}
    events, reasons = one(orjson.dumps(snapshot), topic="follows")
    assert (reasons, len(events)) == (([], 1) if accepted else ([Reason.INVALID_FOLLOWERS], 0))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", Reason.INVALID_JSON),
        (b'{"event_id": "e1", "type": "like"', Reason.INVALID_JSON),
        (b"\xff\xfe\x00garbage", Reason.INVALID_UTF8),
        (b'{"event_id": "\xc3\x28"}', Reason.INVALID_UTF8),
        (b'"a string"', Reason.NOT_AN_OBJECT),
        (b"42", Reason.NOT_AN_OBJECT),
        (b"null", Reason.NOT_AN_OBJECT),
        (b"[]", Reason.EMPTY_BATCH),
        (b'{"event_id": "e1", "ts": NaN}', Reason.INVALID_JSON),
        (b"[" * 5000 + b"]" * 5000, Reason.INVALID_JSON),
        (enc(event_id=...), Reason.MISSING_FIELD),
        (enc(type=...), Reason.MISSING_FIELD),
        (enc(ts=...), Reason.MISSING_FIELD),
        (enc(actor_id=...), Reason.MISSING_FIELD),
        (enc(account_id=...), Reason.MISSING_FIELD),
        (enc(account_id=""), Reason.EMPTY_FIELD),
        (enc(event_id=""), Reason.EMPTY_FIELD),
        (enc(event_id=7), Reason.WRONG_TYPE),
        (enc(actor_id=["x"]), Reason.WRONG_TYPE),
        (enc(type=3), Reason.WRONG_TYPE),
        (enc(ts=True), Reason.WRONG_TYPE),
        (enc(ts=1767225600123.5), Reason.WRONG_TYPE),
        (enc(ts={"at": 1}), Reason.WRONG_TYPE),
        (enc(type="poke"), Reason.UNKNOWN_TYPE),
        (enc(type="reply"), Reason.TOPIC_MISMATCH),
        (enc(type="follow"), Reason.TOPIC_MISMATCH),
        (enc(ts="2026-01-01T00:00:00"), Reason.INVALID_TS),
        (enc(ts="2026-01-01"), Reason.INVALID_TS),
        (enc(ts="yesterday"), Reason.INVALID_TS),
        (enc(ts="2026-02-30T00:00:00Z"), Reason.INVALID_TS),
        (enc(ts="2026-01-01T00:00:00+25:00"), Reason.INVALID_TS),
        (enc(ts="\u0662\u0660\u0662\u0666-01-01T00:00:00Z"), Reason.INVALID_TS),  # Arabic-Indic digits
        (enc(ts="2026-01-01T00:00:00.\u0661\u0662\u0663Z"), Reason.INVALID_TS),
        (enc(ts="2026-01-01T00:00:00+0\u0661:00"), Reason.INVALID_TS),
        (enc(ts=-5), Reason.INVALID_TS),
        (enc(ts=10**15), Reason.INVALID_TS),
        (enc(event_id="x" * 129), Reason.FIELD_TOO_LONG),
        (enc(account_id="x" * 257), Reason.FIELD_TOO_LONG),
        (enc(actor_id="x" * 257), Reason.FIELD_TOO_LONG),
        (enc(followers=3), Reason.UNEXPECTED_FIELD),
    ],
)
def test_bad_input_reasons(payload: bytes, reason: Reason) -> None:
    events, reasons = one(payload)
    assert events == []
    assert reasons == [reason]


def test_followers_snapshot_rules() -> None:
    snapshot = {"event_id": "s", "type": "followers", "ts": 0, "account_id": "a", "followers": 10}
    events, reasons = one(orjson.dumps(snapshot), "follows")
    assert reasons == [] and events[0].followers == 10 and events[0].actor_id == ""
    # an actor on a snapshot is ignored: one equal to the account made the snapshot "self", and dropped it
    reported = one(orjson.dumps({**snapshot, "actor_id": "a"}), "follows")[0]
    assert reported == events and not reported[0].is_self
    for bad, reason in [
        (-1, Reason.INVALID_FOLLOWERS),
        (1.5, Reason.WRONG_TYPE),
        (True, Reason.WRONG_TYPE),
        ("10", Reason.WRONG_TYPE),
    ]:
        assert one(orjson.dumps({**snapshot, "followers": bad}), "follows")[1] == [reason]
    missing = dict(snapshot)
    del missing["followers"]
    assert one(orjson.dumps(missing), "follows")[1] == [Reason.MISSING_FIELD]


def test_message_over_limit_is_rejected_before_parsing() -> None:
    big = enc(post_id="p" * (1024 * 1024))
    events, rejections = decode_message(big, "likes", max_bytes=1024 * 1024)
    assert events == [] and [r.reason for r in rejections] == [Reason.TOO_LARGE]
    assert rejections[0].index == -1


def test_null_message_is_a_dead_letter() -> None:
    assert one(None)[1] == [Reason.INVALID_JSON]  # type: ignore[arg-type]


def test_array_elements_are_validated_independently() -> None:
    good2 = dict(GOOD, event_id="e2")
    payload = orjson.dumps([GOOD, {"type": "like"}, "nope", good2, [GOOD], dict(GOOD, ts="bad")])
    events, rejections = decode_message(payload, "likes")
    assert [e.event_id for e in events] == ["e1", "e2"]
    assert [(r.index, r.reason) for r in rejections] == [
        (1, Reason.MISSING_FIELD),
        (2, Reason.NOT_AN_OBJECT),
        (4, Reason.NOT_AN_OBJECT),
        (5, Reason.INVALID_TS),
    ]
    assert orjson.loads(rejections[0].payload) == {"type": "like"}


def test_unicode_ids_survive() -> None:
    odd = "o'brien\\\"🙂\u0000 ünïcode"
    events, reasons = one(enc(actor_id=odd, account_id=odd[::-1], event_id="é" * 128))
    assert reasons == []
    assert events[0].actor_id == odd and events[0].account_id == odd[::-1]


def test_in_reply_to_is_kept_on_replies_only() -> None:
    reply = dict(GOOD, type="reply", in_reply_to="e0")
    assert one(orjson.dumps(reply), "replies")[0][0].in_reply_to == "e0"
    assert one(orjson.dumps(dict(GOOD, in_reply_to="e0")))[0][0].in_reply_to is None


def test_ingest_mode_skips_topic_check() -> None:
    events, reasons = one(enc(type="follow"), topic=None)
    assert reasons == [] and events[0].type == "follow"


@given(st.integers(min_value=0, max_value=MAX_TS_MS), st.booleans())
def test_canonical_utc_timestamps_parse_exactly(ms: int, with_millis: bool) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond // 1000:03d}Z" if with_millis else "Z")
    assert parse_ts(text) == (ms if with_millis else ms - ms % 1000)


PIECES = {
    "year": ["2026", "1970", "9999", "2024", "1969", "20a6", "2a26", "a026", "202\u0663"],
    "month": ["01", "02", "12", "13", "00", "1a"],
    "day": ["01", "28", "29", "31", "32", "00"],
    "hour": ["00", "23", "24", "1x"],
    "minute": ["00", "59", "60"],
    "second": ["00", "59", "60", "5a", "+1", " 1", "\u06631"],
    "fraction": [".000", ".999", ".12a", ".+12", ".\uff11\uff12\uff13", ""],
    "zone": ["Z", "+00:00", "-00:00", "+05:30", "-23:59", "+24:00", "+01:60", "-1x:00", "+01-00", "+", "Z01:00"],
}


@given(st.tuples(*(st.sampled_from(v) for v in PIECES.values())))
def test_canonical_shaped_timestamps_parse_as_the_general_parser_does(pieces: tuple[str, ...]) -> None:
    """The fast path (``parse_ts`` for ``YYYY-MM-DDTHH:MM:SS[.fff]`` then ``Z`` or ``±hh:mm``) agrees with
    ``datetime.fromisoformat`` on valid and invalid dates, times, offsets, digits and signs (but for an
    offset's minutes over 59, which RFC 3339 does not allow and ``fromisoformat`` takes)."""
    year, month, day, hour, minute, second, fraction, zone = pieces
    text = f"{year}-{month}-{day}T{hour}:{minute}:{second}{fraction}{zone}"
    try:
        expected = round(datetime.fromisoformat(text).timestamp() * 1000) if text.isascii() else -1
    except ValueError:
        expected = -1
    if zone != "Z" and zone[-2:] > "59":
        expected = -1
    if 0 <= expected <= MAX_TS_MS:
        assert parse_ts(text) == expected
    else:
        with pytest.raises(Exception, match="ts"):
            parse_ts(text)


@given(
    st.datetimes(datetime(1970, 1, 2), datetime(9999, 12, 30, 23, 59, 59, 999000)),
    st.booleans(),
    st.none() | st.integers(-(23 * 60 + 59), 23 * 60 + 59),
)
def test_the_canonical_fast_path_answers_exactly(moment: datetime, with_millis: bool, offset: int | None) -> None:
    """``_canonical_ms`` itself (not the general parser behind it) answers every valid time in the shape
    it knows, ``Z`` or ``±hh:mm``, leap days and the years 2000 and 9999 included, with ``datetime``'s
    milliseconds."""
    from pipeline.decode import _canonical_ms

    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond // 1000:03d}" if with_millis else "")
    if offset is None:
        text += "Z"
    else:
        text += f"{'-' if offset < 0 else '+'}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    assert _canonical_ms(text) == round(datetime.fromisoformat(text).timestamp() * 1000)


@pytest.mark.parametrize(
    "ts",
    [
        "2023-02-29T00:00:00Z",
        "2100-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "2026-01-01T00:00:60Z",
        "2026-01-01T00:00:00.5Z",
        "2026-01-01T00:00:00+24:00",
        "2026-01-01T00:00:00.000+01:60",
        "2026-01-01T00:00:00+1a:00",
        "2026-01-01T00:00:00+01-00",
        "2026-01-01T00:00:00*01:00",
        "1970-01-01T00:30:00+01:00",
        "1969-12-31T23:30:00-01:00",
        "20a6-01-01T00:00:00Z",
        "2026-01-01T00:00:00.1a3Z",
        "2026-01-01T00:00:06+",  # found by atheris: a sign where "Z" belongs read past the end
        "2026-01-01T00:00:00.000-",
        "2026-01-01T00:00:00Z01:00",
        "2026-01-01T00:00:00.000Z01:00",
        "2026-01-01T00:00:0\ud800Z",  # not from JSON (orjson refuses lone surrogates), but parse_ts is public
    ],
)
def test_the_canonical_fast_path_leaves_the_rest_to_the_general_parser(ts: str) -> None:
    """Invalid times, other shapes, and times before 1970 (local or UTC) are not its to answer."""
    from pipeline.decode import _canonical_ms

    assert _canonical_ms(ts) == -1


@pytest.mark.parametrize("ts", ["2023-02-29T00:00:00Z", "2026-01-01T24:00:00.000Z", "2026-01-01T00:00:0a.123Z"])
def test_canonical_shaped_but_invalid_timestamps_are_rejected(ts: str) -> None:
    assert one(enc(ts=ts))[1] == [Reason.INVALID_TS]


@pytest.mark.parametrize("depth", [256, 600, 1000, 1023])
def test_rejected_element_too_deep_to_re_encode(depth: int) -> None:
    """orjson reads 1024 levels of nesting but writes only 255: the rejected element's dead-letter payload
    fell back to ``repr``, which raised RecursionError from about 1000 levels (found by fuzzing)."""
    nested = b"[" * depth + b"]" * depth
    events, rejections = decode_message(b"[" + nested + b"]", "likes")
    assert events == [] and [(r.index, r.reason) for r in rejections] == [(0, Reason.NOT_AN_OBJECT)]
    assert rejections[0].payload
    deep_ts = b'[{"event_id": "e", "type": "like", "ts": ' + nested[2:-2] + b', "actor_id": "u", "account_id": "a"}]'
    assert [(r.index, r.reason) for r in decode_message(deep_ts, "likes")[1]] == [(0, Reason.WRONG_TYPE)]
