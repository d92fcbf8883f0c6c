"""The decoder fuzzed with hypothesis: arbitrary bytes, arbitrary JSON, mutated valid events, mixed arrays.

Every input goes through :func:`tests.fuzz.properties.check_decode` (never raises, every element accounted
for, every event within the contract's invariants); mutations of valid events also check the exact reason.
The coverage-guided counterpart is ``tests/fuzz/fuzz_decode.py`` (atheris).
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.decode import InvalidEvent, _validate_detailed, validate_event
from pipeline.events import (
    FOLLOWERS,
    MAX_EVENT_ID_CHARS,
    MAX_FOLLOWERS,
    MAX_ID_CHARS,
    MAX_TS_MS,
    REPLY,
    SOURCE_TOPICS,
    TYPE_TOPIC,
    Event,
    Reason,
)
from tests.fuzz.properties import check_decode

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)

topics = st.sampled_from([None, *SOURCE_TOPICS])
max_bytes = st.sampled_from([1024 * 1024, 1024 * 1024, 256, 40])

# --- valid events, with the Event the decoder must return ------------------------------------------

ids = st.text(min_size=1, max_size=MAX_ID_CHARS)
event_ids = st.text(min_size=1, max_size=MAX_EVENT_ID_CHARS)


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[int | str, int]:
    """A ``ts`` in one of the contract's forms, with its epoch milliseconds."""
    if draw(st.booleans()):
        ms = draw(st.integers(0, MAX_TS_MS))
        return ms, ms
    offset = timedelta(minutes=draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59)))
    when = draw(st.datetimes(datetime(1970, 1, 2), datetime(2099, 12, 30))).replace(microsecond=0)
    local = when.replace(tzinfo=UTC).astimezone(timezone(offset))
    fraction = draw(st.none() | st.text("0123456789", min_size=1, max_size=12))
    text = (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}{draw(st.sampled_from('Tt '))}"
        f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
    )
    if fraction is not None:
        text += "." + fraction
    if offset or draw(st.booleans()):
        sign = "-" if offset < timedelta(0) else "+"
        minutes = abs(offset) // timedelta(minutes=1)
        text += f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    else:
        text += draw(st.sampled_from("Zz"))
    ms = (when.replace(tzinfo=UTC) - EPOCH) // MILLISECOND + int((fraction or "")[:3].ljust(3, "0"))
    return text, ms


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[dict[str, Any], Event]:
    """A valid event object of any type and any optional fields, and its decoded :class:`Event`."""
    kind = draw(st.sampled_from(sorted(TYPE_TOPIC)))
    ts, ts_ms = draw(timestamps())
    obj: dict[str, Any] = {"event_id": draw(event_ids), "type": kind, "ts": ts, "account_id": draw(ids)}
    if kind != FOLLOWERS or draw(st.booleans()):
        obj["actor_id"] = draw(ids)
    if draw(st.booleans()):
        obj["post_id"] = draw(ids)
    if draw(st.booleans()):
        obj["in_reply_to"] = draw(event_ids)
    if kind == FOLLOWERS:
        obj["followers"] = draw(st.integers(0, MAX_FOLLOWERS))
    if draw(st.booleans()):
        obj[draw(st.sampled_from(["extra", "meta", "x"]))] = draw(json_values)  # unknown fields are allowed
    event = Event(
        obj["event_id"],
        kind,
        ts_ms,
        "" if kind == FOLLOWERS else obj["actor_id"],  # a snapshot has no actor: one given is ignored
        obj["account_id"],
        obj.get("post_id"),
        obj.get("in_reply_to") if kind == REPLY else None,
        obj.get("followers"),
    )
    return obj, event


# --- arbitrary JSON -------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
)
FIELDS = ["event_id", "type", "ts", "account_id", "actor_id", "post_id", "in_reply_to", "followers"]
# Objects with the contract's field names and values that are sometimes plausible, mostly anything.
event_like = st.dictionaries(
    st.sampled_from(FIELDS),
    st.sampled_from(sorted(TYPE_TOPIC)) | st.integers(-5, 2**50) | st.just("2026-01-01T00:00:00Z") | json_values,
    max_size=9,
)


@given(st.binary(max_size=300), topics, max_bytes)
@FAST
def test_arbitrary_bytes(payload: bytes, topic: str | None, limit: int) -> None:
    check_decode(payload, topic, limit)


