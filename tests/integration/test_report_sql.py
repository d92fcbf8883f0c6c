"""The account report's SQL (pipeline.report) on both backends, chDB 26.x and the ClickHouse 18.16 server,
against tiny hand-built event sets whose expected values are worked out by hand beside them.

Times are relative to T = 2026-02-01T00:00:00Z (aligned to midnight unless a test says otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest

from pipeline.events import Event
from pipeline.report import EmptyStore, Weights, account_report
from pipeline.report_model import DELAY_NAMES, Day, TopEngager, iso_ms
from pipeline.settings import Settings
from pipeline.sink import event_columns
from pipeline.warehouse import Warehouse
from tests.integration.helpers import opened_store
from tests.report_fixtures import zero_report

pytestmark = pytest.mark.integration

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T = 1_769_904_000_000  # 2026-02-01T00:00:00Z
S = T - 28 * DAY  # the default period's start, 2026-01-04T00:00:00Z


def like(event_id: str, ts: int, actor: str, account: str) -> Event:
    return Event(event_id, "like", ts, actor, account, post_id="p")


def reply(event_id: str, ts: int, actor: str, account: str, to: str | None = None) -> Event:
    return Event(event_id, "reply", ts, actor, account, post_id="p", in_reply_to=to)


def mention(event_id: str, ts: int, actor: str, account: str) -> Event:
    return Event(event_id, "mention", ts, actor, account, post_id="p")


def follow(event_id: str, ts: int, actor: str, account: str, kind: str = "follow") -> Event:
    return Event(event_id, kind, ts, actor, account)


def snapshot(event_id: str, ts: int, account: str, followers: int) -> Event:
    return Event(event_id, "followers", ts, "", account, followers=followers)


def insert(warehouse: Warehouse, events: Sequence[Event]) -> None:
    """One block in the sink's column layout (``event + (topic, partition, offset)``)."""
    sourced = [(*event, "test", 0, offset) for offset, event in enumerate(events)]
    warehouse.insert("engagement_events", event_columns(sourced, ingested_ms=1))


@pytest.fixture()
def settings(backend_settings: Settings) -> Settings:
    """Settings of a fresh, migrated store of each backend (this test's own database)."""
    with opened_store(backend_settings):
        return backend_settings


@pytest.fixture()
def warehouse(settings: Settings) -> Iterator[Warehouse]:
    with opened_store(settings, migrated=False) as opened:
        yield opened


def empty_days(start: int, count: int) -> list[Day]:
    return [Day(iso_ms(start + k * DAY)[:10], 0, 0, None) for k in range(count)]


