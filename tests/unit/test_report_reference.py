"""The report's oracle, checked by hand on tiny event lists, and sanity properties on the generated data."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.events import Event
from pipeline.report_data import (
    BOT_AT,
    BOT_BEFORE,
    BOT_DUPLICATE,
    BOT_OVER,
    BOT_SELF,
    BOT_SPLIT,
    BOT_TARGET,
    CIRCLE,
    CLAMP,
    LOYAL,
    NO_FOLLOWERS,
    NO_INBOUND,
    RESPONDER,
    SCENARIO_ACCOUNTS,
    report_as_of,
    report_events,
)
from pipeline.report_model import DAY_MS, WEEK_MS, AccountReport, TopEngager, delay_bucket
from pipeline.report_reference import (
    ReferenceStore,
    burst_actors,
    reference_leaderboard,
    reference_report,
    reference_reports,
    store,
)

T = 1_767_225_600_000 + 60 * DAY_MS  # 2026-03-02T00:00:00Z, aligned to a day
A = "acct"
H = 3_600_000
S = 1000

_ids = iter(range(1_000_000))


def ev(kind: str, ts: int, actor: str, account: str = A, event_id: str = "", **extra: Any) -> Event:
    return Event(event_id or f"e{next(_ids)}", kind, ts, actor, account, **extra)


def snap(ts: int, count: int, account: str = A, event_id: str = "") -> Event:
    return ev("followers", ts, "", account, event_id, followers=count)


def report(events: list[Event], account: str = A, **kw: Any) -> AccountReport:
    kw.setdefault("as_of", T)
    return reference_report(events, account, **kw)


# -- followers, deduplication, the period ---------------------------------------------------------------


def test_followers_latest_snapshot_plus_follows_clamped_self_follows_ignored() -> None:
    events = [
        snap(T - 10 * DAY_MS, 50, event_id="s1"),
        snap(T - 10 * DAY_MS, 2, event_id="s2"),  # same ms: the higher event_id wins
        ev("follow", T - 10 * DAY_MS, "x"),  # at the snapshot's ms: already in it
        *[ev("unfollow", T - 5 * DAY_MS, f"u{i}") for i in range(5)],  # 2 - 5: clamps at 0
        ev("follow", T - DAY_MS, "f1"),
        ev("follow", T - DAY_MS, "f2"),
        ev("follow", T - DAY_MS, A),  # self: ignored
        ev("follow", T, "late"),  # at T: outside
    ]
    assert report(events).followers == 0  # max(0, 2 - 5 + 2)
    assert report([*events, ev("follow", T - 1, "f3"), ev("follow", T - 1, "f4")]).followers == 1
    assert report(events, as_of=T - 6 * DAY_MS).followers == 2
    assert report(events, as_of=T - 10 * DAY_MS).followers == 0  # the snapshot is not before T


def test_duplicates_first_occurrence_wins_and_as_of_defaults_to_newest_plus_one() -> None:
    events = [
        snap(T - DAY_MS, 4),
        ev("like", T - H, "u", event_id="same"),
        ev("reply", T - H, "u", event_id="same"),  # a second event with the same id: dropped
        ev("like", T - H, "u", event_id="same"),
        ev("like", T + 5, A),  # a self-event: counts for nothing, but is the newest event
    ]
    r = reference_report(events, A)
    assert r.as_of == T + 6 and r.likes == 1 and r.replies == 0 and r.engagers == 1
    assert r.engagement_rate == 0.25
    with pytest.raises(ValueError):
        reference_report([], A)
    with pytest.raises(ValueError):
        reference_report(events, A, days=0)


def test_period_bounds_self_engagement_and_null_vs_zero() -> None:
    events = [
        ev("like", T - 28 * DAY_MS, "first"),  # the period's first ms: inside
        ev("like", T - 28 * DAY_MS - 1, "before"),
        ev("mention", T - 1, "last"),
        ev("reply", T, "after"),
        ev("like", T - H, A),  # self
        ev("like", T - H, "other", account="someone-else"),
    ]
    r = report(events)
    assert (r.engagers, r.likes, r.replies, r.mentions) == (2, 1, 0, 1)
    assert r.followers == 0 and r.engagement_rate is None and r.human_engagement_rate is None
    assert report(events, days=7).engagers == 1
    quiet = report([snap(T - DAY_MS, 10)])
    assert quiet.engagers == 0 and quiet.engagement_rate == 0.0 and quiet.human_engagement_rate == 0.0
    assert quiet.returning_engager_rate is None and quiet.response_rate is None
    assert quiet.median_response_seconds is None and quiet.dialogue_share is None
    assert quiet.top_engagers == [] and quiet.top10_share is None and quiet.bot_share is None


def test_an_unknown_account_is_all_zeros_and_nones() -> None:
    r = report([ev("like", T - H, "u")], account="nobody")
    assert (r.followers, r.engagers, r.outbound, r.reciprocal_circle, r.loyal_core) == (0, 0, 0, 0, 0)
    assert r.engagement_rate is None and r.response_rate is None and len(r.daily) == 28


# -- returning engagers and the loyal core ----------------------------------------------------------------


def test_returning_engager_rate() -> None:
    week2, week3 = T - 2 * WEEK_MS, T - WEEK_MS
    events = [
        ev("like", week2, "a"),
        ev("like", week3 + DAY_MS, "a"),  # came back
        ev("reply", week2 + DAY_MS, "b"),
        ev("like", week3 - 1, "c"),  # the last ms of week 2, never again
        ev("mention", week3, "d"),  # exactly at T - 7d: week 3 only
        ev("like", week3 + H, A),  # self
    ]
    assert report(events).returning_engager_rate == pytest.approx(1 / 3)
    assert report([ev("like", week3, "d")]).returning_engager_rate is None
    assert report([ev("like", week2, "a")]).returning_engager_rate == 0.0
    assert report(events, days=1).returning_engager_rate == pytest.approx(1 / 3)  # its own window


def test_loyal_core_three_of_four_weeks() -> None:
    def weeks(actor: str, *ks: int) -> list[Event]:
        return [ev("like", T - 4 * WEEK_MS + k * WEEK_MS + DAY_MS, actor) for k in ks]

    events = [
        *weeks("three", 0, 1, 3),
        *weeks("four", 0, 1, 2, 3),
        *weeks("two", 1, 2),
        *weeks("twice-in-one-week", 2, 2, 3),
        ev("like", T - 4 * WEEK_MS - 1, "early"),  # before week 0
        *weeks("early", 1, 2),
        ev("like", T - 4 * WEEK_MS, "edge"),  # exactly the start of week 0
        *weeks("edge", 2, 3),
        *weeks(A, 0, 1, 2, 3),  # self
    ]
    assert report(events).loyal_core == 3  # three, four, edge


# -- responsiveness -----------------------------------------------------------------------------------------


def test_responses_delays_and_the_24h_bounds() -> None:
    c = T - 20 * DAY_MS

    def conversation(name: str, kind: str = "mention") -> Event:
        return ev(kind, c, f"fan-{name}", event_id=name)

    def response(name: str, delay: int, to: str = "") -> Event:
        return ev("reply", c + delay, A, to or f"fan-{name}", in_reply_to=name)

    events = [
        response("exact", DAY_MS),  # arrives before its conversation
        conversation("exact"),
        conversation("late", "reply"),
        response("late", DAY_MS + 1),
        conversation("negative"),
        response("negative", -5 * S),
        response("negative", 60 * S),  # inside 24 h, but not the first
        response("twice", 600 * S),
        response("twice", 120 * S),  # the earliest, later in the stream
        conversation("twice", "reply"),
        conversation("zero"),
        response("zero", 0, to="a-third-account"),  # addressed elsewhere: still a response
        conversation("never"),
        conversation("self"),
        ev("reply", c + S, A, A, in_reply_to="self"),  # a self-reply is not a response
        conversation("after-T"),
        response("after-T", 20 * DAY_MS),  # at T: not a response
        ev("like", c, "fan-like", event_id="liked"),
        response("liked", S),  # answers a like: not a response, not a conversation
    ]
    r = report(events)
    assert r.inbound_conversations == 8 and r.likes == 1
    assert r.answered_24h == 3  # exact, twice, zero
    assert r.response_rate == 3 / 8
    # first delays: 86400, 86400.001, -5, 120, 0 -> median 120
    assert r.median_response_seconds == 120.0
    r2 = report([*events, ev("mention", c, "fan-more", event_id="more"), response("more", 90 * S)])
    assert r2.median_response_seconds == (90 + 120) / 2  # even count: the mean of the middle two


def test_outbound_responses_sent_and_dialogue_share() -> None:
    start = T - 28 * DAY_MS
    events = [
        ev("mention", start - 1, "old-fan", event_id="old"),  # before the period
        ev("reply", start + H, A, "old-fan", in_reply_to="old"),  # a response inside it
        ev("mention", T - DAY_MS, "fan", event_id="new"),
        ev("reply", T - DAY_MS + S, A, "fan", in_reply_to="new"),
        ev("reply", T - DAY_MS + 2 * S, A, "fan", in_reply_to="new"),  # a second reply counts too
        ev("mention", T - H, A, "someone"),
        ev("reply", T - H, A, "x", in_reply_to="missing"),
        ev("mention", T - H, "y", account="B", event_id="not-ours"),
        ev("reply", T - H + S, A, "y", in_reply_to="not-ours"),  # answers another account's conversation
        ev("like", T - H, A, "someone"),  # a like is not outbound
        ev("mention", T - H, A, A),  # self
        ev("reply", start - 1, A, "old-fan", in_reply_to="old"),  # before the period
    ]
    r = report(events)
    assert (r.outbound, r.responses_sent) == (6, 3) and r.dialogue_share == 0.5
    assert r.inbound_conversations == 1 and r.answered_24h == 1
    assert r.median_response_seconds == 1.0  # the earliest of the two replies


# -- reciprocal circle, top engagers, bots --------------------------------------------------------------------


def test_reciprocal_circle_within_90_days() -> None:
    horizon = T - 90 * DAY_MS
    events = [
        ev("mention", T - 10 * DAY_MS, A, "u1"),
        ev("like", T - 50 * DAY_MS, "u1", A),  # outside the period, inside 90 days
        ev("reply", horizon, A, "u2"),  # exactly at T - 90d
        ev("mention", T - 1, "u2", A),
        ev("reply", horizon - 1, A, "u3"),  # 1 ms too old
        ev("like", T - DAY_MS, "u3", A),
        ev("mention", T - 100 * DAY_MS, A, "u4"),  # both sides older than 90 days
        ev("mention", T - 95 * DAY_MS, "u4", A),
        ev("mention", T - DAY_MS, A, "u5"),  # one way
        ev("like", T - DAY_MS, A, "u6"),  # A only liked
        ev("mention", T - DAY_MS, "u6", A),
        ev("mention", T - DAY_MS, A, A),  # self
    ]
    assert report(events).reciprocal_circle == 2


def test_top_engagers_weights_ties_and_share() -> None:
    events: list[Event] = []
    plan = {"bob": ("reply", 2), "Zed": ("reply", 1), "zoë": ("mention", 1), "émile": ("like", 2)}
    plan |= {"Ωmega": ("reply", 1), "用户": ("mention", 1), "🙂": ("like", 1), "a'b": ("like", 1)}
    plan |= {'q"d': ("like", 1), "x\\y": ("like", 1), "yy": ("like", 1), "zz": ("like", 1)}
    for actor, (kind, n) in plan.items():
        events += [ev(kind, T - DAY_MS, actor) for _ in range(n)]
    r = report(events)
    expected = [("bob", 6), ("Zed", 3), ("Ωmega", 3), ("zoë", 2), ("émile", 2), ("用户", 2)]
    expected += [("a'b", 1), ('q"d', 1), ("x\\y", 1), ("yy", 1)]
    assert r.top_engagers == [TopEngager(a, s) for a, s in expected]
    assert r.top10_share == 22 / 24  # zz and 🙂 fall off the tie at the cut
    replies_only = report(events, weights=(0, 0, 1)).top_engagers
    assert [(t.actor_id, t.score) for t in replies_only[:3]] == [("bob", 2), ("Zed", 1), ("Ωmega", 1)]
    assert report([ev("like", T - DAY_MS, "u")], weights=(0, 0, 0)).top10_share is None


def test_bursts_more_than_threshold_in_one_aligned_minute_across_accounts() -> None:
    minute = T - 3 * DAY_MS

    def burst(actor: str, n: int, at: int, step: int = S, first_to: str = A) -> list[Event]:
        return [ev("like", at + i * step, actor, first_to if i == 0 else f"acct-{i}") for i in range(n)]

    events = [
        snap(T - 30 * DAY_MS, 10),
        *burst("at", 30, minute),  # exactly the threshold: not a burst
        *burst("over", 31, minute + 60 * S),  # one more: a burst (one event of it to A)
        *burst("split", 31, minute + 165 * S),  # 31 within 60 s, but 15 + 16 in two aligned minutes
        *burst("self", 30, minute + 240 * S),
        ev("like", minute + 240 * S + 50 * S, "self", "self"),  # its 31st is to itself
        *(dup := burst("dup", 30, minute + 300 * S)),
        dup[-1],  # its 31st is a duplicate
        *burst("before", 31, T - 29 * DAY_MS),  # before the period
        ev("reply", T - DAY_MS, "human"),
    ]
    r = report(events)
    data = store(events)
    assert burst_actors(data, T - 28 * DAY_MS, T, 30) == {"over"}
    assert burst_actors(data, T - 28 * DAY_MS, T, 29) == {"at", "over", "self", "dup"}
    assert burst_actors(data, T - 30 * DAY_MS, T, 30) == {"over", "before"}
    assert r.engagers == 6 and r.bot_share == 1 / 6 and r.human_engagement_rate == 5 / 10
    assert report(events, burst_threshold=29).bot_share == 4 / 6
    # a minute at the end of the period counts only its part inside
    tail = store(burst("tail", 31, T))  # T + 0 s .. T + 30 s
    assert burst_actors(tail, T - DAY_MS, T + 31 * S, 30) == {"tail"}
    assert burst_actors(tail, T - DAY_MS, T + 30 * S, 30) == set()


# -- daily ----------------------------------------------------------------------------------------------------


def test_daily_rows_per_utc_day_with_partial_ends() -> None:
    events = [
        snap(T - 40 * DAY_MS, 4),
        ev("like", T - 28 * DAY_MS, "a"),
        ev("like", T - 28 * DAY_MS + H, "b"),
        ev("follow", T - 2 * DAY_MS + 5, "f"),
        ev("like", T - 1, "a"),
    ]
    aligned = report(events).daily
    assert len(aligned) == 28 and aligned[0].day == "2026-02-02" and aligned[-1].day == "2026-03-01"
    assert (aligned[0].engagers, aligned[0].followers, aligned[0].engagement_rate) == (2, 4, 0.5)
    assert [d.followers for d in aligned[-3:]] == [4, 5, 5] and aligned[-1].engagers == 1
    assert all(d.engagers == 0 and d.engagement_rate == 0.0 for d in aligned[1:-1])

    t = T + 12 * H  # unaligned: the first and the last day are partial, 29 rows
    unaligned = report(events, as_of=t).daily
    assert len(unaligned) == 29 and unaligned[0].day == "2026-02-02" and unaligned[-1].day == "2026-03-02"
    assert unaligned[0].engagers == 0  # a and b were before the period's first ms on that day
    assert unaligned[-2].engagers == 1 and unaligned[-1].followers == 5
    assert report(events, as_of=t, days=1).daily[0].engagers == 1 and len(report(events, days=1).daily) == 1
    nobody = report([ev("like", T - H, "a")]).daily
    assert nobody[-1].engagers == 1 and nobody[-1].engagement_rate is None


# -- leaderboard ----------------------------------------------------------------------------------------------


def test_leaderboard_orders_by_value_none_last_ties_by_account_id() -> None:
    events = [
        snap(T - DAY_MS, 2, "b"),
        snap(T - DAY_MS, 2, "a"),
        snap(T - DAY_MS, 100, "big"),
        snap(T - DAY_MS, 0, "zero"),
        ev("like", T - H, "u1", "a"),
        ev("like", T - H, "u1", "b"),
        ev("like", T - H, "u1", "big"),
        ev("like", T - H, "u2", "big"),
        ev("like", T - H, "u1", "zero"),
    ]
    by_rate = reference_leaderboard(events, "engagement_rate", limit=10, as_of=T)
    assert [r.account_id for r in by_rate] == ["a", "b", "big", "zero"]
    assert [r.account_id for r in reference_leaderboard(events, "followers", 2, as_of=T)] == ["big", "a"]
    assert [r.account_id for r in reference_leaderboard(events, "engagers", 1, as_of=T)] == ["big"]
    with pytest.raises(ValueError):
        reference_leaderboard(events, "nonsense", as_of=T)  # type: ignore[arg-type]


def test_json_has_exactly_the_issue_keys() -> None:
    keys = set(report([ev("like", T - H, "u")]).to_json_dict())
    assert keys == {
        "account_id", "as_of", "days", "followers", "engagers", "engagement_rate", "likes", "replies", "mentions",
        "returning_engager_rate", "loyal_core", "inbound_conversations", "answered_24h", "response_rate",
        "median_response_seconds", "outbound", "responses_sent", "dialogue_share", "reciprocal_circle",
        "top_engagers", "top10_share", "bot_share", "human_engagement_rate", "daily", "response_delays",
    }  # fmt: skip


# -- the generated data ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated() -> tuple[list[Event], ReferenceStore, dict[str, AccountReport]]:
    events = report_events(seed=11)
    data = store(events)
    return events, data, reference_reports(data)


def test_generation_is_deterministic_and_seeded() -> None:
    small = report_events(seed=5, bulk_events=2000)
    assert small == report_events(seed=5, bulk_events=2000)
    assert small != report_events(seed=6, bulk_events=2000)
    scenario = [e for e in small if e.event_id.startswith("rx-")]
    assert scenario == [e for e in report_events(seed=6, bulk_events=2000) if e.event_id.startswith("rx-")]


def test_generated_data_holds_the_edge_cases(generated: Any) -> None:
    events, data, _ = generated
    t = report_as_of()
    assert data.newest_ms == t - 1 and 30_000 < len(events) <= 50_000
    assert min(e.ts_ms for e in events if e.event_id.startswith("ev-")) < t - 34 * DAY_MS  # five weeks of bulk
    assert any(n > 1 for n in Counter(e.event_id for e in events).values())
    assert any(e.is_self for e in events)
    position = {e.event_id: i for i, e in reversed(list(enumerate(events)))}
    early = [e for e in events if e.in_reply_to in position and position[e.event_id] < position[e.in_reply_to]]
    assert any(e.actor_id == RESPONDER for e in early)  # responses before their conversation
    assert burst_actors(data, t - 28 * DAY_MS, t, 30) & {BOT_AT, BOT_OVER, BOT_SPLIT, BOT_DUPLICATE} == {BOT_OVER}
    assert BOT_SELF not in burst_actors(data, t - 28 * DAY_MS, t, 30)
    assert BOT_BEFORE not in burst_actors(data, t - 28 * DAY_MS, t, 30)
    assert "bot-0000" in burst_actors(data, t - 28 * DAY_MS, t, 30)  # the bulk's bot
    assert all(a in data.accounts for a in SCENARIO_ACCOUNTS)


def test_generated_scenarios_exact_values(generated: Any) -> None:
    _, _, reports = generated
    r = reports[NO_FOLLOWERS]
    assert (r.followers, r.engagers, r.engagement_rate, r.human_engagement_rate) == (0, 2, None, None)
    assert all(d.engagement_rate is None for d in r.daily)

    r = reports[NO_INBOUND]
    assert (r.followers, r.engagers, r.engagement_rate, r.inbound_conversations) == (100, 0, 0.0, 0)
    assert (r.response_rate, r.bot_share, r.top10_share, r.outbound, r.dialogue_share) == (None, None, None, 2, 0.0)

    r = reports[RESPONDER]
    assert (r.followers, r.engagers, r.likes, r.replies, r.mentions) == (12, 10, 3, 3, 6)
    assert (r.inbound_conversations, r.answered_24h, r.median_response_seconds) == (9, 5, 105.0)
    assert (r.outbound, r.responses_sent, r.reciprocal_circle, r.returning_engager_rate) == (15, 11, 9, 0.0)

    r = reports[BOT_TARGET]
    assert (r.followers, r.engagers, r.bot_share, r.human_engagement_rate) == (43, 18, 1 / 27, 17 / 43)
    assert [t.actor_id for t in r.top_engagers][3:] == ["Zed", RESPONDER, "zoë", "émile", "Ωmega", "dave", "o'neil"]
    assert r.top10_share == 34 / 44

    r = reports[LOYAL]
    assert (r.loyal_core, r.returning_engager_rate, r.engagers, r.followers) == (2, 0.4, 9, 10)

    r = reports[CIRCLE]
    assert (r.reciprocal_circle, r.engagers, r.followers, r.inbound_conversations) == (3, 6, 150, 3)

    r = reports[CLAMP]
    assert r.followers == 1 and len(r.daily) == 29
    followers = [d.followers for d in r.daily]
    assert followers == [0] * 3 + [2] * 6 + [0] * 18 + [1] * 2
    assert [d.engagement_rate is None for d in r.daily] == [f == 0 for f in followers]


def test_generated_reports_are_consistent(generated: Any) -> None:
    _, _, reports = generated
    t = report_as_of()
    first = datetime.fromtimestamp((t - 28 * DAY_MS) // 1000, tz=UTC).date()
    days = [(first + timedelta(days=i)).isoformat() for i in range(29)]
    for r in reports.values():
        assert r.as_of == t and r.answered_24h <= r.inbound_conversations <= r.replies + r.mentions
        assert r.responses_sent <= r.outbound and r.engagers <= r.likes + r.replies + r.mentions
        assert r.loyal_core <= r.engagers
        for share in (r.response_rate, r.dialogue_share, r.returning_engager_rate, r.top10_share, r.bot_share):
            assert share is None or 0 <= share <= 1
        assert (r.engagement_rate is None) == (r.followers == 0) == (r.human_engagement_rate is None)
        if r.engagement_rate is not None and r.human_engagement_rate is not None:
            assert r.human_engagement_rate <= r.engagement_rate
        assert [d.day for d in r.daily] == days
        assert r.daily[-1].followers == r.followers and max(d.engagers for d in r.daily) <= r.engagers
        scores = [(-e.score, e.actor_id) for e in r.top_engagers]
        assert scores == sorted(scores) and len(scores) == min(10, r.engagers)
        assert (r.median_response_seconds is None) or r.inbound_conversations > 0
    busy = [r for r in reports.values() if r.account_id.startswith("acct-") and r.answered_24h]
    assert len(busy) > 20  # the bulk is realistic enough to exercise every metric
    assert any(r.loyal_core for r in busy) and any(r.reciprocal_circle for r in busy)
    assert any(r.bot_share for r in reports.values() if r.account_id.startswith("acct-"))


def test_delay_buckets_are_inclusive_upper_bounds() -> None:
    cases = {
        None: "unanswered", -1: "before", 0: "within_5m", 300_000: "within_5m", 300_001: "within_1h",
        3_600_000: "within_1h", 14_400_000: "within_4h", 86_400_000: "within_24h", 86_400_001: "over_24h",
    }  # fmt: skip
    assert {delay: delay_bucket(delay) for delay in cases} == cases