@given(json_values | event_like | st.lists(event_like, max_size=5), topics, max_bytes)
@FAST
def test_arbitrary_json(value: Any, topic: str | None, limit: int) -> None:
    check_decode(orjson.dumps(value), topic, limit)


@given(valid_events())
@FAST
def test_valid_events_decode_exactly(pair: tuple[dict[str, Any], Event]) -> None:
    obj, event = pair
    assert check_decode(orjson.dumps(obj), TYPE_TOPIC[event.type], 1024 * 1024) == ([event], [])
    assert check_decode(orjson.dumps(obj), None, 1024 * 1024) == ([event], [])


# --- mutations of valid events --------------------------------------------------------------------


def _required(event: Event) -> set[str]:
    return {"event_id", "type", "ts", "account_id", "followers" if event.type == FOLLOWERS else "actor_id"}


CLEARED = {"post_id": None, "in_reply_to": None, "actor_id": "", "followers": None}  # optional, as decoded


@given(valid_events(), st.sampled_from(FIELDS), st.booleans())
@FAST
def test_dropping_a_field(pair: tuple[dict[str, Any], Event], name: str, as_null: bool) -> None:
    """A required field missing (or null) is ``missing_field``; an optional one is simply absent."""
    obj, event = pair
    changed = {**obj, name: None} if as_null else {k: v for k, v in obj.items() if k != name}
    events, rejections = check_decode(orjson.dumps(changed), None, 1024 * 1024)
    if name in _required(event):
        assert events == [] and [(r.index, r.reason) for r in rejections] == [(-1, Reason.MISSING_FIELD)]
    else:
        assert rejections == [] and events == [event._replace(**{name: CLEARED[name]})]


non_strings = (
    st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(scalars, max_size=2)
    | st.dictionaries(st.text(max_size=3), scalars, max_size=2)
)
fractions = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())  # 3.0 is 3
WRONG = {
    "ts": st.booleans() | fractions | st.lists(scalars, max_size=2),
    "followers": st.booleans() | fractions | st.text(max_size=5),
}


@given(valid_events(), st.sampled_from(FIELDS), st.data())
@FAST
def test_changing_a_type(pair: tuple[dict[str, Any], Event], name: str, data: st.DataObject) -> None:
    """One field of a wrong JSON type is ``wrong_type`` (``followers`` on another type: not allowed at all)."""
    obj, event = pair
    value = data.draw(WRONG.get(name, non_strings))
    events, rejections = check_decode(orjson.dumps({**obj, name: value}), None, 1024 * 1024)
    expected = Reason.UNEXPECTED_FIELD if name == "followers" and event.type != FOLLOWERS else Reason.WRONG_TYPE
    assert events == [] and [(r.index, r.reason) for r in rejections] == [(-1, expected)]


