"""Decode and validate one Kafka message into events and rejections.

Contract: :func:`decode_message` never raises on any input; every element of the message ends up either
as an :class:`~pipeline.events.Event` or as a :class:`~pipeline.events.Rejection` carrying a reason code.
A JSON array message is validated element by element: one bad element never rejects its siblings.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import orjson

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
from pipeline.wire import ABSENT, FIELDS_OF, WIRE_DECODER

# RFC 3339 date-time with a mandatory zone; fraction of any length (truncated to milliseconds). ASCII:
# without it ``\d`` is any Unicode decimal digit (Arabic-Indic...), which RFC 3339 and the schema do not allow.
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))", re.ASCII
)
_new_tuple: Final = tuple.__new__
_EVENT: Final = Event
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)
_ABSENT: Final = ABSENT  # a compiled module's own Final: a C static, not a globals lookup per use
_WIRE_DECODER: Final = WIRE_DECODER
_FIELDS_OF: Final = FIELDS_OF


class InvalidEvent(Exception):
    """A value that is not a valid event: ``reason`` (the dead-letter reason code) and ``detail``."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_ts(value: Any) -> int:
    """Event time in epoch milliseconds from an RFC 3339 string with a zone or integer epoch ms.

    Raises ``InvalidEvent`` (reason ``wrong_type`` or ``invalid_ts``).
    """
    if type(value) is str:  # what nearly every producer sends, in the shape that needs no regex
        ms = _canonical_ms(value)
        if 0 <= ms <= MAX_TS_MS:
            return ms
    if type(value) is float and value.is_integer():  # 1767225600000.0: an integer, as JSON Schema says
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidEvent(Reason.WRONG_TYPE, "ts must be an RFC 3339 string or integer epoch milliseconds")
    if isinstance(value, int):
        if not 0 <= value <= MAX_TS_MS:
            raise InvalidEvent(Reason.INVALID_TS, f"ts {value} is outside 1970..2099 in epoch milliseconds")
        return value
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise InvalidEvent(Reason.INVALID_TS, "ts is not an RFC 3339 date-time with a zone (Z or ±hh:mm)")
    if m.group(11) is not None and m.group(11) > "59":  # datetime.fromisoformat takes "+00:99"
        raise InvalidEvent(Reason.INVALID_TS, "ts has a zone offset with more than 59 minutes")
    frac = m.group(7)
    if frac is None or len(frac) <= 6:
        try:  # the C parser, on a string the regex has proven to be RFC 3339
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            ms = (parsed - _EPOCH) // _MILLISECOND
            if 0 <= ms <= MAX_TS_MS:
                return int(ms)
    year, month, day, hour, minute, second, frac, zulu, sign, oh, om = m.groups()
    try:
        if zulu:
            tz = UTC
        else:
            offset = timedelta(hours=int(oh), minutes=int(om))
            if offset >= timedelta(hours=24):
                raise ValueError("offset out of range")
            tz = timezone(-offset if sign == "-" else offset)
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz)
    except ValueError as exc:
        raise InvalidEvent(Reason.INVALID_TS, f"ts is not a valid date-time: {exc}") from None
    ms = int(dt.timestamp()) * 1000 + (int(frac[:3].ljust(3, "0")) if frac else 0)
    if not 0 <= ms <= MAX_TS_MS:
        raise InvalidEvent(Reason.INVALID_TS, "ts is outside 1970..2099")
    return ms


