"""Multi-week data for the account report, holding every edge case of issue 5, reproducible from a seed.

:func:`report_events` returns the store's input in arrival order: realistic bulk from
:class:`~pipeline.generate.TrafficGenerator` over ``weeks`` weeks (accounts ``acct-…``, users ``user-…``, a
bursting ``bot-0000``; duplicates, self-engagement, the three ``ts`` forms) with hand-built scenarios mixed in
at random positions. The scenarios do not depend on the seed (only where they land in the stream does) and no
bulk event touches a scenario account, so tests can assert their exact values (for ``days`` = 28, the
default). They are placed relative to :func:`report_as_of`, which is the default ``as_of`` of the data (the
newest event is at ``as_of - 1``, every bulk event before ``as_of - 1 h``) and is aligned to neither a day
nor a minute, so the period touches 29 UTC days. The scenario accounts also meet each other:
:data:`RESPONDER`'s conversations come from :data:`BOT_TARGET`, :data:`LOYAL` and :data:`CIRCLE`, so its
responses are inbound replies of theirs.

The scenario accounts (``T`` = :func:`report_as_of`, default ``days`` = 28):

- :data:`NO_FOLLOWERS`: likes but no snapshot and no follow (a self-follow only): followers 0, engagement
  rates None (daily ones too); one like exactly at ``T - 28d`` (inside) and one 1 ms before (outside).
- :data:`NO_INBOUND`: 100 followers, two outbound events (no responses), no inbound: engagers 0, rate 0.0.
- :data:`RESPONDER` (``o'brien\\x``): conversations answered exactly 86,400 s later, 86,400.001 s later,
  25 h later, 5 s *before* (a negative first response), twice (the later reply first in the stream), never,
  by a self-reply only (not a response), and with the reply addressed to a third account; responses that
  arrive before their conversation in the stream; a duplicated conversation and response; a conversation
  1 ms before the period answered inside it; replies answering a like, an unknown id and another
  account's conversation (not responses).
- :data:`BOT_TARGET` (``quote"d``): one like from each test bot (the bots' other events go to bulk
  accounts): exactly ``burst_threshold`` in one aligned minute (:data:`BOT_AT`, not a burst), one more
  (:data:`BOT_OVER`, a burst), one more but across two aligned minutes within 60 s (:data:`BOT_SPLIT`), one
  more with one duplicate (:data:`BOT_DUPLICATE`), one more with one to itself (:data:`BOT_SELF`), one
  more before the period (:data:`BOT_BEFORE`); and humans with Unicode and quote-laden ids whose scores tie
  across the top-10 cut.
- :data:`LOYAL` (``用户_42``): fans engaging in weeks {0, 1, 3} and {0, 1, 2, 3} (loyal), {1, 2},
  {2, 3 (exactly at T - 7d)}, {before P, 0, 1}, {2 (1 ms before T - 7d)}, {0 (three times)}; self-likes
  every week.
- :data:`CIRCLE` (``🙂🚀``): reciprocal relationships inside 90 days (one side exactly at ``T - 90d``), one
  only older than 90 days, one with a side a day too old and one with a side 1 ms too old, one-way ones, one
  where the account only liked back, and one with :data:`RESPONDER` through its responses.
- :data:`CLAMP`: two snapshots at the same ms (the higher ``event_id``, 2, wins over 50), a follow at that
  same ms (not counted), five unfollows (followers clamp at 0), then four follows and a self-follow: 1 at T.
"""

from __future__ import annotations

import random
from typing import Any

from pipeline.decode import validate_event
from pipeline.events import Event
from pipeline.generate import TrafficGenerator, TrafficModel
from pipeline.report_model import DAY_MS, WEEK_MS

START_MS = TrafficModel.start_ms  # 2026-01-01T00:00:00Z: the bulk starts here
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
SECOND_MS = 1000

NO_FOLLOWERS = "edge-no-followers"
NO_INBOUND = "edge-no-inbound"
RESPONDER = "o'brien\\x"
BOT_TARGET = 'quote"d'
LOYAL = "用户_42"
CIRCLE = "🙂🚀"
CLAMP = "edge-clamp"
SCENARIO_ACCOUNTS = (NO_FOLLOWERS, NO_INBOUND, RESPONDER, BOT_TARGET, LOYAL, CIRCLE, CLAMP)

BOT_AT = "bot-at-threshold"
BOT_OVER = "bot-over-threshold"
BOT_SPLIT = "bot-split-minute"
BOT_DUPLICATE = "bot-duplicate"
BOT_SELF = "bot-self"
BOT_BEFORE = "bot-before-period"