def test_counts_followers_and_engagers(warehouse: Warehouse) -> None:
    events = [
        # acme's followers: snapshots 100 (T-40d), then 70 ("s-a") and 50 ("s-b") both at T-10d: the tie goes
        # to the highest event_id, 50. A follow at the snapshot's own ts is not after it; a snapshot and a
        # follow at T are not before T. 50 + 3 - 1 + 1 = 53.
        snapshot("s-1", T - 40 * DAY, "acme", 100),
        snapshot("s-b", T - 10 * DAY, "acme", 50),
        snapshot("s-a", T - 10 * DAY, "acme", 70),
        follow("f-0", T - 10 * DAY, "v0", "acme"),
        follow("f-1", T - 5 * DAY, "v1", "acme"),
        follow("f-2", T - 5 * DAY, "v2", "acme"),
        follow("f-3", T - 5 * DAY + 1, "v3", "acme"),
        follow("f-4", T - 4 * DAY, "v1", "acme", "unfollow"),
        follow("f-5", T - 1, "v5", "acme"),
        follow("f-6", T, "v6", "acme"),
        follow("f-7", T - 5 * DAY, "acme", "acme"),  # a self-follow counts for nothing
        snapshot("s-late", T, "acme", 999),
        # inbound in P: u1 like (at S, inside) + reply; u2 mention + like
        like("e-1", S, "u1", "acme"),
        reply("e-2", T - DAY, "u1", "acme", "post"),
        mention("e-3", T - 2 * DAY, "u2", "acme"),
        like("e-4", T - 2 * DAY + 1, "u2", "acme"),
        # not counted: before P, at T, self-engagement, acme engaging someone else, a follow
        like("x-1", S - 1, "u3", "acme"),
        like("x-2", T, "u3", "acme"),
        like("x-3", T - DAY, "acme", "acme"),
        reply("x-4", T - DAY, "acme", "acme", "e-2"),
        like("x-5", T - DAY, "acme", "u1"),
        # shrinking: 1 - 3 + 1 = -1, clamped at the end (not on the way) to 0; fresh: no snapshot, 2 - 1 = 1
        snapshot("k-0", T - 3 * DAY, "shrinking", 1),
        *(follow(f"k-{i}", T - 2 * DAY + i, f"w{i}", "shrinking", "unfollow") for i in range(1, 4)),
        follow("k-4", T - DAY, "w4", "shrinking"),
        follow("n-1", T - 20 * DAY, "w1", "fresh"),
        follow("n-2", T - 20 * DAY, "w2", "fresh"),
        follow("n-3", T - 2 * DAY, "w1", "fresh", "unfollow"),
    ]
    insert(warehouse, events)
    insert(warehouse, events[10:15])  # the same events again: duplicates count once

    report = account_report(warehouse, "acme", as_of=T)
    assert (report.followers, report.engagers, report.engagement_rate) == (53, 2, 2 / 53)
    assert (report.likes, report.replies, report.mentions) == (2, 1, 1)
    assert report.top_engagers == [TopEngager("u1", 1 + 3), TopEngager("u2", 2 + 1)]
    assert report.top10_share == 1.0
    assert isinstance(report.top10_share, float)
    assert report.bot_share == 0.0
    assert report.human_engagement_rate == 2 / 53
    assert len(report.daily) == 28
    assert (report.daily[0].day, report.daily[-1].day) == ("2026-01-04", "2026-01-31")
    # followers at each day's end (events at the end itself are after it): 100 until the day ending at T-10d,
    # 50 until T-5d, 53 at T-4d (3 follows), 52 until T-1d (an unfollow), 53 at T (a follow at T-1)
    assert [d.followers for d in report.daily] == [100] * 18 + [50] * 5 + [53, 52, 52, 52, 53]
    # engagers per day: u1 on S's day, u2 on T-2d's, u1 on T-1d's
    assert [(d.day, d.engagers, d.engagement_rate) for d in report.daily if d.engagers] == [
        ("2026-01-04", 1, 1 / 100),
        ("2026-01-30", 1, 1 / 52),
        ("2026-01-31", 1, 1 / 53),
    ]
    assert account_report(warehouse, "shrinking", as_of=T).followers == 0
    assert account_report(warehouse, "fresh", as_of=T).followers == 1


def test_no_followers_and_no_inbound(warehouse: Warehouse) -> None:
    insert(
        warehouse,
        [
            like("e-1", T - DAY, "u1", "unfollowed"),
            like("e-2", T - DAY, "u2", "other"),
            snapshot("s-1", T - DAY, "other", 5),
        ],
    )
    assert account_report(warehouse, "lonely", as_of=T) == zero_report(
        "lonely", T, daily=empty_days(S, 28), response_delays=dict.fromkeys(DELAY_NAMES, 0)
    )
    unfollowed = account_report(warehouse, "unfollowed", as_of=T)
    assert (unfollowed.followers, unfollowed.engagers, unfollowed.engagement_rate) == (0, 1, None)
    assert unfollowed.human_engagement_rate is None
    assert unfollowed.daily[-1] == Day("2026-01-31", 1, 0, None)
    assert unfollowed.bot_share == 0.0


