"""The event contract: the validated event record, event types, and which topic carries which type.

The JSON Schema of one event is ``schemas/event.schema.json``; :mod:`pipeline.decode` enforces the same
rules without a schema library (it is on the hot path).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple

# Final: the compiled modules (pipeline.compiled) then use the values themselves, not a lookup per event.
LIKE: Final = "like"
REPLY: Final = "reply"
MENTION: Final = "mention"
FOLLOW: Final = "follow"
UNFOLLOW: Final = "unfollow"
FOLLOWERS: Final = "followers"

ENGAGEMENT_TYPES: Final = frozenset({LIKE, REPLY, MENTION})
FOLLOW_TYPES: Final = frozenset({FOLLOW, UNFOLLOW, FOLLOWERS})

# Source topic (without prefix) -> the event types it may carry.
TOPIC_TYPES: dict[str, frozenset[str]] = {
    "likes": frozenset({LIKE}),
    "replies": frozenset({REPLY}),
    "mentions": frozenset({MENTION}),
    "follows": FOLLOW_TYPES,
}
SOURCE_TOPICS: tuple[str, ...] = tuple(TOPIC_TYPES)
TYPE_TOPIC: dict[str, str] = {t: topic for topic, types in TOPIC_TYPES.items() for t in types}

DEAD_LETTER_TOPIC = "engagement-dead-letters"
ALERTS_TOPIC = "engagement-alerts"  # engagement-drop alerts (pipeline.drops), keyed by account_id
REKEY_TOPIC = "engagement-rekeyed"

MAX_EVENT_ID_CHARS: Final = 128
MAX_ID_CHARS: Final = 256
# The latest event time accepted: 2099-12-31T23:59:59.999Z. ClickHouse's DateTime columns (ts, window
# bounds) end in February 2106; later times were stored wrapped, and every window after that collapsed.
MAX_TS_MS: Final = 4_102_444_799_999
# The largest follower count accepted: 2**53 - 1, the largest integer every JSON reader keeps exact; a
# snapshot plus the follows after it then stays far inside ClickHouse's Int64.
MAX_FOLLOWERS: Final = 2**53 - 1


class Event(NamedTuple):
    """One valid event. ``ts_ms`` is event time in epoch milliseconds (UTC).

    A named tuple rather than a dataclass: one is built per event on the hot path, and a tuple is the
    cheapest immutable record CPython builds (the raw-events block is a tuple concatenation of it).

    ``actor_id`` is ``""`` for ``followers`` snapshots (they have no actor); ``followers`` is set only on
    those snapshots.
    """

    event_id: str
    type: str
    ts_ms: int
    actor_id: str
    account_id: str
    post_id: str | None = None
    in_reply_to: str | None = None
    followers: int | None = None

    @property
    def is_self(self) -> bool:
        """Self-engagement (the account acting on itself) is ignored by every aggregate."""
        return self.actor_id == self.account_id

    def to_json_dict(self) -> dict[str, object]:
        """The event as the contract's JSON object (ts as epoch milliseconds)."""
        out: dict[str, object] = {
            "event_id": self.event_id,
            "type": self.type,
            "ts": self.ts_ms,
            "account_id": self.account_id,
        }
        if self.type != FOLLOWERS or self.actor_id:
            out["actor_id"] = self.actor_id
        if self.post_id is not None:
            out["post_id"] = self.post_id
        if self.in_reply_to is not None:
            out["in_reply_to"] = self.in_reply_to
        if self.followers is not None:
            out["followers"] = self.followers
        return out


class Reason(StrEnum):
    """Why an input was dead-lettered. The value is what lands in the topic, the table and the metric."""

    TOO_LARGE = "too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    EMPTY_BATCH = "empty_batch"
    MISSING_FIELD = "missing_field"
    EMPTY_FIELD = "empty_field"
    WRONG_TYPE = "wrong_type"
    FIELD_TOO_LONG = "field_too_long"
    UNKNOWN_TYPE = "unknown_type"
    TOPIC_MISMATCH = "topic_mismatch"
    INVALID_TS = "invalid_ts"
    FUTURE_TS = "future_ts"  # more than ENGAGEMENT_MAX_FUTURE_SECONDS ahead of the worker's clock
    INVALID_FOLLOWERS = "invalid_followers"
    UNEXPECTED_FIELD = "unexpected_field"
    LATE = "late"


REASON_CODES = frozenset(reason.value for reason in Reason)


@dataclass(slots=True, frozen=True)
class Rejection:
    """One input that is not a valid event: the reason code, a human-readable detail, and where it was.

    ``index`` is the element's position inside a JSON-array message, or ``-1`` for the whole message.
    ``payload`` is the offending bytes (the element re-encoded, or the raw message).
    """

    reason: Reason
    detail: str
    index: int
    payload: bytes