def _canonical_ms(value: str) -> int:
    """Epoch ms of ``value`` if it has the exact shape ``YYYY-MM-DDTHH:MM:SS[.fff]`` then ``Z`` or
    ``±hh:mm`` (ASCII digits, separators at their places), is a valid date and time from 1970 on, with an
    offset below 24 hours, and lies at or after 1970 in UTC; else -1, and the general parser decides. Where
    it answers, the answer is ``round(datetime.fromisoformat(value).timestamp() * 1000)``: integer
    arithmetic on the bytes (the days from Howard Hinnant's ``days_from_civil``), no slices, no ``int()``
    of text, no ``datetime``."""
    n = len(value)
    if n == 20 or n == 24:
        zone = n - 1  # where "Z" is
    elif n == 25 or n == 29:
        zone = n - 6  # where the offset's sign is
    else:
        return -1
    raw = value.encode("utf-8", "surrogatepass")  # (never raises: a lone surrogate is not ASCII either)
    if len(raw) != n:  # not ASCII
        return -1
    if raw[4] != 45 or raw[7] != 45 or raw[10] != 84 or raw[13] != 58 or raw[16] != 58:
        return -1  # "-", "-", "T", ":", ":"
    if zone == 23:
        tens = _two(raw, 20)  # the milliseconds: "fff" after "."
        last = raw[22] - 48
        if raw[19] != 46 or tens < 0 or not 0 <= last <= 9:
            return -1
        millis = tens * 10 + last
    else:
        millis = 0
    sign = raw[zone]
    if zone == n - 1:  # the zone must be "Z"
        if sign != 90:
            return -1
        offset = 0
    elif (sign == 43 or sign == 45) and raw[zone + 3] == 58:  # "+" or "-", then "hh:mm"
        hours = _two(raw, zone + 1)
        minutes = _two(raw, zone + 4)
        if not 0 <= hours <= 23 or not 0 <= minutes <= 59:
            return -1
        offset = (hours * 60 + minutes) * 60_000
        if sign == 45:
            offset = -offset
    else:
        return -1
    low = _two(raw, 2)
    year = _two(raw, 0) * 100 + low  # (below 1970 if the first two are not digits)
    month = _two(raw, 5)
    day = _two(raw, 8)
    hour = _two(raw, 11)
    minute = _two(raw, 14)
    second = _two(raw, 17)
    if low < 0 or year < 1970 or not 1 <= month <= 12 or not 0 <= hour <= 23 or not 0 <= minute <= 59:
        return -1  # (a field of -1 holds a non-digit)
    if not 0 <= second <= 59 or day < 1:
        return -1
    if month == 2:
        days_in_month = 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    elif month == 4 or month == 6 or month == 9 or month == 11:
        days_in_month = 30
    else:
        days_in_month = 31
    if day > days_in_month:
        return -1
    y = year - 1 if month <= 2 else year  # days_from_civil: the year starts in March
    era = y // 400
    year_of_era = y - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days = era * 146097 + day_of_era - 719468
    ms = ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis - offset
    return ms if ms >= 0 else -1


def _two(raw: bytes, at: int) -> int:
    """The number the two ASCII digits ``raw[at]``, ``raw[at + 1]`` make, or -1 if either is not a digit."""
    tens = raw[at] - 48
    ones = raw[at + 1] - 48
    if 0 <= tens <= 9 and 0 <= ones <= 9:
        return tens * 10 + ones
    return -1


def _string(obj: dict[str, Any], name: str, limit: int, required: bool) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidEvent(Reason.MISSING_FIELD, f"{name} is missing")
        return None
    if not isinstance(value, str):
        raise InvalidEvent(Reason.WRONG_TYPE, f"{name} must be a string")
    if not value:
        raise InvalidEvent(Reason.EMPTY_FIELD, f"{name} is empty")
    if len(value) > limit:
        raise InvalidEvent(Reason.FIELD_TOO_LONG, f"{name} is longer than {limit} characters")
    return value


_TYPES_OF_TOPIC: Final[dict[str, frozenset[str]]] = {kind: frozenset(types) for kind, types in TOPIC_TYPES.items()}
_NO_TYPES: Final[frozenset[str]] = frozenset()
# Each event type to its one interned string: an event carries it rather than its own copy, so that later
# comparisons and dict lookups of the type find it by identity, and a buffered event holds one string less.
_KNOWN_TYPES: Final[dict[str, str]] = {sys.intern(kind): sys.intern(kind) for kind in TYPE_TOPIC}