def test_returning_engagers_and_loyal_core(warehouse: Warehouse) -> None:
    # weeks before T: w0 = [T-28d, T-21d), w1 = [T-21d, T-14d), w2 = [T-14d, T-7d), w3 = [T-7d, T)
    events = [
        like("a1-0", T - 28 * DAY, "a1", "fan"),  # w0 (its first ms)
        like("a1-2", T - 14 * DAY, "a1", "fan"),  # w2 (its first ms)
        like("a1-3", T - DAY, "a1", "fan"),  # w3: a1 returns; 3 weeks: loyal
        like("a2-2", T - 8 * DAY, "a2", "fan"),  # w2 only: does not return
        like("a3-3", T - 7 * DAY, "a3", "fan"),  # w3 (its first ms) only
        reply("a4-2", T - 7 * DAY - 1, "a4", "fan"),  # w2 (its last ms)
        mention("a4-3", T - 7 * DAY, "a4", "fan"),  # w3: a4 returns; 2 weeks
        like("a5-1", T - 15 * DAY, "a5", "fan"),  # w1 only
        like("a6-0", T - 22 * DAY, "a6", "fan"),  # w0
        like("a6-1", T - 20 * DAY, "a6", "fan"),  # w1
        like("a6-3", T - 3 * DAY, "a6", "fan"),  # w3: 3 weeks, loyal
        *(like(f"a7-{i}", T - 6 * DAY + i, "a7", "fan") for i in range(5)),  # 5 events, one week
        like("a8-x", T - 29 * DAY, "a8", "fan"),  # before w0
        like("a8-1", T - 16 * DAY, "a8", "fan"),  # w1
        like("a8-2", T - 10 * DAY, "a8", "fan"),  # w2: 2 weeks
        like("self", T - 10 * DAY, "fan", "fan"),  # self-engagement: nothing
    ]
    insert(warehouse, events)
    report = account_report(warehouse, "fan", as_of=T)
    # engagers of w2: a1, a2, a4, a8; engaged again in w3: a1, a4
    assert report.returning_engager_rate == 2 / 4
    assert report.loyal_core == 2  # a1, a6
    assert report.engagers == 8  # a1..a8 (a8 has events in P)
    # the weeks are fixed before T, whatever the period
    short = account_report(warehouse, "fan", as_of=T, days=7)
    assert (short.returning_engager_rate, short.loyal_core, short.engagers) == (2 / 4, 2, 5)  # a1 a3 a4 a6 a7
    # nobody engaged in w2 a week later: undefined
    assert account_report(warehouse, "fan", as_of=T + 14 * DAY).returning_engager_rate is None