def report_as_of(weeks: int = 5) -> int:
    """T of :func:`report_events` (epoch ms): ``weeks`` after :data:`START_MS`, less 11 h and 12,345 ms."""
    return START_MS + weeks * WEEK_MS - 11 * HOUR_MS - 12_345


def report_events(
    seed: int, weeks: int = 5, bulk_events: int = 30_000, burst_threshold: int = 30, days: int = 28
) -> list[Event]:
    """The scenarios (see the module docstring) and about ``bulk_events`` bulk events from ``weeks`` weeks of
    traffic, in arrival order. The same arguments give the same list. ``burst_threshold`` and ``days`` say
    where the bots' bursts and the period's boundaries are."""
    if weeks < 1 or days < 1 or burst_threshold < 1 or bulk_events < 0:
        raise ValueError("weeks, days and burst_threshold must be >= 1, bulk_events >= 0")
    end = report_as_of(weeks)
    scenario = _Scenario(end, days)
    scenario.build(burst_threshold)
    bulk = [validate_event(obj, None) for obj in _bulk(seed, end, bulk_events)]
    edge = [validate_event(obj, None) for obj in scenario.objects]
    return _interleave(random.Random(seed), bulk, edge)


def _bulk(seed: int, end: int, events: int) -> list[dict[str, Any]]:
    """About ``events`` events from :class:`TrafficGenerator`, in five-event seconds spread evenly at random
    over [START_MS, end - 2 h); every event (responses included) is before ``end - 1 h``."""
    model = TrafficModel(accounts=300, users=3000, bot_share=0.0002, seed=seed, events=None)
    gen = TrafficGenerator(model)
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    if events == 0:
        return out
    gen.snapshot_all(START_MS)
    seconds = max(1, (end - 2 * HOUR_MS - START_MS) // SECOND_MS)
    for second in sorted(rnd.sample(range(seconds), min(seconds, max(1, events // 5)))):
        now = START_MS + second * SECOND_MS
        gen.tick(now, 5)
        out.extend(gen.drain_until(now))
    out.extend(gen.drain_all())
    return out


def _interleave(rnd: random.Random, first: list[Event], second: list[Event]) -> list[Event]:
    """A random merge of two lists that keeps the order within each."""
    total = len(first) + len(second)
    slots = set(rnd.sample(range(total), len(second)))
    a, b = iter(first), iter(second)
    return [next(b) if i in slots else next(a) for i in range(total)]


class _Scenario:
    """Builds the scenarios' events (as the contract's JSON objects) relative to T = ``end``."""

    def __init__(self, end: int, days: int) -> None:
        self.end = end
        self.start = end - days * DAY_MS
        self.objects: list[dict[str, Any]] = []
        self.seq = 0

    def add(self, kind: str, ts: int, actor: str | None, account: str, event_id: str = "", **extra: Any) -> str:
        self.seq += 1
        obj: dict[str, Any] = {"event_id": event_id or f"rx-{self.seq:05d}", "type": kind, "ts": ts}
        obj["account_id"] = account
        if actor is not None:
            obj["actor_id"] = actor
        obj.update(extra)
        self.objects.append(obj)
        return str(obj["event_id"])

    def again(self, event_id: str) -> None:
        """Send an event a second time (same id, same content)."""
        self.objects.append(dict(next(o for o in self.objects if o["event_id"] == event_id)))

    def build(self, threshold: int) -> None:
        self.no_followers()
        self.no_inbound()
        self.responder()
        self.bots(threshold)
        self.top_engagers()
        self.loyal()
        self.circle()
        self.clamp()
        self.add("like", self.end - 1, "c-edge'", CIRCLE)  # the newest event: the default as_of is T

    def no_followers(self) -> None:
        a, start = NO_FOLLOWERS, self.start
        self.add("follow", start + DAY_MS, a, a)  # a self-follow: ignored
        self.add("like", start - 1, "nf-before", a)
        self.add("like", start, "nf-1", a)
        self.add("like", start + 3 * DAY_MS, "nf-2", a)
        self.add("mention", self.end - 2 * HOUR_MS, "nf-1", a)

    def no_inbound(self) -> None:
        a, end = NO_INBOUND, self.end
        self.add("followers", end - 10 * DAY_MS, None, a, followers=100)
        self.add("mention", end - 3 * DAY_MS, a, "acct-00001")
        self.add("reply", end - 3 * DAY_MS + 1, a, "nf-1", in_reply_to="rx-unknown")
        self.add("like", end - DAY_MS, a, a)  # self: ignored

    def responder(self) -> None:
        a, end, start = RESPONDER, self.end, self.start
        self.add("followers", end - 40 * DAY_MS, None, a, followers=12)

        def conversation(kind: str, actor: str, ts: int, *delays: int, first: bool = True, to: str = "") -> str:
            """A conversation and its responses (in the order given); responses first in the stream unless
            ``first``."""
            cid = f"rx-conv-{self.seq + 1:05d}"
            if first:
                self.add(kind, ts, actor, a, event_id=cid)
            for delay in delays:
                self.add("reply", ts + delay, a, to or actor, in_reply_to=cid)
            if not first:
                self.add(kind, ts, actor, a, event_id=cid)
            return cid

        conversation("mention", 'quote"d', end - 20 * DAY_MS, DAY_MS, first=False)  # exactly 86,400 s
        conversation("reply", "用户_42", end - 19 * DAY_MS, DAY_MS + 1)  # 1 ms late
        conversation("mention", "🙂🚀", end - 18 * DAY_MS, -5 * SECOND_MS, 60 * SECOND_MS)  # first is negative
        conversation("reply", "r-fan-x", end - 10 * DAY_MS, 600 * SECOND_MS, 120 * SECOND_MS, first=False)
        unanswered = conversation("mention", "r-fan-y", end - 5 * DAY_MS)
        self.add("reply", end - 5 * DAY_MS + MINUTE_MS, a, a, in_reply_to=unanswered)  # self: not a response
        self.add("mention", end - 3 * DAY_MS, a, a)  # self: ignored
        conversation("mention", "r-fan-z", start, 30 * SECOND_MS)  # the period's first ms
        conversation("mention", "r-fan-w", start - 1, HOUR_MS)  # before the period, answered inside it
        conversation("reply", "r-fan-v", end - 2 * DAY_MS, 25 * HOUR_MS)
        duplicated = conversation("mention", "r-fan-u", end - 4 * DAY_MS, 10 * SECOND_MS)
        self.again(duplicated)
        self.again(f"rx-{self.seq:05d}")  # its response
        conversation("mention", "r-fan-t", end - 6 * DAY_MS, 90 * SECOND_MS, to="r-someone-else")
        liked = self.add("like", end - 7 * DAY_MS, "r-fan-s", a)
        self.add("like", end - 7 * DAY_MS + 1, "r-fan-s", a)
        self.add("like", end - 7 * DAY_MS + 2, "r-fan-s", a)
        self.add("reply", end - 7 * DAY_MS + HOUR_MS, a, "r-fan-s", in_reply_to=liked)  # a like: not a response
        self.add("reply", end - 8 * DAY_MS, a, "r-fan-r", in_reply_to="rx-missing")  # unknown id
        self.add("mention", end - DAY_MS, a, "acct-00003")
        other = self.add("mention", end - 9 * DAY_MS, "r-fan-q", LOYAL)  # another account's conversation
        self.add("reply", end - 9 * DAY_MS + MINUTE_MS, a, "r-fan-q", in_reply_to=other)

    def bots(self, threshold: int) -> None:
        minute = self.end - 3 * DAY_MS
        minute -= minute % MINUTE_MS  # an aligned UTC minute inside the period

        def burst(bot: str, count: int, at: int, spacing: int = 1000) -> list[str]:
            ids = []
            for i in range(count):
                target = BOT_TARGET if i == 0 else f"acct-{i % 40 + 10:05d}"
                kind = ("like", "reply", "mention")[i % 3]
                ids.append(self.add(kind, at + i * spacing, bot, target))
            return ids

        burst(BOT_AT, threshold, minute + 10 * SECOND_MS, spacing=1000 * 40 // threshold)
        burst(BOT_OVER, threshold + 1, minute + MINUTE_MS, spacing=1000 * 59 // (threshold + 1))
        burst(BOT_SPLIT, threshold + 1, minute + 2 * MINUTE_MS + 40 * SECOND_MS, spacing=1000 * 40 // threshold)
        ids = burst(BOT_DUPLICATE, threshold, minute + 4 * MINUTE_MS, spacing=1000 * 50 // threshold)
        self.again(ids[-1])
        burst(BOT_SELF, threshold, minute + 5 * MINUTE_MS)
        self.add("like", minute + 5 * MINUTE_MS + 59 * SECOND_MS, BOT_SELF, BOT_SELF)
        before = self.start - 10 * MINUTE_MS
        burst(BOT_BEFORE, threshold + 1, before - before % MINUTE_MS)

    def top_engagers(self) -> None:
        a, end = BOT_TARGET, self.end
        self.add("followers", end - 30 * DAY_MS, None, a, followers=40)
        for i in range(3):
            self.add("follow", end - 20 * DAY_MS + i, f"t-follower-{i}", a)
        engagements = {  # actor: (likes, mentions, replies) -> scores 6, 5, 4, 3 x4, 2 x4, 1
            "bob": (0, 0, 2),
            "用户_7": (0, 1, 1),
            "carol": (0, 2, 0),
            "Zed": (0, 0, 1),
            "zoë": (0, 0, 1),
            "émile": (1, 1, 0),
            "Ωmega": (3, 0, 0),
            "dave": (0, 1, 0),
            "o'neil": (2, 0, 0),
            'say "hi"': (2, 0, 0),
            "🙂": (2, 0, 0),
            "eve": (1, 0, 0),
        }
        ts = end - 12 * DAY_MS
        for actor, counts in engagements.items():
            for kind, count in zip(("like", "mention", "reply"), counts, strict=True):
                for _ in range(count):
                    ts += HOUR_MS
                    self.add(kind, ts, actor, a)

    def loyal(self) -> None:
        a, end = LOYAL, self.end
        self.add("followers", end - 60 * DAY_MS, None, a, followers=10)

        def week(k: int) -> int:
            return end - 4 * WEEK_MS + k * WEEK_MS

        fans: dict[str, list[int]] = {
            "l-fan-a'": [week(0) + DAY_MS, week(1) + DAY_MS, week(3) + DAY_MS],
            'l-fan-"b"': [week(1) + 2 * DAY_MS, week(2) + 2 * DAY_MS],
            "l-fan-ç": [
                week(0) + HOUR_MS,
                week(1) + HOUR_MS,
                week(2) + HOUR_MS,
                week(3) + HOUR_MS,
                week(3) + 2 * HOUR_MS,
            ],
            "l-fan-d": [week(2) + 3 * DAY_MS, week(3)],
            "l-fan-e": [week(0) - DAY_MS, week(0) + 4 * DAY_MS, week(1) + 4 * DAY_MS],
            "l-fan-f": [week(3) - 1],
            "l-fan-g": [week(0), week(0) + DAY_MS, week(0) + 2 * DAY_MS],
        }
        kinds = ("like", "mention", "reply")
        for actor, times in fans.items():
            for i, ts in enumerate(times):
                self.add(kinds[i % 3], ts, actor, a)
        for k in range(4):
            self.add("like", week(k) + 5 * DAY_MS, a, a)  # self: ignored

    def circle(self) -> None:
        a, end = CIRCLE, self.end
        horizon = end - 90 * DAY_MS
        self.add("followers", end - 100 * DAY_MS, None, a, followers=150)
        self.add("mention", end - 10 * DAY_MS, a, "c-ü1")
        self.add("like", end - 5 * DAY_MS, "c-ü1", a)
        self.add("reply", end - 100 * DAY_MS, a, "c-old")  # only older than 90 days
        self.add("mention", end - 95 * DAY_MS, "c-old", a)
        self.add("mention", horizon - DAY_MS, a, "c-half")  # one side older than 90 days
        self.add("like", end - DAY_MS, "c-half", a)
        self.add("mention", end - 3 * DAY_MS, a, "c-one-way")
        self.add("mention", end - 4 * DAY_MS, "c-liked", a)
        self.add("like", end - 3 * DAY_MS, a, "c-liked")  # a like is not a reply/mention
        self.add("mention", horizon, a, "c-edge'")  # exactly at T - 90d; c-edge' answers at T - 1 (last event)
        self.add("reply", horizon - 1, a, "c-just-out")
        self.add("like", end - 6 * DAY_MS, "c-just-out", a)
        self.add("mention", end - 2 * DAY_MS, a, a)  # self: ignored

    def clamp(self) -> None:
        a, end = CLAMP, self.end
        snap = end - 25 * DAY_MS
        self.add("followers", snap, None, a, event_id="rx-clamp-snap-2", followers=2)
        self.add("followers", snap, None, a, event_id="rx-clamp-snap-1", followers=50)
        self.add("follow", snap, "cl-same-ms", a)  # at the snapshot's ms: already in it
        for i in range(5):
            self.add("unfollow", end - 19 * DAY_MS + i, f"cl-gone-{i}", a)
        for i in range(4):
            self.add("follow", end - DAY_MS + i, f"cl-new-{i}", a)
        self.add("follow", end - DAY_MS + 10, a, a)  # self: ignored
        for d in range(0, 28, 3):
            self.add("like", self.start + d * DAY_MS + HOUR_MS, "cl-fan", a)