def validate_event(obj: Any, topic_kind: str | None) -> Event:
    """Validate one decoded JSON value as an event of the contract.

    ``topic_kind`` is the source topic without prefix (``likes``...); ``None`` skips the topic check
    (ingest, which routes by type). Raises ``InvalidEvent`` with the reason.

    The common cases (an engagement, a follow or a ``followers`` snapshot with every field well-formed and
    an epoch-ms or RFC 3339 ``ts``) take a fast path of plain type and length checks; anything else goes
    through :func:`_validate_detailed`, which finds the precise reason. On the fast path every field but
    ``ts`` is proven valid first, so the one reason it can raise (``ts``'s) is the one the detailed path
    would give.

    Compiled (pipeline.compiled), ``type(x) is str`` is a pointer test where ``x.__class__ is str`` is an
    attribute lookup, and ``obj.get`` on a value known to be a dict a direct read.
    """
    if type(obj) is dict:
        event = _fast_event(
            obj.get("type"),
            obj.get("event_id"),
            obj.get("account_id"),
            obj.get("actor_id"),
            obj.get("post_id"),
            obj.get("in_reply_to"),
            obj.get("followers", _ABSENT),
            obj.get("ts"),
            topic_kind,
        )
        if event is not None:
            return event
    return _validate_detailed(obj, topic_kind)


def _fast_event(
    event_type: Any,
    event_id: Any,
    account_id: Any,
    actor_id: Any,
    post_id: Any,
    in_reply_to: Any,
    followers: Any,
    ts: Any,
    topic_kind: str | None,
) -> Event | None:
    """The fast path's event from its fields' values (``followers`` :data:`_ABSENT` when there is no such
    key), or ``None`` where the detailed path must judge. Raises ``InvalidEvent`` only for a string ``ts``
    that :func:`parse_ts` rejects, every other field having been proven valid first."""
    if type(event_type) is not str:
        return None
    kind = _KNOWN_TYPES.get(event_type)  # the one shared string of that type, or None
    if not (
        kind is not None
        and (topic_kind is None or kind in _TYPES_OF_TOPIC.get(topic_kind, _NO_TYPES))
        and type(event_id) is str
        and 0 < len(event_id) <= MAX_EVENT_ID_CHARS
        and type(account_id) is str
        and 0 < len(account_id) <= MAX_ID_CHARS
        and (post_id is None or (type(post_id) is str and 0 < len(post_id) <= MAX_ID_CHARS))
        and (in_reply_to is None or (type(in_reply_to) is str and 0 < len(in_reply_to) <= MAX_EVENT_ID_CHARS))
    ):
        return None
    if kind != FOLLOWERS:  # an engagement, a follow or an unfollow
        if type(actor_id) is str and 0 < len(actor_id) <= MAX_ID_CHARS and followers is _ABSENT:
            ts_ms = _fast_ts(ts)
            if ts_ms >= 0:
                fields = (
                    event_id,
                    kind,
                    ts_ms,
                    actor_id,
                    account_id,
                    post_id,
                    in_reply_to if kind == REPLY else None,
                    None,
                )
                return _new_tuple(_EVENT, fields)  # Event(*fields) without its Python-level __new__
    elif (  # a snapshot: no actor (one given is ignored), no in_reply_to
        type(followers) is int
        and 0 <= followers <= MAX_FOLLOWERS
        and (actor_id is None or (type(actor_id) is str and 0 < len(actor_id) <= MAX_ID_CHARS))
    ):
        ts_ms = _fast_ts(ts)
        if ts_ms >= 0:
            snapshot = (event_id, FOLLOWERS, ts_ms, "", account_id, post_id, None, followers)
            return _new_tuple(_EVENT, snapshot)
    return None