def test_responses_and_dialogue(warehouse: Warehouse) -> None:
    responses = [
        reply("r1b", T - 10 * DAY + 30_250, "desk", "u1", "c1"),  # c1's first response: 30.25 s
        reply("r1", T - 10 * DAY + 60 * SECOND, "desk", "u1", "c1"),
        reply("r2", T - 9 * DAY + 86_400 * SECOND, "desk", "u2", "c2"),  # exactly 86,400 s: answered
        reply("r3", T - 8 * DAY + 86_400 * SECOND + 1, "desk", "u3", "c3"),  # 1 ms late
        reply("r4a", T - 7 * DAY - 5 * SECOND, "desk", "u4", "c4"),  # before c4: -5 s, the first response
        reply("r4b", T - 7 * DAY + 10 * SECOND, "desk", "u4", "c4"),
        reply("r6", T, "desk", "u6", "c6"),  # at T: not before T, so c6 has no response
        reply("r7", T - 3 * DAY + 1, "desk", "u7", "c7"),  # answers a like: not a conversation
        reply("r8", T - 20 * DAY, "desk", "u8", "c8"),  # answers a conversation from before P
        reply("r9", T - 2 * DAY + 1, "u9", "u5", "c5"),  # someone else's reply: c5 stays unanswered
        reply("r10", T - 2 * DAY + 2, "desk", "desk", "c5"),  # self-addressed: no response, not outbound
        mention("m1", T - DAY, "desk", "u10"),  # outbound, not a response
    ]
    conversations = [
        reply("c1", T - 10 * DAY, "u1", "desk", "post"),
        mention("c2", T - 9 * DAY, "u2", "desk"),
        reply("c3", T - 8 * DAY, "u3", "desk", "post"),
        mention("c4", T - 7 * DAY, "u4", "desk"),
        reply("c5", T - 2 * DAY, "u5", "desk", "post"),
        reply("c6", T - HOUR, "u6", "desk", "post"),
        like("c7", T - 3 * DAY, "u7", "desk"),
        reply("c8", S - 1, "u8", "desk", "post"),
    ]
    insert(warehouse, responses)  # the responses are stored before the conversations they answer
    insert(warehouse, conversations)
    insert(warehouse, responses + conversations)  # and everything once more: duplicates count once
    report = account_report(warehouse, "desk", as_of=T)
    assert report.inbound_conversations == 6  # c1..c6
    # first-response delays: c4 -5 s, c1 30.25 s, c2 86,400 s, c3 86,400.001 s; within 24 h: c1, c2
    assert (report.answered_24h, report.response_rate) == (2, 2 / 6)
    assert report.median_response_seconds == (30.25 + 86_400.0) / 2  # 43,215.125 s
    assert report.response_delays == {
        "before": 1, "within_5m": 1, "within_1h": 0, "within_4h": 0, "within_24h": 1, "over_24h": 1, "unanswered": 2
    }  # fmt: skip
    # outbound: desk's replies/mentions to others in P: r1b r1 r2 r3 r4a r4b r7 r8 m1 (r6 is at T);
    # responses among them: the replies to inbound replies/mentions of desk, of any time (r8's c8 is
    # before P): all replies but r7
    assert (report.outbound, report.responses_sent, report.dialogue_share) == (9, 7, 7 / 9)

    # P = [T-9d, T): c2 .. c6; delays c4 -5 s, c2 86,400 s, c3 86,400.001 s: an odd count
    nine = account_report(warehouse, "desk", as_of=T, days=9)
    assert (nine.inbound_conversations, nine.answered_24h, nine.response_rate) == (5, 1, 1 / 5)
    assert nine.median_response_seconds == 86_400.0
    assert (nine.outbound, nine.responses_sent) == (6, 4)  # r2 r3 r4a r4b r7 m1; r7 answers a like
    # P = [T-1d, T): only c6, unanswered: the rate is 0, the median undefined
    one = account_report(warehouse, "desk", as_of=T, days=1)
    assert (one.inbound_conversations, one.answered_24h, one.response_rate) == (1, 0, 0.0)
    assert one.median_response_seconds is None
    assert (one.outbound, one.responses_sent, one.dialogue_share) == (1, 0, 0.0)
    # T' = T-7d: responses must come before T' (r3 does not), c4 is at T' (outside)
    earlier = account_report(warehouse, "desk", as_of=T - 7 * DAY, days=3)
    assert (earlier.inbound_conversations, earlier.answered_24h) == (3, 2)
    assert earlier.median_response_seconds == (30.25 + 86_400.0) / 2
    # the mean of the two middle delays in seconds, to the last bit: (-5 + 86,400.001) / 2
    eight = account_report(warehouse, "desk", as_of=T, days=8)  # c3, c4 (answered late / early), c5, c6
    assert eight.median_response_seconds == (-5_000 / 1000 + 86_400_001 / 1000) / 2
    # no outbound in P: undefined share
    assert account_report(warehouse, "desk", as_of=S, days=1).dialogue_share is None