@given(valid_events(), st.data(), topics)
@FAST
def test_flipped_bytes(pair: tuple[dict[str, Any], Event], data: st.DataObject, topic: str | None) -> None:
    payload = bytearray(orjson.dumps(pair[0]))
    for _ in range(data.draw(st.integers(1, 3))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    check_decode(bytes(payload), topic, 1024 * 1024)


TRUNCATED = [
    {"event_id": "e1", "type": "like", "ts": 1767225600123, "actor_id": "u1", "account_id": "a1", "post_id": "p"},
    {"event_id": "ü🙂", "type": "reply", "ts": "2026-01-01T01:00:00.5+01:00", "actor_id": "用户", "account_id": "Ω"},
    [
        {"event_id": "s", "type": "followers", "ts": "2026-01-01T00:00:00Z", "account_id": "a", "followers": 3},
        {"event_id": "f", "type": "follow", "ts": 0, "actor_id": "u", "account_id": "a"},
    ],
]


@pytest.mark.parametrize("value", TRUNCATED)
def test_truncated_at_every_position(value: Any) -> None:
    whole = orjson.dumps(value)
    for cut in range(len(whole)):
        payload = whole[:cut]
        expected = Reason.INVALID_JSON
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            expected = Reason.INVALID_UTF8
        _, rejections = check_decode(payload, None, 1024 * 1024)
        assert [(r.index, r.reason) for r in rejections] == [(-1, expected)], payload
    assert check_decode(whole, None, 1024 * 1024)[1] == []


# --- arrays mixing them ---------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    obj, _ = draw(valid_events())
    name = draw(st.sampled_from(FIELDS))
    if draw(st.booleans()):
        return {k: v for k, v in obj.items() if k != name}
    return {**obj, name: draw(json_values)}


@given(st.lists(valid_events() | mutated() | json_values, max_size=8), topics, st.sampled_from([1024 * 1024, 512]))
@FAST
def test_mixed_arrays(elements: list[Any], topic: str | None, limit: int) -> None:
    """Every element is accounted for; each valid one (on its topic) is its event, at its place."""
    values = [e[0] if isinstance(e, tuple) else e for e in elements]
    payload = orjson.dumps(values)
    events, rejections = check_decode(payload, topic, limit)
    if not values or len(payload) > limit:
        return
    rejected = {r.index for r in rejections}
    decoded = iter(events)
    for index, element in enumerate(elements):
        if index in rejected:
            assert not (isinstance(element, tuple) and (topic is None or TYPE_TOPIC[element[1].type] == topic))
        else:
            event = next(decoded)
            if isinstance(element, tuple):
                assert event == element[1]


# --- regressions and schema agreement -------------------------------------------------------------


@given(st.integers(0, 1100), st.sampled_from(["bare", "element", "field"]))
@settings(max_examples=60, deadline=None)
def test_deep_nesting(depth: int, shape: str) -> None:
    """orjson reads 1024 levels but writes 255: a rejected element that deep still gets its dead letter."""
    nested = b"[" * depth + b"]" * depth
    payload = {
        "bare": nested,
        "element": b"[" + nested + b"]",
        "field": b'[{"event_id": "e", "type": "like", "ts": ' + nested + b', "actor_id": "u", "account_id": "a"}]',
    }[shape]
    check_decode(payload, "likes", 1024 * 1024)


@given(
    st.datetimes(datetime(1970, 1, 2), datetime(2099, 12, 30)),
    st.characters(categories=["Nd"]),
    st.lists(st.booleans(), min_size=23, max_size=23),
)
@settings(max_examples=100, deadline=None)
def test_ts_digits_are_ascii(when: datetime, digit: str, swaps: list[bool]) -> None:
    """RFC 3339 (and the JSON Schema's pattern) allow only ASCII digits, not any Unicode decimal digit:
    a valid ts with some digits swapped for the same digits of another script is ``invalid_ts``."""
    ascii_ts = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}+00:00"
    zero = ord(digit) - unicodedata.digit(digit)  # Unicode keeps each script's 0-9 contiguous
    positions = iter(swaps)
    ts = "".join(chr(zero + int(c)) if c.isdigit() and next(positions) else c for c in ascii_ts)
    obj = {"event_id": "e", "type": "like", "ts": ts, "actor_id": "u", "account_id": "a"}
    events, rejections = check_decode(orjson.dumps(obj), "likes", 1024 * 1024)
    if ts.isascii():
        assert rejections == [] and events[0].ts_ms == (when.replace(tzinfo=UTC) - EPOCH) // MILLISECOND
    else:
        assert [r.reason for r in rejections] == [Reason.INVALID_TS], ts


# --- the fast path against the detailed one -------------------------------------------------------


def _validated(obj: Any, topic: str | None, validate: Any) -> Event | Reason:
    try:
        return validate(obj, topic)  # type: ignore[no-any-return]
    except InvalidEvent as exc:
        return exc.reason


@st.composite
def perturbed_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one field dropped, nulled, or set to anything (or left as it is)."""
    obj, _ = draw(valid_events())
    name = draw(st.sampled_from(FIELDS))
    change = draw(st.sampled_from(["keep", "drop", "null", "any"]))
    if change == "drop":
        obj.pop(name, None)
    elif change == "null":
        obj[name] = None
    elif change == "any":
        obj[name] = draw(json_values | non_strings | st.sampled_from(sorted(TYPE_TOPIC)) | st.just(""))
    return obj


@given(event_like | perturbed_events(), topics)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_fast_path_agrees_with_the_detailed_one(obj: dict[str, Any], topic: str | None) -> None:
    """:func:`validate_event`'s fast path returns what :func:`_validate_detailed` returns: the same event
    (same values, same types), or the same reason."""
    fast = _validated(obj, topic, validate_event)
    assert fast == _validated(obj, topic, _validate_detailed)
    if isinstance(fast, Event):
        assert [type(v) for v in fast] == [type(v) for v in _validate_detailed(obj, topic)]