def _fast_ts(ts: Any) -> int:
    """``ts`` in epoch ms for :func:`validate_event`'s fast path: -1 if it is neither an int in range nor a
    string (the detailed path then says why). Raises ``InvalidEvent`` for a string :func:`parse_ts` rejects."""
    if type(ts) is int:
        return ts if 0 <= ts <= MAX_TS_MS else -1
    if type(ts) is str:
        return parse_ts(ts)
    return -1


def _validate_detailed(obj: Any, topic_kind: str | None) -> Event:
    """:func:`validate_event` for every case, with the precise reason for each rejection."""
    if not isinstance(obj, dict):
        raise InvalidEvent(Reason.NOT_AN_OBJECT, f"an event must be a JSON object, not {type(obj).__name__}")
    event_type = obj.get("type")
    if event_type is None:
        raise InvalidEvent(Reason.MISSING_FIELD, "type is missing")
    if not isinstance(event_type, str):
        raise InvalidEvent(Reason.WRONG_TYPE, "type must be a string")
    if event_type not in TYPE_TOPIC:
        raise InvalidEvent(Reason.UNKNOWN_TYPE, f"unknown type {event_type[:40]!r}")
    event_type = _KNOWN_TYPES[event_type]  # the one shared string, as on the fast path
    if topic_kind is not None and event_type not in TOPIC_TYPES.get(topic_kind, ()):
        raise InvalidEvent(Reason.TOPIC_MISMATCH, f"type {event_type} does not belong on topic {topic_kind}")
    event_id = _string(obj, "event_id", MAX_EVENT_ID_CHARS, True)
    if "ts" not in obj or obj["ts"] is None:
        raise InvalidEvent(Reason.MISSING_FIELD, "ts is missing")
    ts_ms = parse_ts(obj["ts"])
    account_id = _string(obj, "account_id", MAX_ID_CHARS, True)
    is_snapshot = event_type == FOLLOWERS
    actor_id = _string(obj, "actor_id", MAX_ID_CHARS, not is_snapshot)
    post_id = _string(obj, "post_id", MAX_ID_CHARS, False)
    in_reply_to = _string(obj, "in_reply_to", MAX_EVENT_ID_CHARS, False)
    followers = obj.get("followers")
    if is_snapshot:
        if followers is None:
            raise InvalidEvent(Reason.MISSING_FIELD, "followers is missing")
        if type(followers) is float and followers.is_integer():  # 120.0: an integer (JSON Schema)
            followers = int(followers)
        if isinstance(followers, bool) or not isinstance(followers, int):
            raise InvalidEvent(Reason.WRONG_TYPE, "followers must be an integer")
        if not 0 <= followers <= MAX_FOLLOWERS:
            raise InvalidEvent(Reason.INVALID_FOLLOWERS, f"followers must be between 0 and {MAX_FOLLOWERS}")
    elif followers is not None:
        raise InvalidEvent(Reason.UNEXPECTED_FIELD, f"followers is only allowed on type followers, not {event_type}")
    if in_reply_to is not None and event_type != REPLY:
        in_reply_to = None  # meaningful only on replies; kept out of the aggregates
    assert event_id is not None and account_id is not None
    return Event(
        event_id=event_id,
        type=event_type,
        ts_ms=ts_ms,
        actor_id=""
        if is_snapshot
        else actor_id or "",  # a snapshot has no actor (one equal to the account made it "self")
        account_id=account_id,
        post_id=post_id,
        in_reply_to=in_reply_to,
        followers=followers if is_snapshot else None,
    )


def encode_element(obj: Any) -> bytes:
    """A rejected array element as the bytes of its dead letter. Never raises.

    JSON where orjson can encode it; ``orjson.loads`` accepts 1024 levels of nesting but ``orjson.dumps``
    only 255, so a deeper element falls back to its ``repr``, and one too deep even for that (``repr``
    recurses on the Python stack) to a fixed placeholder.
    """
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        pass
    try:
        return repr(obj).encode("utf-8", "replace")
    except RecursionError:
        return f"<a {type(obj).__name__} nested too deeply to re-encode>".encode()