def test_response_delay_buckets_hold_their_upper_bounds(warehouse: Warehouse) -> None:
    delays = [-1, 0, 300_000, 300_001, 3_600_000, 3_600_001, 14_400_000, 14_400_001, 86_400_000, 86_400_001]
    conversations = [reply(f"c{i}", T - 3 * DAY + i, f"u{i}", "desk", "post") for i in range(len(delays))]
    responses = [
        reply(f"r{i}", c.ts_ms + d, "desk", c.actor_id, c.event_id)
        for i, (c, d) in enumerate(zip(conversations, delays, strict=True))
    ]
    insert(warehouse, conversations + responses + [mention("c-none", T - DAY, "u", "desk")])
    report = account_report(warehouse, "desk", as_of=T)
    assert report.response_delays == {
        "before": 1, "within_5m": 2, "within_1h": 2, "within_4h": 2, "within_24h": 2, "over_24h": 1, "unanswered": 1
    }  # fmt: skip
    assert report.answered_24h == 8 and report.inbound_conversations == 11


def test_reciprocal_circle(warehouse: Warehouse) -> None:
    events = [
        mention("o1", T - 89 * DAY, "hub", "U1"),
        like("i1", T - DAY, "U1", "hub"),  # U1: both in 90 d
        reply("o2", T - 91 * DAY, "hub", "U2", "post"),
        like("i2", T - DAY, "U2", "hub"),  # U2: hub's reply is older than 90 d
        reply("o3", T - DAY, "hub", "U3", "post"),
        like("i3", T - 91 * DAY, "U3", "hub"),  # U3: its engagement is older than 90 d
        mention("o4", T - 5 * DAY, "hub", "U4"),
        follow("i4", T - 5 * DAY, "U4", "hub"),  # U4: a follow is not engagement
        like("o5", T - 5 * DAY, "hub", "U5"),
        reply("i5", T - 5 * DAY, "U5", "hub", "post"),  # U5: hub only liked U5
        mention("o6a", T - 3 * DAY, "hub", "U6"),
        mention("o6b", T - 3 * DAY + 1, "hub", "U6"),
        mention("i6", T - 2 * DAY - 1, "U6", "hub"),
        reply("o6c", T - 2 * DAY, "hub", "U6", "i6"),  # U6: counted once
        mention("o7", T - 90 * DAY, "hub", "U7"),
        like("i7", T - 90 * DAY, "U7", "hub"),  # U7: both at the window's first ms
        mention("o8", T, "hub", "U8"),
        like("i8", T - DAY, "U8", "hub"),  # U8: hub's mention is at T
        mention("o9", T - DAY, "hub", "hub"),
        like("i9", T - DAY, "hub", "hub"),  # hub itself: never
    ]
    insert(warehouse, events)
    report = account_report(warehouse, "hub", as_of=T)
    assert report.reciprocal_circle == 3  # U1, U6, U7
    # outbound in P: o3, o4, o6a, o6b, o6c (o5 is a like, o8 at T, o9 to itself); o6c answers i6
    assert (report.outbound, report.responses_sent, report.dialogue_share) == (5, 1, 1 / 5)
    # the circle's window is 90 days whatever the period
    assert account_report(warehouse, "hub", as_of=T, days=1).reciprocal_circle == 3
    # [T-92d, T-2d): U6 (o6a, i6) and U7; U1's engagement and o3 are later, U2's reply has no answer in it
    assert account_report(warehouse, "hub", as_of=T - 2 * DAY, days=1).reciprocal_circle == 2


