"""The account report: connected vs engaged, for one account over one period. The shape both the ClickHouse
queries (:mod:`pipeline.report`) and the pure-Python oracle (:mod:`pipeline.report_reference`) produce.

Definitions (the README's "The account report" section is the user-facing version). For account A, an end
time T (epoch ms, exclusive; by default the newest event time in the store + 1 ms, so that the newest event
is inside) and ``days``: the period P = [T - days, T). Events are deduplicated by
``event_id``. "Inbound" = like/reply/mention events whose ``account_id`` is A and whose actor is not A.
``None`` means "undefined" (a division by zero), never 0.

- ``followers``: at T, by the windows' rule: the latest ``followers`` snapshot before T (ties: the highest
  ``event_id``), plus follows minus unfollows after that snapshot and before T, never below 0.
- ``engagers``: distinct actors of inbound events in P; ``engagement_rate`` = engagers / followers.
  ``likes``, ``replies``, ``mentions``: inbound counts in P.
- ``returning_engager_rate``: of the engagers in [T-14d, T-7d), the share who engaged again in [T-7d, T).
- ``loyal_core``: actors who engaged A in at least 3 of the 4 weeks [T-28d+7k d, T-21d+7k d), k = 0..3.
- ``inbound_conversations``: inbound replies + mentions in P. A response is a reply by A whose
  ``in_reply_to`` is that event's id and whose time is before T; a conversation's first response is its
  earliest. ``answered_24h``: conversations whose first response came 0 to 86,400 s after them;
  ``response_rate`` = answered_24h / inbound_conversations; ``median_response_seconds``: the median first
  response delay (seconds, ms precision) over the conversations with any response, whatever the delay (the
  mean of the two middle values for an even count).
- ``outbound``: A's own replies + mentions to other accounts in P; ``responses_sent``: those of A's replies
  in P that are responses (``in_reply_to`` is an inbound reply/mention of A, of any time);
  ``dialogue_share`` = responses_sent / outbound.
- ``reciprocal_circle``: accounts U != A with at least one reply/mention by A to U and at least one
  inbound event from U to A, both in [T - 90d, T). Shown against the ~150 relationships a person can hold.
- ``top_engagers``: the 10 actors with the highest weighted inbound score in P (like 1, mention 2, reply 3,
  the settings' weights), ties by ``actor_id`` ascending; ``top10_share`` = their score / all inbound score.
- Bots: a burst actor made more than ``burst_threshold`` (setting, 30) like/reply/mention events to other
  accounts within one aligned UTC minute of P, across all accounts. ``bot_share``: the share of A's inbound
  events in P made by burst actors; ``human_engagement_rate`` = engagers who are not burst actors /
  followers.
- ``daily``: per UTC day that P touches (the part of the day inside P): engagers, followers at the day's
  end (or at T for the last day), their rate.
- ``response_delays``: the inbound conversations in P by the delay of their first response (the response
  delay distribution): ``before`` (negative), ``within_5m`` (0 to 5 min), ``within_1h`` (over 5 min to
  1 h), ``within_4h``, ``within_24h``, ``over_24h``, ``unanswered`` (no response before T); each upper
  bound inclusive in ms. The four ``within_*`` add up to ``answered_24h``, all seven to
  ``inbound_conversations``.

Readings of the points the definitions leave open (the oracle, :mod:`pipeline.report_reference`, follows them):

- Deduplication is by ``event_id`` alone, the first occurrence winning (duplicates are identical re-sends).
- Self-events (``actor_id == account_id``) count for nothing anywhere, as in the windows: not in the
  followers (a self-follow), not as a response (a self-addressed reply), not in a burst. They are still
  events of the store, so they can be the newest event that sets the default T.
- ``returning_engager_rate``, ``loyal_core`` and ``reciprocal_circle`` use their own windows ending at T,
  whatever ``days`` is; bursts, like every other metric, use P.
- A response is any reply by A (to another account) with the conversation's id in ``in_reply_to``; the
  account it is addressed to is not checked. Only the first (earliest) response decides ``answered_24h``:
  a first response timestamped before its conversation (negative delay) leaves it unanswered even when a
  later reply falls inside 24 h. The bounds are inclusive in ms: 86,400,000 ms is answered, 86,400,001 not.
  The median takes every first-response delay of the conversations in P, negative or over 24 h included.
- ``responses_sent`` counts replies, not conversations (two replies to one conversation count twice); the
  conversation answered may be of any time, inside P or not.
- A burst counts the events inside P only (the minute at each end of P counts only its part inside P).
  ``bot_share`` is a share of events (None without inbound events in P).
- ``top_engagers`` ties (and the leaderboard's ties) order ids by code point, which is UTF-8 byte order,
  the order ClickHouse compares ``String`` in. ``top10_share`` is None when all inbound score is 0.
- ``daily``: every UTC day from the one holding T - days to the one holding T - 1 ms (29 rows for an
  unaligned T and 28 days); engagers are counted in the part of the day inside P.
- The leaderboard ranks every ``account_id`` of an event before T (snapshots and self-events included),
  highest first, undefined (None) after every number, ties by ``account_id`` ascending.
- An account with no events at all gets zeros and Nones, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
CIRCLE_DAYS = 90
TOP_ENGAGERS = 10
DUNBAR = 150  # the relationships a person can hold: the scale the reciprocal circle is shown against
# The response-delay buckets, in order: (name, the largest first-response delay in ms it holds); a delay
# goes to the first bucket whose bound it does not exceed, past the last one to "over_24h"; conversations
# without a response are "unanswered".
DELAY_BUCKETS: tuple[tuple[str, int], ...] = (
    ("before", -1),
    ("within_5m", 300_000),
    ("within_1h", 3_600_000),
    ("within_4h", 14_400_000),
    ("within_24h", 86_400_000),
)
DELAY_NAMES: tuple[str, ...] = (*(name for name, _ in DELAY_BUCKETS), "over_24h", "unanswered")


@dataclass(frozen=True, slots=True)
class TopEngager:
    actor_id: str
    score: int


@dataclass(frozen=True, slots=True)
class Day:
    day: str  # YYYY-MM-DD (UTC)
    engagers: int
    followers: int
    engagement_rate: float | None


@dataclass(frozen=True, slots=True)
class AccountReport:
    """Every metric of one account's report (see the module docstring)."""

    account_id: str
    as_of: int  # T, epoch ms, exclusive
    days: int
    followers: int
    engagers: int
    engagement_rate: float | None
    likes: int
    replies: int
    mentions: int
    returning_engager_rate: float | None
    loyal_core: int
    inbound_conversations: int
    answered_24h: int
    response_rate: float | None
    median_response_seconds: float | None
    outbound: int
    responses_sent: int
    dialogue_share: float | None
    reciprocal_circle: int
    top_engagers: list[TopEngager] = field(default_factory=list)
    top10_share: float | None = None
    bot_share: float | None = None
    human_engagement_rate: float | None = None
    daily: list[Day] = field(default_factory=list)
    response_delays: dict[str, int] = field(default_factory=dict)  # DELAY_NAMES -> conversations

    def to_json_dict(self) -> dict[str, Any]:
        """Exactly the issue's keys, plus ``account_id``, ``as_of`` (RFC 3339, UTC), ``days`` and the
        ``response_delays`` the HTML page draws."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if name == "as_of":
                value = iso_ms(value)
            elif name == "top_engagers":
                value = [{"actor_id": t.actor_id, "score": t.score} for t in value]
            elif name == "response_delays":
                value = dict(value)
            elif name == "daily":
                value = [{"day": d.day, "engagers": d.engagers, "followers": d.followers,
                          "engagement_rate": d.engagement_rate} for d in value]  # fmt: skip
            out[name] = value
        return out


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when the denominator is 0 (undefined, not 0)."""
    return numerator / denominator if denominator else None


def delay_bucket(delay_ms: int | None) -> str:
    """The :data:`DELAY_NAMES` bucket of a first-response delay (None: no response)."""
    if delay_ms is None:
        return "unanswered"
    for name, bound in DELAY_BUCKETS:
        if delay_ms <= bound:
            return name
    return "over_24h"


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds: ``2026-01-01T00:00:00.000Z``."""
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"
