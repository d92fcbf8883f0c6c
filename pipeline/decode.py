"""Decode and validate one Kafka message into events and rejections.

Contract: :func:`decode_message` never raises on any input; every element of the message ends up either
as an :class:`~pipeline.events.Event` or as a :class:`~pipeline.events.Rejection` carrying a reason code.
A JSON array message is validated element by element: one bad element never rejects its siblings.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

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

# RFC 3339 date-time with a mandatory zone; fraction of any length (truncated to milliseconds). ASCII:
# without it ``\d`` is any Unicode decimal digit (Arabic-Indic...), which RFC 3339 and the schema do not allow.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))", re.ASCII
)
_ENGAGE_OR_FOLLOW = frozenset({"like", "reply", "mention", "follow", "unfollow"})  # not "followers"
_new_tuple = tuple.__new__
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


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
    if value.__class__ is float and value.is_integer():  # 1767225600000.0: an integer, as JSON Schema says
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidEvent(Reason.WRONG_TYPE, "ts must be an RFC 3339 string or integer epoch milliseconds")
    if isinstance(value, int):
        if not 0 <= value <= MAX_TS_MS:
            raise InvalidEvent(Reason.INVALID_TS, f"ts {value} is outside 1970..2099 in epoch milliseconds")
        return value
    if _is_canonical_utc(value):  # what nearly every producer sends: no regex needed
        ms = _canonical_ms(value)
        if 0 <= ms <= MAX_TS_MS:
            return ms
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


# Epoch ms of each "YYYY-MM-DDTHH:MM" seen in a canonical timestamp (-1: not a valid date and time).
# Events of a stream share a few minutes; the dict is emptied whenever it grows past its bound.
_MINUTES: dict[str, int] = {}
_MINUTES_BOUND = 100_000


def _canonical_ms(value: str) -> int:
    """Epoch ms of a string of :func:`_is_canonical_utc`'s shape, or -1 if it is not a valid date-time
    or lies before 1970 (else equal to ``round(datetime.fromisoformat(value).timestamp() * 1000)``).
    The date, hour and minute are parsed once per minute; the seconds and milliseconds are digits."""
    prefix = value[:16]
    minute = _MINUTES.get(prefix)
    if minute is None:
        try:
            minute = round(datetime.fromisoformat(prefix + ":00+00:00").timestamp()) * 1000
        except ValueError:
            minute = -1
        if len(_MINUTES) >= _MINUTES_BOUND:
            _MINUTES.clear()
        _MINUTES[prefix] = minute
    seconds = value[17:19]
    millis = value[20:23] if len(value) == 24 else "000"
    if minute < 0 or not seconds.isdigit() or not millis.isdigit() or seconds > "59":
        return -1
    return minute + int(seconds) * 1000 + int(millis)


def _is_canonical_utc(value: str) -> bool:
    """Whether ``value`` has the exact shape ``YYYY-MM-DDTHH:MM:SS.fffZ`` or ``YYYY-MM-DDTHH:MM:SSZ``
    (separators at their places, ASCII): then ``datetime.fromisoformat`` reads it as RFC 3339 does,
    rejecting non-digits and impossible dates and times itself."""
    n = len(value)
    return (
        (n == 24 or n == 20)
        and value[-1] == "Z"
        and value[10] == "T"
        and value[4] == "-"
        and value[7] == "-"
        and value[13] == ":"
        and value[16] == ":"
        and (n == 20 or value[19] == ".")
        and value.isascii()
    )


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


_TYPES_OF_TOPIC = {kind: frozenset(types) for kind, types in TOPIC_TYPES.items()}


def validate_event(obj: Any, topic_kind: str | None) -> Event:
    """Validate one decoded JSON value as an event of the contract.

    ``topic_kind`` is the source topic without prefix (``likes``...); ``None`` skips the topic check
    (ingest, which routes by type). Raises ``InvalidEvent`` with the reason.

    The common case (every field present and well-formed, an epoch-ms or RFC 3339 ``ts``) takes a fast
    path of plain type and length checks; anything else goes through :func:`_validate_detailed`, which
    finds the precise reason.
    """
    if obj.__class__ is dict:
        get = obj.get
        event_type = get("type")
        event_id = get("event_id")
        account_id = get("account_id")
        actor_id = get("actor_id")
        ts = get("ts")
        post_id = get("post_id")
        in_reply_to = get("in_reply_to")
        if (
            event_type.__class__ is str
            and event_type in _ENGAGE_OR_FOLLOW
            and (topic_kind is None or event_type in _TYPES_OF_TOPIC.get(topic_kind, ()))
            and event_id.__class__ is str
            and 0 < len(event_id) <= MAX_EVENT_ID_CHARS
            and account_id.__class__ is str
            and 0 < len(account_id) <= MAX_ID_CHARS
            and actor_id.__class__ is str
            and 0 < len(actor_id) <= MAX_ID_CHARS
            and (post_id is None or (post_id.__class__ is str and 0 < len(post_id) <= MAX_ID_CHARS))
            and (in_reply_to is None or (in_reply_to.__class__ is str and 0 < len(in_reply_to) <= MAX_EVENT_ID_CHARS))
            and "followers" not in obj
        ):
            if ts.__class__ is int and 0 <= ts <= MAX_TS_MS:
                ts_ms = ts
            elif ts.__class__ is str:
                ts_ms = parse_ts(ts)
            else:
                return _validate_detailed(obj, topic_kind)
            fields = (
                event_id,
                event_type,
                ts_ms,
                actor_id,
                account_id,
                post_id,
                in_reply_to if event_type == REPLY else None,
                None,
            )
            return _new_tuple(Event, fields)  # Event(*fields) without its Python-level __new__
    return _validate_detailed(obj, topic_kind)


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
        if followers.__class__ is float and followers.is_integer():  # 120.0: an integer (JSON Schema)
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
    """Decode one message (a JSON object or an array of objects) into events and rejections. Never raises."""
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