def test_top_engagers_ties_and_weights(warehouse: Warehouse) -> None:
    events = [
        reply("a1", T - DAY, "a", "star", "post"),  # a 3
        mention("b1", T - DAY, "b", "star"),
        like("b2", T - DAY, "b", "star"),  # b 3
        *(like(f"c{i}", T - DAY + i, "c", "star") for i in range(3)),  # c 3
        reply("d1", T - DAY, "d", "star", "post"),
        reply("d2", T - DAY + 1, "d", "star", "post"),  # d 6
        mention("f1", T - DAY, "f", "star"),  # f 2
        # score 1 each; byte (code point) order: "Z" < "e" < ... < "k" < "é"
        *(like(f"{actor}1", T - DAY, actor, "star") for actor in ["é", "k", "j", "i", "h", "g", "e", "Z"]),
        like("x1", S - 1, "d", "star"),  # before P
    ]
    insert(warehouse, events)
    report = account_report(warehouse, "star", as_of=T)
    assert report.top_engagers == [
        TopEngager("d", 6),
        TopEngager("a", 3),
        TopEngager("b", 3),
        TopEngager("c", 3),
        TopEngager("f", 2),
        TopEngager("Z", 1),
        TopEngager("e", 1),
        TopEngager("g", 1),
        TopEngager("h", 1),
        TopEngager("i", 1),
    ]
    assert report.top10_share == 22 / 25  # j, k, é (1 each) are outside the top 10
    # like 5, mention 0, reply 1: c 15; b, Z, e, g, h, i, j, k, é 5; d 2; a 1; f 0
    weighted = account_report(warehouse, "star", as_of=T, weights=Weights(like=5, mention=0, reply=1))
    assert [(t.actor_id, t.score) for t in weighted.top_engagers] == [
        ("c", 15),
        *((actor, 5) for actor in ["Z", "b", "e", "g", "h", "i", "j", "k", "é"]),
    ]
    assert weighted.top10_share == 60 / 63
    assert weighted.engagers == 13  # f scores 0 but engaged
    # all weights 0: no score at all, the share is undefined
    zero = account_report(warehouse, "star", as_of=T, weights=Weights(0, 0, 0))
    assert zero.top10_share is None
    assert zero.top_engagers[0] == TopEngager("Z", 0)


def test_bursts(warehouse: Warehouse) -> None:
    minute = T - 5 * DAY  # an aligned UTC minute (T is midnight)

    def spree(actor: str, start: int, count: int, account: str = "x", step: int = SECOND) -> list[Event]:
        return [like(f"{actor}-{account}-{i}", start + i * step, actor, account) for i in range(count)]

    events = [
        snapshot("s", T - 10 * DAY, "target", 14),
        # bot30: 30 engagements in one minute (29 to x, 1 to target): at the threshold, not a burst
        *spree("bot30", minute, 29),
        like("bot30-t", minute + 59 * SECOND, "bot30", "target"),
        # bot31: 31 in one minute, of all three types, 2 of them to target: a burst
        *spree("bot31", minute, 27, "y"),
        reply("bot31-r", minute + 50 * SECOND, "bot31", "x", "post"),
        mention("bot31-m", minute + 51 * SECOND, "bot31", "x"),
        like("bot31-t1", minute + 52 * SECOND, "bot31", "target"),
        reply("bot31-t2", minute + 59_999, "bot31", "target", "post"),
        # split: 31 within 60 s, but across two aligned minutes (20 + 11)
        *spree("split", minute + 40 * SECOND, 30),
        like("split-t", minute + 70 * SECOND, "split", "target"),
        # self: 30 to others and 5 to itself in one minute
        *spree("self", minute, 29),
        *spree("self", minute + 30 * SECOND, 5, "self"),
        like("self-t", minute + 59 * SECOND, "self", "target"),
        # old: 31 in a minute before P, then one like to target in P
        *spree("old", S - DAY, 31),
        like("old-t", T - DAY, "old", "target"),
        # follower: 31 follows in one minute are not engagements
        *(follow(f"fol-{i}", minute + i, "follower", f"acct-{i}") for i in range(31)),
        like("follower-t", T - DAY, "follower", "target"),
        like("human-t", T - DAY, "human", "target"),
    ]
    dup = [*spree("dup", minute, 29), like("dup-t", minute + 59 * SECOND, "dup", "target")]
    insert(warehouse, events + dup)
    insert(warehouse, dup[:5])  # 30 distinct events and 5 copies in the minute: not a burst
    report = account_report(warehouse, "target", as_of=T)
    # target's inbound events in P: bot30 1, bot31 2, split 1, self 1, old 1, follower 1, human 1, dup 1
    assert report.bot_share == 2 / 9
    assert (report.engagers, report.followers) == (8, 14)
    assert report.engagement_rate == 8 / 14
    assert report.human_engagement_rate == 7 / 14
    # threshold 29: bot30, self and dup (30 each) burst too
    assert account_report(warehouse, "target", as_of=T, burst_threshold=29).bot_share == 5 / 9
    # only the events inside P count: P = [T-5d, T) starts with the burst minute, all of it inside
    assert account_report(warehouse, "target", as_of=T, days=5).bot_share == 2 / 9
    # P = [T-5d+30s, T+30s) holds the burst minute's last 30 s only: bot31 made 4 events there, no burst
    # (target's 9 inbound events are all in P: bot30-t, bot31-t1/t2, dup-t and self-t at 50-59 s)
    assert account_report(warehouse, "target", as_of=T + 30 * SECOND, days=5).bot_share == 0.0
    # P = [T-5d+1min, T+1min): split-t, old-t, follower-t, human-t are left, none a burst actor's
    after = account_report(warehouse, "target", as_of=T + MINUTE, days=5)
    assert (after.bot_share, after.engagers, after.human_engagement_rate) == (0.0, 4, 4 / 14)


