"""Poison input for the fault test: valid Kafka message values interleaved with malformed ones, seeded.

:func:`poison_stream` takes the valid message values of one source topic (each a JSON event object or a
JSON array of them, as produced to Kafka) and returns them in order with malformed messages inserted, so
that ``share`` of all returned messages are malformed. Every malformed message says exactly what
``decode_message(value, topic_kind, max_bytes)`` must make of it: its dead letters (element index and
reason, in order) and, for a mixed array, the new valid events it carries. Those events are real: clones
of a neighbouring valid event under a new ``event_id`` (same account, actor and time, so they are not late
and count like any other event), which the fault test adds to its expected valid events.

The expectations are written from the contract (:mod:`pipeline.events`, the order in which
:mod:`pipeline.decode` checks fields), not by running the decoder; the unit tests run every message
through the decoder and compare.

Producing :attr:`PoisonKind.OVERSIZED` messages (``max_bytes`` + 1/16): the embedded tansu broker takes
them (checked up to 64 MiB) and Faust's consumer fetches them despite its 1 MiB per-partition fetch size,
but kafka-python's producer refuses any record over its ``max_request_size`` (default 1 MiB) before
sending: raise it, as ``ingest.make_producer`` does. A real Kafka broker would refuse them too unless
the topic's ``max.message.bytes`` is raised (default 1048588).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

from pipeline.decode import decode_message
from pipeline.events import FOLLOWERS, MAX_EVENT_ID_CHARS, MAX_ID_CHARS, TOPIC_TYPES, TYPE_TOPIC, Event, Reason

DEFAULT_MAX_BYTES = 1024 * 1024  # the decoder's default and Settings.max_message_bytes
ORJSON_MAX_DEPTH = 1024  # orjson.loads rejects deeper nesting (and orjson.dumps anything over 255 levels)


class PoisonKind(StrEnum):
    """The kinds of malformed message; :func:`poison_stream` cycles through them in a seeded order."""

    TRUNCATED = "truncated"  # a valid message cut short (invalid JSON, or invalid UTF-8 mid-character)
    WRONG_TYPE = "wrong_type"  # one field of a valid event with a value of the wrong JSON type
    HUGE_STRING = "huge_string"  # an id 32 or 512 times its length limit
    DEEP_NESTING = "deep_nesting"  # nesting over orjson's limit, or under it inside an event or array
    INVALID_UTF8 = "invalid_utf8"  # invalid bytes inside an id
    NON_FINITE = "non_finite"  # NaN / Infinity literals, which JSON does not have
    OVERSIZED = "oversized"  # a valid event padded past max_bytes
    MIXED_ARRAY = "mixed_array"  # a JSON array of new valid events and bad elements


@dataclass(frozen=True, slots=True)
class ExpectedLetter:
    """One dead letter the decoder must produce: ``index`` in the array message, or -1 for the whole."""

    index: int
    reason: Reason


@dataclass(frozen=True, slots=True)
class PoisonedMessage:
    """One message of the poisoned stream and what decoding it must give.

    ``kind`` is ``None`` for a valid input message passed through unchanged (its expectations are the
    caller's own: ``dead_letters`` and ``valid_events`` are empty). ``origin`` is the index in the input
    of that message, or of the valid message a malformed one borrows its events from (the one before it
    when there is one): produce the message with that message's key so that borrowed accounts stay on
    their partition. ``valid_events`` are the *new* events of a mixed array, in decode order.
    """

    value: bytes
    kind: PoisonKind | None
    origin: int
    dead_letters: tuple[ExpectedLetter, ...] = ()
    valid_events: tuple[Event, ...] = ()


def poison_stream(
    valid_messages: Sequence[bytes],
    topic_kind: str,
    share: float = 0.05,
    seed: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_oversized: int = 16,
) -> list[PoisonedMessage]:
    """``valid_messages`` of the source topic ``topic_kind`` (``likes``...), in order, with malformed
    messages inserted at seeded positions so that they are ``share`` of the result (rounded).

    The result depends only on the arguments. The kinds are cycled in a seeded order, so each appears once
    there are at least ``len(PoisonKind)`` malformed messages; at most ``max_oversized`` are
    :attr:`PoisonKind.OVERSIZED` (each ``max_bytes`` + 1/16 long; the other kinds take their turns).
    ``max_bytes`` must be the decoder's: any malformed message longer than it is expected as one
    ``too_large`` dead letter. New event ids are ``poison-<topic_kind>-<seed>-<n>``, unique per topic and
    seed.

    Raises ValueError for an unknown topic, a share outside [0, 1), or input without one valid event.
    """
    if topic_kind not in TOPIC_TYPES:
        raise ValueError(f"unknown source topic kind {topic_kind!r}")
    if not 0 <= share < 1:
        raise ValueError("share must be in [0, 1)")
    rnd = random.Random(f"{seed}:{topic_kind}")
    maker = _Maker(rnd, valid_messages, topic_kind, seed, max_bytes)
    n = len(valid_messages)
    bad = round(share * n / (1 - share))
    slots = set(rnd.sample(range(n + bad), bad))
    order = list(PoisonKind)
    out: list[PoisonedMessage] = []
    taken = made = oversized = 0
    for slot in range(n + bad):
        if slot not in slots:
            out.append(PoisonedMessage(valid_messages[taken], None, taken))
            taken += 1
            continue
        if made % len(order) == 0:
            rnd.shuffle(order)
        kind = order[made % len(order)]
        made += 1
        if kind is PoisonKind.OVERSIZED:
            oversized += 1
            if oversized > max_oversized:
                kind = PoisonKind.MIXED_ARRAY
        out.append(maker.make(kind, max(taken - 1, 0)))
    return out


class _Source(NamedTuple):
    """What a malformed message is made from: a valid event of the input message ``origin``."""

    origin: int
    obj: dict[str, Any]  # the event as sent
    event: Event  # the event as decoded
    siblings: list[tuple[dict[str, Any], Event]]  # every valid event of that message


# (value, [(index, reason)...] of the dead letters, [new valid events]), in decode order
_Built = tuple[bytes, list[tuple[int, Reason]], list[Event]]


class _Maker:
    """Builds malformed messages, each from a valid event of the input message nearest its position."""

    def __init__(self, rnd: random.Random, messages: Sequence[bytes], topic_kind: str, seed: int, max_bytes: int):
        self.rnd = rnd
        self.messages = messages
        self.topic_kind = topic_kind
        self.max_bytes = max_bytes
        self.prefix = f"poison-{topic_kind}-{seed}-"
        self.count = 0
        self.valid: dict[int, list[tuple[dict[str, Any], Event]]] = {}
        self.builders: dict[PoisonKind, Callable[[_Source], _Built]] = {
            PoisonKind.TRUNCATED: self._truncated,
            PoisonKind.WRONG_TYPE: self._wrong_type,
            PoisonKind.HUGE_STRING: self._huge_string,
            PoisonKind.DEEP_NESTING: self._deep_nesting,
            PoisonKind.INVALID_UTF8: self._invalid_utf8,
            PoisonKind.NON_FINITE: self._non_finite,
            PoisonKind.OVERSIZED: self._oversized,
            PoisonKind.MIXED_ARRAY: self._mixed_array,
        }

    def make(self, kind: PoisonKind, near: int) -> PoisonedMessage:
        origin, siblings = self._nearest_valid(near)
        obj, event = self.rnd.choice(siblings)
        value, letters, events = self.builders[kind](_Source(origin, obj, event, siblings))
        if len(value) > self.max_bytes:  # the decoder checks the size first: one too_large letter, no event
            letters, events = [(-1, Reason.TOO_LARGE)], []
        expected = tuple(ExpectedLetter(index, reason) for index, reason in letters)
        return PoisonedMessage(value, kind, origin, expected, tuple(events))

    def _nearest_valid(self, near: int) -> tuple[int, list[tuple[dict[str, Any], Event]]]:
        """The input message at ``near``, or the closest one with a valid event, and its valid events."""
        for distance in range(len(self.messages)):
            for origin in (near - distance, near + distance):
                if 0 <= origin < len(self.messages):
                    if origin not in self.valid:
                        self.valid[origin] = self._valid_events(self.messages[origin])
                    if self.valid[origin]:
                        return origin, self.valid[origin]
        raise ValueError(f"no valid {self.topic_kind} event in the input to borrow from")

    def _valid_events(self, message: bytes) -> list[tuple[dict[str, Any], Event]]:
        try:
            value = orjson.loads(message)
        except orjson.JSONDecodeError:
            return []
        found = []
        for element in value if isinstance(value, list) else [value]:
            if isinstance(element, dict):
                events, rejections = decode_message(orjson.dumps(element), self.topic_kind, self.max_bytes)
                if events and not rejections:
                    found.append((element, events[0]))
        return found

    def _new_id(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count:06d}"

    def _truncated(self, src: _Source) -> _Built:
        whole = orjson.dumps(src.obj) if self.rnd.random() < 0.5 else self.messages[src.origin]
        cut = whole[: self.rnd.randrange(1, len(whole))]  # no prefix of an object or array is JSON
        try:
            cut.decode("utf-8")
        except UnicodeDecodeError:  # cut inside a multi-byte character
            return cut, [(-1, Reason.INVALID_UTF8)], []
        return cut, [(-1, Reason.INVALID_JSON)], []

    def _wrong_type(self, src: _Source) -> _Built:
        obj, event = src.obj, src.event
        changes: list[dict[str, Any]] = [
            {"ts": [obj["ts"]]},
            {"ts": {"ms": event.ts_ms}},
            {"account_id": 4242},
            {"event_id": 7},
            {"type": 1},
            {"actor_id": {"id": event.actor_id or "x"}},
            {"post_id": False},
        ]
        if self.topic_kind == "follows":  # a snapshot whose count is a string
            changes.append({"type": FOLLOWERS, "followers": str(event.followers or 12)})
        return orjson.dumps({**obj, **self.rnd.choice(changes)}), [(-1, Reason.WRONG_TYPE)], []

    def _huge_string(self, src: _Source) -> _Built:
        name = self.rnd.choice(["event_id", "account_id", "actor_id", "post_id", "in_reply_to"])
        limit = MAX_EVENT_ID_CHARS if name in ("event_id", "in_reply_to") else MAX_ID_CHARS
        text = self.rnd.choice("xé用🙂") * (limit * self.rnd.choice([32, 512]))  # at most 512 KiB
        return orjson.dumps({**src.obj, name: text}), [(-1, Reason.FIELD_TOO_LONG)], []

    def _deep_nesting(self, src: _Source) -> _Built:
        shape = self.rnd.randrange(3)
        if shape == 0:  # past orjson's limit: unreadable
            depth = self.rnd.choice([ORJSON_MAX_DEPTH + 1, 10_000])
            return b"[" * depth + b"]" * depth, [(-1, Reason.INVALID_JSON)], []
        # Readable (with the array and the event around it, within orjson's limit), but too deep for
        # orjson.dumps to re-encode the rejected element for its dead letter.
        depth = self.rnd.randrange(300, ORJSON_MAX_DEPTH - 1)
        nested = b"[" * depth + b"]" * depth
        if shape == 1:  # an array whose one element is nested lists
            return b"[" + nested + b"]", [(0, Reason.NOT_AN_OBJECT)], []
        event = orjson.dumps({**src.obj, "ts": "__TS__"}).replace(b'"__TS__"', nested)
        return b"[" + event + b"]", [(0, Reason.WRONG_TYPE)], []

    def _invalid_utf8(self, src: _Source) -> _Built:
        bad = self.rnd.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\x80"])
        value = orjson.dumps({**src.obj, "account_id": "__ID__"}).replace(b"__ID__", b"acct-" + bad)
        return value, [(-1, Reason.INVALID_UTF8)], []

    def _non_finite(self, src: _Source) -> _Built:
        name = "followers" if src.event.type == FOLLOWERS and self.rnd.random() < 0.5 else "ts"
        literal = self.rnd.choice([b"NaN", b"Infinity", b"-Infinity"])
        value = orjson.dumps({**src.obj, name: "__NUMBER__"}).replace(b'"__NUMBER__"', literal)
        return value, [(-1, Reason.INVALID_JSON)], []

    def _oversized(self, src: _Source) -> _Built:
        """A valid event (unknown fields are allowed) padded to ``max_bytes`` + 1/16 (if it was shorter)."""
        padding = self.max_bytes + max(self.max_bytes // 16, 1) - len(orjson.dumps({**src.obj, "note": ""}))
        return orjson.dumps({**src.obj, "note": "p" * max(padding, 0)}), [(-1, Reason.TOO_LARGE)], []

    def _mixed_array(self, src: _Source) -> _Built:
        elements: list[tuple[Any, Event | Reason]] = []
        for _ in range(self.rnd.randint(1, 3)):  # clones of valid events of the same message, new ids
            obj, event = self.rnd.choice(src.siblings)
            new_id = self._new_id()
            elements.append(({**obj, "event_id": new_id}, event._replace(event_id=new_id)))
        bad = self._bad_elements(src.obj, src.event)
        elements += self.rnd.sample(bad, self.rnd.randint(1, 3))
        self.rnd.shuffle(elements)
        letters = [(index, got) for index, (_, got) in enumerate(elements) if isinstance(got, Reason)]
        events = [got for _, got in elements if isinstance(got, Event)]
        return orjson.dumps([element for element, _ in elements]), letters, events

    def _bad_elements(self, obj: dict[str, Any], event: Event) -> list[tuple[Any, Event | Reason]]:
        """Bad array elements, each with its reason (one bad field; the decoder checks type, topic,
        event_id, ts, account_id, actor_id, post_id, in_reply_to, followers in this order)."""
        others = sorted(t for t in TYPE_TOPIC if t not in TOPIC_TYPES[self.topic_kind])
        bad: list[tuple[Any, Event | Reason]] = [
            ({}, Reason.MISSING_FIELD),
            ({k: v for k, v in obj.items() if k != "account_id"}, Reason.MISSING_FIELD),
            ({**obj, "event_id": ""}, Reason.EMPTY_FIELD),
            ({**obj, "ts": [obj["ts"]]}, Reason.WRONG_TYPE),
            ({**obj, "ts": "yesterday"}, Reason.INVALID_TS),
            ({**obj, "ts": -5}, Reason.INVALID_TS),
            ({**obj, "type": "poke"}, Reason.UNKNOWN_TYPE),
            ({**obj, "type": self.rnd.choice(others)}, Reason.TOPIC_MISMATCH),
            ({**obj, "event_id": "e" * (MAX_EVENT_ID_CHARS + 1)}, Reason.FIELD_TOO_LONG),
            ("not an event", Reason.NOT_AN_OBJECT),
            (None, Reason.NOT_AN_OBJECT),
            ([obj], Reason.NOT_AN_OBJECT),
        ]
        if event.type != FOLLOWERS:
            bad.append(({**obj, "followers": 3}, Reason.UNEXPECTED_FIELD))
        if self.topic_kind == "follows":
            bad.append(({**obj, "type": FOLLOWERS, "followers": -1}, Reason.INVALID_FOLLOWERS))
        return bad
