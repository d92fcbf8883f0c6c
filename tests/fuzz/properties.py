"""The properties of :func:`pipeline.decode.decode_message` every fuzzer checks, on any input.

- it never raises;
- every element is accounted for: a message that is unreadable, too large or an empty array gives exactly
  one rejection of the whole (index -1) and no event; an array of n elements gives one event or one
  rejection per element (rejection indices distinct, increasing, in range); any other JSON value gives
  one event or one whole-message rejection;
- every event satisfies the contract's invariants (:mod:`pipeline.events`), on the topic it came from;
- the result is the general decoder's (orjson, then the detailed validation per element): the msgspec
  fast path (:mod:`pipeline.wire`) may only refuse a message, never read one differently.

The decoder runs with :data:`STACK_HEADROOM` frames of stack left, as from deep in a worker's stack:
nothing in it may recurse with the input (hypothesis raises the recursion limit while a test runs, which
would otherwise hide that).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from pipeline.decode import _decode_general, decode_message
from pipeline.events import (
    FOLLOWERS,
    MAX_EVENT_ID_CHARS,
    MAX_FOLLOWERS,
    MAX_ID_CHARS,
    MAX_TS_MS,
    REPLY,
    TOPIC_TYPES,
    TYPE_TOPIC,
    Event,
    Reason,
    Rejection,
)

STACK_HEADROOM = 100  # frames


@contextmanager
def stack_headroom(frames: int = STACK_HEADROOM) -> Iterator[None]:
    """The recursion limit set ``frames`` above the current depth while the block runs."""
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def check_decode(payload: bytes | None, topic_kind: str | None, max_bytes: int) -> tuple[list[Event], list[Rejection]]:
    """Decode ``payload`` and assert every property above; returns what the decoder returned."""
    with stack_headroom():
        events, rejections = decode_message(payload, topic_kind, max_bytes)
        general = _decode_general(payload, topic_kind, max_bytes)
    assert isinstance(events, list) and isinstance(rejections, list)
    assert (events, rejections) == general, (payload, events, rejections, general)
    assert [tuple(map(type, event)) for event in events] == [tuple(map(type, event)) for event in general[0]]
    for event in events:
        check_event(event, topic_kind)
    for rejection in rejections:
        assert isinstance(rejection, Rejection) and isinstance(rejection.reason, Reason), rejection
        assert isinstance(rejection.payload, bytes) and isinstance(rejection.detail, str) and rejection.detail
        assert rejection.reason is not Reason.LATE  # lateness is the aggregator's, not the decoder's
    whole = _whole_message_reason(payload, max_bytes)
    if whole is not None:
        assert events == [], (payload, events)
        assert [(r.index, r.reason) for r in rejections] == [(-1, whole)], (payload, rejections)
        return events, rejections
    assert payload is not None
    value = orjson.loads(payload)
    if isinstance(value, list):
        indices = [r.index for r in rejections]
        assert indices == sorted(set(indices)) and all(0 <= i < len(value) for i in indices), indices
        assert len(events) + len(rejections) == len(value), (len(value), events, rejections)
    else:
        assert (len(events), len(rejections)) in ((1, 0), (0, 1)), (events, rejections)
        assert all(r.index == -1 for r in rejections)
    return events, rejections


def _whole_message_reason(payload: bytes | None, max_bytes: int) -> Reason | None:
    """The one reason for the whole message when it carries no element to validate, else ``None``."""
    if payload is None:
        return Reason.INVALID_JSON
    if len(payload) > max_bytes:
        return Reason.TOO_LARGE
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return Reason.INVALID_UTF8
        return Reason.INVALID_JSON
    return Reason.EMPTY_BATCH if value == [] else None


def check_event(event: Event, topic_kind: str | None) -> None:
    """The invariants of a valid event (the JSON Schema's rules, as the decoder returns them)."""
    assert type(event) is Event, event
    assert event.type in TYPE_TOPIC, event
    if topic_kind is not None:
        assert event.type in TOPIC_TYPES[topic_kind], (topic_kind, event)
    _check_id(event.event_id, MAX_EVENT_ID_CHARS)
    _check_id(event.account_id, MAX_ID_CHARS)
    assert type(event.ts_ms) is int and 0 <= event.ts_ms <= MAX_TS_MS, event
    if event.type == FOLLOWERS:
        assert event.actor_id == "" or 0 < len(event.actor_id) <= MAX_ID_CHARS, event
        assert type(event.followers) is int and 0 <= event.followers <= MAX_FOLLOWERS, event
    else:
        _check_id(event.actor_id, MAX_ID_CHARS)
        assert event.followers is None, event
    if event.post_id is not None:
        _check_id(event.post_id, MAX_ID_CHARS)
    if event.in_reply_to is not None:
        assert event.type == REPLY, event
        _check_id(event.in_reply_to, MAX_EVENT_ID_CHARS)


def _check_id(value: object, limit: int) -> None:
    assert type(value) is str and 0 < len(value) <= limit, value