def test_bursts_in_minutes_cut_by_the_period(warehouse: Warehouse) -> None:
    """The burst test reads whole minutes from a rollup and the partial ones at P's edges from raw events."""
    minute = T - 2 * DAY
    events = [
        snapshot("s", T - 10 * DAY, "target", 10),
        like("b-t1", minute + 10 * SECOND, "bot", "target"),
        *(like(f"b-{i}", minute + 20 * SECOND + i * 100, "bot", "x") for i in range(30)),  # 20.0-22.9 s
        like("b-t2", minute + 50 * SECOND, "bot", "target"),
        like("h-t1", minute + 10 * SECOND, "human", "target"),
        like("h-t2", minute + 50 * SECOND, "human", "target"),
    ]
    insert(warehouse, events)
    insert(warehouse, events[5:9])  # a retried block: copies change nothing
    # the minute whole inside P: 32 events of bot, a burst
    assert account_report(warehouse, "target", as_of=T, days=5).bot_share == 2 / 4
    # P ends at 23.0 s: 31 of bot's events inside, a burst; at 22.9 s: 30, none
    assert account_report(warehouse, "target", as_of=minute + 23 * SECOND, days=5).bot_share == 1 / 2
    assert account_report(warehouse, "target", as_of=minute + 22_900, days=5).bot_share == 0.0
    # P starts at 20.0 s: 31 inside, a burst; at 20.001 s: 30, none
    assert account_report(warehouse, "target", as_of=minute + 20 * SECOND + DAY, days=1).bot_share == 1 / 2
    assert account_report(warehouse, "target", as_of=minute + 20_001 + DAY, days=1).bot_share == 0.0


HOSTILE_ACCOUNT = "o'brien\\x"
HOSTILE_ACTORS = ['quote"d', "'; DROP TABLE engagement_events; --", "🙂 ünï", "tab\tnew\nline", "back\\slash'"]


def test_unicode_and_quote_laden_ids(warehouse: Warehouse) -> None:
    events = [snapshot("s'1", T - DAY, HOSTILE_ACCOUNT, 4)]
    for n, actor in enumerate(HOSTILE_ACTORS):
        events.append(reply(f"c'{n}\\", T - HOUR, actor, HOSTILE_ACCOUNT, "post"))
        events.append(like(f'l"{n}', T - HOUR, actor, HOSTILE_ACCOUNT))
    events.append(reply("r'; --", T - HOUR + MINUTE, HOSTILE_ACCOUNT, HOSTILE_ACTORS[1], "c'1\\"))
    insert(warehouse, events)
    report = account_report(warehouse, HOSTILE_ACCOUNT, as_of=T)
    assert report.account_id == HOSTILE_ACCOUNT
    assert (report.followers, report.engagers, report.engagement_rate) == (4, 5, 5 / 4)
    assert (report.inbound_conversations, report.answered_24h, report.median_response_seconds) == (5, 1, 60.0)
    assert (report.outbound, report.responses_sent, report.reciprocal_circle) == (1, 1, 1)
    assert report.top_engagers == [TopEngager(actor, 4) for actor in sorted(HOSTILE_ACTORS)]
    assert account_report(warehouse, HOSTILE_ACTORS[1], as_of=T).outbound == 1
    assert warehouse.query("SELECT count() FROM engagement_events").rows == [(len(events),)]


