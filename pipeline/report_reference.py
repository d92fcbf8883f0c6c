"""The account report straight from its definitions: the oracle the ClickHouse queries are checked against.

Written for clarity, not speed, over the whole input in memory; it shares no logic with :mod:`pipeline.report`
or :mod:`pipeline.queries`. Every metric is one small function that reads like its definition in
:mod:`pipeline.report_model` (where the readings of the ambiguous points are written down too).

Contract of every entry point:

- ``events`` is the store: any order, duplicates allowed; the first occurrence of an ``event_id`` is the event.
  It may also be a :class:`ReferenceStore` built once with :func:`store`, to share that work between calls.
- Self-events (``actor_id == account_id``) count for nothing, as in every aggregate of the pipeline (they only
  move the default ``as_of``).
- ``as_of`` (T, epoch ms, exclusive) defaults to the newest event time + 1 ms; with no events and no ``as_of``
  a :class:`ValueError` is raised. ``days`` must be >= 1.
- ``weights`` are (like, mention, reply), the order of the settings ``weight_like``, ``weight_mention``,
  ``weight_reply``.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pipeline.events import ENGAGEMENT_TYPES, LIKE, MENTION, REPLY, Event
from pipeline.reference import followers_at
from pipeline.report_model import (
    CIRCLE_DAYS,
    DAY_MS,
    DELAY_NAMES,
    TOP_ENGAGERS,
    WEEK_MS,
    AccountReport,
    Day,
    TopEngager,
    delay_bucket,
    ratio,
)

Weights = tuple[int, int, int]  # like, mention, reply
RankBy = Literal["engagement_rate", "engagers", "response_rate", "reciprocal_circle", "followers"]
RANK_BY: tuple[RankBy, ...] = ("engagement_rate", "engagers", "response_rate", "reciprocal_circle", "followers")

MINUTE_MS = 60_000
RESPONSE_WINDOW_MS = 86_400_000  # answered within 24 h: 0 <= delay <= this
CONVERSATION_TYPES = frozenset({REPLY, MENTION})


@dataclass(frozen=True)
class ReferenceStore:
    """The deduplicated events, indexed the ways the definitions look them up. Build with :func:`store`.

    ``to_account`` and ``by_actor`` hold only events that are not self-events.
    """

    by_id: dict[str, Event]
    to_account: dict[str, list[Event]]
    by_actor: dict[str, list[Event]]
    newest_ms: int | None

    @property
    def accounts(self) -> list[str]:
        """Every ``account_id`` of the store (self-events included), sorted."""
        return sorted({e.account_id for e in self.by_id.values()})


def store(events: Iterable[Event]) -> ReferenceStore:
    """Deduplicate ``events`` by ``event_id`` (first occurrence wins) and index them."""
    by_id: dict[str, Event] = {}
    for event in events:
        by_id.setdefault(event.event_id, event)
    to_account: dict[str, list[Event]] = defaultdict(list)
    by_actor: dict[str, list[Event]] = defaultdict(list)
    for event in by_id.values():
        if event.is_self:
            continue
        to_account[event.account_id].append(event)
        if event.actor_id:
            by_actor[event.actor_id].append(event)
    newest = max((e.ts_ms for e in by_id.values()), default=None)
    return ReferenceStore(by_id, dict(to_account), dict(by_actor), newest)


def reference_report(
    events: Iterable[Event] | ReferenceStore,
    account_id: str,
    as_of: int | None = None,
    days: int = 28,
    burst_threshold: int = 30,
    weights: Weights = (1, 2, 3),
) -> AccountReport:
    """The report of ``account_id`` over ``[as_of - days, as_of)`` (see the module docstring's contract).

    An account the store has never seen gets a report of zeros and Nones, not an error.
    """
    data = events if isinstance(events, ReferenceStore) else store(events)
    end = _as_of(data, as_of, days)
    bursts = burst_actors(data, end - days * DAY_MS, end, burst_threshold)
    return _report(data, account_id, end, days, bursts, weights)


def reference_reports(
    events: Iterable[Event] | ReferenceStore,
    account_ids: Iterable[str] | None = None,
    as_of: int | None = None,
    days: int = 28,
    burst_threshold: int = 30,
    weights: Weights = (1, 2, 3),
) -> dict[str, AccountReport]:
    """:func:`reference_report` for each of ``account_ids`` (default: every account of the store), sharing
    the work that does not depend on the account."""
    data = events if isinstance(events, ReferenceStore) else store(events)
    end = _as_of(data, as_of, days)
    bursts = burst_actors(data, end - days * DAY_MS, end, burst_threshold)
    wanted = data.accounts if account_ids is None else list(account_ids)
    return {a: _report(data, a, end, days, bursts, weights) for a in wanted}


def reference_leaderboard(
    events: Iterable[Event] | ReferenceStore,
    by: RankBy = "engagement_rate",
    limit: int = 10,
    as_of: int | None = None,
    days: int = 28,
    burst_threshold: int = 30,
    weights: Weights = (1, 2, 3),
) -> list[AccountReport]:
    """The ``limit`` accounts with the highest ``by``, as full reports: highest first, None (undefined) after
    every number, ties by ``account_id`` ascending. The candidates are every ``account_id`` of an event before
    ``as_of`` (self-events and follower snapshots included)."""
    if by not in RANK_BY:
        raise ValueError(f"cannot rank by {by!r}; one of {', '.join(RANK_BY)}")
    if limit < 0:
        raise ValueError("limit must be >= 0")
    data = events if isinstance(events, ReferenceStore) else store(events)
    end = _as_of(data, as_of, days)
    candidates = sorted({e.account_id for e in data.by_id.values() if e.ts_ms < end})
    reports = reference_reports(data, candidates, end, days, burst_threshold, weights)

    def rank(report: AccountReport) -> tuple[bool, float, str]:
        value: float | None = getattr(report, by)
        return (value is None, -(value or 0), report.account_id)

    return sorted(reports.values(), key=rank)[:limit]


def burst_actors(data: ReferenceStore, start: int, end: int, threshold: int) -> set[str]:
    """Actors who made more than ``threshold`` like/reply/mention events to other accounts within one
    aligned UTC minute, counting the events in ``[start, end)``."""
    per_minute: Counter[tuple[str, int]] = Counter()
    for actor, acts in data.by_actor.items():
        for e in acts:
            if e.type in ENGAGEMENT_TYPES and start <= e.ts_ms < end:
                per_minute[(actor, e.ts_ms // MINUTE_MS)] += 1
    return {actor for (actor, _), count in per_minute.items() if count > threshold}


def _as_of(data: ReferenceStore, as_of: int | None, days: int) -> int:
    if days < 1:
        raise ValueError("days must be >= 1")
    if as_of is not None:
        return as_of
    if data.newest_ms is None:
        raise ValueError("as_of is required when there are no events")
    return data.newest_ms + 1


def _between(events: Iterable[Event], start: int, end: int) -> list[Event]:
    return [e for e in events if start <= e.ts_ms < end]


def _actors(events: Iterable[Event]) -> set[str]:
    return {e.actor_id for e in events}


def _report(
    data: ReferenceStore, account_id: str, end: int, days: int, bursts: set[str], weights: Weights
) -> AccountReport:
    start = end - days * DAY_MS
    received = data.to_account.get(account_id, [])
    sent = data.by_actor.get(account_id, [])
    inbound_all = [e for e in received if e.type in ENGAGEMENT_TYPES]
    inbound = _between(inbound_all, start, end)

    followers = followers_at(received, end)
    engagers = _actors(inbound)

    conversations = [e for e in inbound if e.type in CONVERSATION_TYPES]
    delays = first_response_delays(conversations, sent, end)
    answered = sum(1 for d in delays.values() if 0 <= d <= RESPONSE_WINDOW_MS)
    outbound = [e for e in _between(sent, start, end) if e.type in CONVERSATION_TYPES]
    responses_sent = sum(1 for e in outbound if _is_response(data, account_id, e))

    top, top_score, all_score = top_engagers(inbound, weights)
    return AccountReport(
        account_id=account_id,
        as_of=end,
        days=days,
        followers=followers,
        engagers=len(engagers),
        engagement_rate=ratio(len(engagers), followers),
        likes=sum(1 for e in inbound if e.type == LIKE),
        replies=sum(1 for e in inbound if e.type == REPLY),
        mentions=sum(1 for e in inbound if e.type == MENTION),
        returning_engager_rate=returning_engager_rate(inbound_all, end),
        loyal_core=loyal_core(inbound_all, end),
        inbound_conversations=len(conversations),
        answered_24h=answered,
        response_rate=ratio(answered, len(conversations)),
        median_response_seconds=statistics.median(d / 1000 for d in delays.values()) if delays else None,
        outbound=len(outbound),
        responses_sent=responses_sent,
        dialogue_share=ratio(responses_sent, len(outbound)),
        reciprocal_circle=reciprocal_circle(inbound_all, sent, end),
        top_engagers=top,
        top10_share=ratio(top_score, all_score),
        bot_share=ratio(sum(1 for e in inbound if e.actor_id in bursts), len(inbound)),
        human_engagement_rate=ratio(len(engagers - bursts), followers),
        daily=daily(inbound, received, start, end),
        response_delays=delay_distribution(conversations, delays),
    )


def delay_distribution(conversations: list[Event], delays: dict[str, int]) -> dict[str, int]:
    """The conversations counted per response-delay bucket (every bucket present, in order)."""
    counts = Counter(delay_bucket(delays.get(c.event_id)) for c in conversations)
    return {name: counts[name] for name in DELAY_NAMES}


def returning_engager_rate(inbound: list[Event], end: int) -> float | None:
    """Of the engagers in [T-14d, T-7d), the share who engaged again in [T-7d, T); None if there were none."""
    before = _actors(_between(inbound, end - 2 * WEEK_MS, end - WEEK_MS))
    after = _actors(_between(inbound, end - WEEK_MS, end))
    return ratio(len(before & after), len(before))


def loyal_core(inbound: list[Event], end: int) -> int:
    """Actors who engaged in at least 3 of the 4 weeks [T-28d+7k d, T-21d+7k d), k = 0..3."""
    weeks_engaged: Counter[str] = Counter()
    for k in range(4):
        week_start = end - 4 * WEEK_MS + k * WEEK_MS
        weeks_engaged.update(_actors(_between(inbound, week_start, week_start + WEEK_MS)))
    return sum(1 for n in weeks_engaged.values() if n >= 3)


def first_response_delays(conversations: list[Event], sent: list[Event], end: int) -> dict[str, int]:
    """For each conversation with a response, the delay (ms, may be negative) of its earliest response: a
    reply in ``sent`` (the account's own events, self-events excluded) with ``in_reply_to`` = the
    conversation's id and time before ``end``. Conversations without one are absent."""
    earliest: dict[str, int] = {}
    for reply in sent:
        if reply.type == REPLY and reply.in_reply_to is not None and reply.ts_ms < end:
            known = earliest.get(reply.in_reply_to)
            if known is None or reply.ts_ms < known:
                earliest[reply.in_reply_to] = reply.ts_ms
    return {c.event_id: earliest[c.event_id] - c.ts_ms for c in conversations if c.event_id in earliest}


def _is_response(data: ReferenceStore, account_id: str, reply: Event) -> bool:
    """``reply`` (by the account) answers an inbound reply/mention of the account, of any time."""
    if reply.type != REPLY or reply.in_reply_to is None:
        return False
    answered = data.by_id.get(reply.in_reply_to)
    return (
        answered is not None
        and answered.type in CONVERSATION_TYPES
        and answered.account_id == account_id
        and not answered.is_self
    )


def reciprocal_circle(inbound: list[Event], sent: list[Event], end: int) -> int:
    """Accounts U != A that A replied to or mentioned and that engaged A, both within [T-90d, T)."""
    start = end - CIRCLE_DAYS * DAY_MS
    addressed = {e.account_id for e in _between(sent, start, end) if e.type in CONVERSATION_TYPES}
    return len(addressed & _actors(_between(inbound, start, end)))


def top_engagers(inbound: list[Event], weights: Weights) -> tuple[list[TopEngager], int, int]:
    """The 10 highest weighted scores (ties by actor_id ascending), their total, and the total of all."""
    weight = {LIKE: weights[0], MENTION: weights[1], REPLY: weights[2]}
    scores: Counter[str] = Counter()
    for e in inbound:
        scores[e.actor_id] += weight[e.type]
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:TOP_ENGAGERS]
    top = [TopEngager(actor, score) for actor, score in ranked]
    return top, sum(t.score for t in top), sum(scores.values())


def daily(inbound: list[Event], received: list[Event], start: int, end: int) -> list[Day]:
    """One row per UTC day that [start, end) touches: engagers in the part of the day inside it, followers
    at the day's end (at ``end`` for the last day) and their rate."""
    rows: list[Day] = []
    day_start = start - start % DAY_MS
    while day_start < end:
        lo, hi = max(start, day_start), min(day_start + DAY_MS, end)
        engagers = len(_actors(_between(inbound, lo, hi)))
        followers = followers_at(received, hi)
        label = datetime.fromtimestamp(day_start // 1000, tz=UTC).strftime("%Y-%m-%d")
        rows.append(Day(label, engagers, followers, ratio(engagers, followers)))
        day_start += DAY_MS
    return rows