def load_json(payload: bytes) -> tuple[Any, Rejection | None]:
    """Parse JSON; on failure, a rejection saying whether the bytes were not UTF-8 or not JSON."""
    try:
        return orjson.loads(payload), None
    except orjson.JSONDecodeError as exc:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return None, Rejection(Reason.INVALID_UTF8, f"not valid UTF-8: {uexc.reason}", -1, payload)
        return None, Rejection(Reason.INVALID_JSON, f"not valid JSON: {exc}", -1, payload)


def decode_message(
    payload: bytes | None, topic_kind: str | None, max_bytes: int = 1024 * 1024
) -> tuple[list[Event], list[Rejection]]:
    """Decode one message (a JSON object or an array of objects) into events and rejections. Never raises.

    A message whose every element is a well-formed event (what producers send nearly always) is read by
    :func:`_decode_wire`; any other goes to :func:`_decode_general`, which gives each element its reason.
    Both give the same events for the messages the first accepts (tests/unit/test_decode_wire.py)."""
    if payload is not None and len(payload) <= max_bytes:
        events = _decode_wire(payload, topic_kind)
        if events is not None:
            return events, []
    return _decode_general(payload, topic_kind, max_bytes)


def _decode_wire(payload: bytes, topic_kind: str | None) -> list[Event] | None:
    """The events of a message that msgspec reads as :class:`~pipeline.wire.WireEvent` objects, each of
    which :func:`_fast_event` accepts; ``None`` for any other message (nothing is half-decoded). Never
    raises."""
    try:
        decoded = _WIRE_DECODER.decode(payload)
    except Exception:  # msgspec.DecodeError, UnicodeDecodeError: the general path says which and why
        return None
    wires: list[Any] = decoded if type(decoded) is list else [decoded]
    if not wires:
        return None  # an empty array: the general path's rejection
    events: list[Event] = []
    try:
        for wire in wires:
            # event_id, type, ts, account_id, actor_id, post_id, in_reply_to, followers (WireEvent's order)
            fields: tuple[Any, ...] = _FIELDS_OF(wire)
            event = _fast_event(
                fields[1], fields[0], fields[3], fields[4], fields[5], fields[6], fields[7], fields[2], topic_kind
            )
            if event is None:
                return None
            events.append(event)
    except InvalidEvent:  # a string ts parse_ts rejects
        return None
    return events


def _decode_general(
    payload: bytes | None, topic_kind: str | None, max_bytes: int
) -> tuple[list[Event], list[Rejection]]:
    """:func:`decode_message` for any message: orjson, then :func:`validate_event` per element."""
    events: list[Event] = []
    rejections: list[Rejection] = []
    if payload is None:
        rejections.append(Rejection(Reason.INVALID_JSON, "empty message (null value)", -1, b""))
        return events, rejections
    if len(payload) > max_bytes:
        rejections.append(
            Rejection(Reason.TOO_LARGE, f"message of {len(payload)} bytes exceeds {max_bytes}", -1, payload)
        )
        return events, rejections
    value, unreadable = load_json(payload)
    if unreadable is not None:
        rejections.append(unreadable)
        return events, rejections
    if isinstance(value, list):
        if not value:
            rejections.append(Rejection(Reason.EMPTY_BATCH, "an empty JSON array carries no event", -1, payload))
        for index, element in enumerate(value):
            try:
                events.append(validate_event(element, topic_kind))
            except InvalidEvent as exc:
                rejections.append(Rejection(exc.reason, exc.detail, index, encode_element(element)))
        return events, rejections
    try:
        events.append(validate_event(value, topic_kind))
    except InvalidEvent as exc:
        rejections.append(Rejection(exc.reason, exc.detail, -1, payload))
    return events, rejections


def decode_line(line: bytes, max_bytes: int = 1024 * 1024) -> tuple[list[Event], list[Rejection]]:
    """Decode one JSON-lines input line for ingest: like :func:`decode_message` without a topic check."""
    return decode_message(line, None, max_bytes)