def test_daily_rows_of_a_period_not_aligned_to_midnight(warehouse: Warehouse) -> None:
    noon = T + 12 * HOUR  # 2026-02-01T12:00Z; days=2: P = [2026-01-30T12:00Z, 2026-02-01T12:00Z)
    events = [
        snapshot("s", T - 3 * DAY, "sun", 10),
        like("x1", noon - 2 * DAY - 1, "u1", "sun"),  # just before P
        like("d1", noon - 2 * DAY, "u2", "sun"),  # P's first ms: day 01-30
        follow("f1", noon - 2 * DAY + HOUR, "v1", "sun"),  # 11 at the end of 01-30
        like("d2", T - DAY, "u1", "sun"),
        like("d3", T - DAY + 1, "u1", "sun"),
        reply("d4", T - 1, "u2", "sun", "post"),  # 01-31: u1, u2
        follow("f2", T - 1, "v1", "sun", "unfollow"),  # 10 at the end of 01-31
        follow("f3", T, "v3", "sun"),  # 11 at T
        mention("d5", noon - 1, "u3", "sun"),  # 02-01: u3
        like("x2", noon, "u4", "sun"),  # at T: outside
        follow("f4", noon, "v4", "sun"),  # at T: not counted
    ]
    insert(warehouse, events)
    report = account_report(warehouse, "sun", as_of=noon, days=2)
    assert report.daily == [
        Day("2026-01-30", 1, 11, 1 / 11),
        Day("2026-01-31", 2, 10, 2 / 10),
        Day("2026-02-01", 1, 11, 1 / 11),
    ]
    assert (report.followers, report.engagers, report.engagement_rate) == (11, 3, 3 / 11)
    # T one ms after midnight, one day: yesterday from its second ms, and today's first ms
    edge = account_report(warehouse, "sun", as_of=T + 1, days=1)
    assert edge.daily == [Day("2026-01-31", 2, 10, 2 / 10), Day("2026-02-01", 0, 11, 0.0)]
    # T at midnight, one day: one row
    assert account_report(warehouse, "sun", as_of=T, days=1).daily == [Day("2026-01-31", 2, 10, 2 / 10)]


def test_default_as_of_is_the_newest_event(warehouse: Warehouse) -> None:
    with pytest.raises(EmptyStore):
        account_report(warehouse, "acme")
    insert(warehouse, [like("e1", T - DAY, "u1", "acme"), follow("f1", T - 5, "u2", "other")])
    report = account_report(warehouse, "acme")
    assert (report.as_of, report.engagers) == (T - 4, 1)
    with pytest.raises(ValueError):
        account_report(warehouse, "acme", days=0)
    with pytest.raises(ValueError):
        account_report(warehouse, "acme", as_of=DAY, days=2)


def test_through_settings_with_their_weights(settings: Settings) -> None:
    with opened_store(settings, migrated=False) as warehouse:  # closed after: chDB opens a directory once
        insert(warehouse, [like("e1", T - DAY, "u1", "acme"), mention("e2", T - DAY, "u2", "acme")])
        direct = account_report(warehouse, "acme", as_of=T, weights=Weights(like=10, mention=1, reply=1))
    weighted = replace(settings, weight_like=10, weight_mention=1, weight_reply=1)
    via_settings = account_report(weighted, "acme", as_of=T)
    assert via_settings == direct
    assert via_settings.top_engagers == [TopEngager("u1", 10), TopEngager("u2", 1)]
