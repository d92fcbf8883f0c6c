"""Synthetic engagement traffic that looks like a real platform, reproducible from a seed.

The model:
- accounts with power-law (Pareto) follower counts; engagement propensity *falls* with audience size and
  varies by account, so the top accounts by followers are not the top accounts by engagement rate;
- every account has a loyal core of fans who come back, plus casual engagers from a large user pool;
- some accounts never answer; the others answer a share of inbound replies/mentions after a delay;
- a few bot users burst (dozens of likes to random accounts within one minute);
- follows and unfollows, a follower snapshot per account at the start and periodically;
- realistic dirt: duplicates (the same event re-sent), out-of-order arrival (bounded by ``max_delay_s``,
  well inside the allowed lateness), self-engagement, Unicode ids, and the three ``ts`` forms.

:func:`generate` yields event objects (the contract's JSON) in arrival order for simulated time.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

UNICODE_NAMES = ["café_über", "用户_42", "o'brien\\x", 'quote"d', "emoji_🙂🚀", "ñandú", "Ωmega", "тест"]


@dataclass(frozen=True)
class TrafficModel:
    accounts: int = 2000
    users: int = 50_000
    events_per_second: float = 200.0
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    seconds: float | None = None  # simulated duration; None = until ``events`` are produced
    events: int | None = 50_000
    bot_share: float = 0.002
    silent_account_share: float = 0.3
    duplicate_share: float = 0.02
    self_share: float = 0.01
    max_delay_s: float = 30.0
    seed: int = 7
    drain_tail: bool = True  # at the end, emit what is still scheduled (future responses); off for live traffic


@dataclass
class _Account:
    account_id: str
    followers: int
    propensity: float
    answers: float
    fans: list[str]


def _ts_form(ms: int, rnd: random.Random) -> int | str:
    roll = rnd.random()
    if roll < 0.6:
        return ms
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if roll < 0.85:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    offset = timedelta(hours=rnd.choice([-8, -5, 1, 2, 5]), minutes=rnd.choice([0, 30]))
    local = dt.astimezone(timezone(offset))
    return local.isoformat(timespec="milliseconds")


class TrafficGenerator:
    """Stateful generator behind :func:`generate`."""

    def __init__(self, model: TrafficModel) -> None:
        self.model = model
        self.rnd = random.Random(model.seed)
        rnd = self.rnd
        self.users = [f"user-{i:06d}" for i in range(model.users)]
        self.bots = [f"bot-{i:04d}" for i in range(max(1, int(model.users * model.bot_share)))]
        self.accounts: list[_Account] = []
        for i in range(model.accounts):
            name = f"acct-{i:05d}" if i >= len(UNICODE_NAMES) else f"acct-{UNICODE_NAMES[i]}"
            followers = int(min(5_000_000, 20 * rnd.paretovariate(1.1)))
            propensity = rnd.lognormvariate(0, 0.8) / math.sqrt(max(followers, 1))
            answers = 0.0 if rnd.random() < model.silent_account_share else rnd.uniform(0.1, 0.9)
            fans = rnd.sample(self.users, k=min(len(self.users), 3 + int(math.sqrt(followers) / 4)))
            self.accounts.append(_Account(name, followers, propensity, answers, fans))
        weights = [a.propensity * a.followers for a in self.accounts]
        total = sum(weights)
        self.cumulative: list[float] = []
        acc = 0.0
        for w in weights:
            acc += w / total
            self.cumulative.append(acc)
        self.seq = 0
        self.heap: list[tuple[float, int, dict[str, Any]]] = []

    def _id(self) -> str:
        self.seq += 1
        return f"ev-{self.model.seed}-{self.seq:09d}"

    def _pick_account(self) -> _Account:
        import bisect

        index = bisect.bisect_left(self.cumulative, self.rnd.random())
        return self.accounts[min(index, len(self.accounts) - 1)]

    def _push(self, ms: int, obj: dict[str, Any]) -> None:
        arrival = ms + self.rnd.uniform(0, self.model.max_delay_s * 1000)
        heapq.heappush(self.heap, (arrival, self.seq, obj))
        if self.rnd.random() < self.model.duplicate_share:
            again = ms + self.rnd.uniform(0, self.model.max_delay_s * 1000)
            heapq.heappush(self.heap, (again, self.seq + 1_000_000_000, dict(obj)))

    def _event(self, kind: str, ms: int, actor: str | None, account: str, **extra: Any) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "event_id": self._id(),
            "type": kind,
            "ts": _ts_form(ms, self.rnd),
            "account_id": account,
        }
        if actor is not None:
            obj["actor_id"] = actor
        obj.update(extra)
        return obj

    def snapshot_all(self, ms: int) -> None:
        for account in self.accounts:
            self._push(ms, self._event("followers", ms, None, account.account_id, followers=account.followers))

    def tick(self, second_start_ms: int, count: int) -> None:
        """Generate ``count`` events with event times inside one simulated second."""
        rnd = self.rnd
        for _ in range(count):
            ms = second_start_ms + rnd.randrange(1000)
            account = self._pick_account()
            roll = rnd.random()
            if roll < 0.04:
                kind = "follow" if rnd.random() < 0.7 else "unfollow"
                account.followers += 1 if kind == "follow" else -1
                self._push(ms, self._event(kind, ms, rnd.choice(self.users), account.account_id))
                continue
            if roll < 0.04 + self.model.self_share:
                actor = account.account_id
            elif rnd.random() < 0.6:
                actor = rnd.choice(account.fans)
            else:
                actor = rnd.choice(self.users)
            kind = rnd.choices(["like", "reply", "mention"], weights=[70, 15, 15])[0]
            extra: dict[str, Any] = {"post_id": f"post-{account.account_id}-{rnd.randrange(50)}"}
            event = self._event(kind, ms, actor, account.account_id, **extra)
            self._push(ms, event)
            if kind in ("reply", "mention") and actor != account.account_id and rnd.random() < account.answers:
                delay = min(rnd.lognormvariate(math.log(120_000), 1.0), 3_600_000)
                reply_ms = ms + int(delay)
                answer = self._event("reply", reply_ms, account.account_id, actor, in_reply_to=event["event_id"])
                heapq.heappush(self.heap, (reply_ms + rnd.uniform(0, self.model.max_delay_s * 1000), self.seq, answer))
        if rnd.random() < self.model.bot_share * 50:
            bot = rnd.choice(self.bots)
            for _ in range(rnd.randint(35, 70)):
                ms = second_start_ms + rnd.randrange(1000)
                target = rnd.choice(self.accounts)
                self._push(ms, self._event("like", ms, bot, target.account_id))
        if rnd.random() < 0.01:
            account = rnd.choice(self.accounts)
            self._push(
                second_start_ms,
                self._event(
                    "followers", second_start_ms, None, account.account_id, followers=max(0, account.followers)
                ),
            )

    def drain_until(self, arrival_ms: float) -> Iterator[dict[str, Any]]:
        while self.heap and self.heap[0][0] <= arrival_ms:
            yield heapq.heappop(self.heap)[2]

    def drain_all(self) -> Iterator[dict[str, Any]]:
        while self.heap:
            yield heapq.heappop(self.heap)[2]


def generate(model: TrafficModel) -> Iterator[dict[str, Any]]:
    """Events in arrival order for simulated time from ``model.start_ms`` (see the module docstring).

    Stops after ``model.events`` events (if set) or ``model.seconds`` simulated seconds.
    """
    gen = TrafficGenerator(model)
    gen.snapshot_all(model.start_ms)
    produced = 0
    second = 0
    carry = 0.0
    while True:
        if model.seconds is not None and second >= model.seconds:
            break
        if model.events is not None and produced >= model.events:
            return
        carry += model.events_per_second
        count = int(carry)
        carry -= count
        now_ms = model.start_ms + second * 1000
        gen.tick(now_ms, count)
        for obj in gen.drain_until(now_ms):
            yield obj
            produced += 1
            if model.events is not None and produced >= model.events:
                return
        second += 1
    if not model.drain_tail:
        return
    for obj in gen.drain_all():
        yield obj
        produced += 1
        if model.events is not None and produced >= model.events:
            return


_BAD_LINES: list[bytes] = [
    b'{"event_id": "bad-1", "type": "like", "ts": 1767225600000, "actor_id": "u", "account_id"',  # truncated
    b'{"event_id": "bad-2", "type": "like", "ts": "2026-01-01T00:00:00", "actor_id": "u", "account_id": "a"}',
    b'{"event_id": "bad-3", "type": "poke", "ts": 1767225600000, "actor_id": "u", "account_id": "a"}',
    b'{"event_id": "bad-4", "type": "followers", "ts": 1767225600000, "account_id": "a", "followers": -5}',
    b'{"event_id": 5, "type": "like", "ts": 1767225600000, "actor_id": "u", "account_id": "a"}',
    b'{"event_id": "bad-6", "type": "like", "ts": 1767225600000, "actor_id": "", "account_id": "a"}',
    b'["not an event"]',
    b'\xff\xfe{"event_id": "bad-8"}',
    b'{"event_id": "bad-9", "type": "like", "ts": NaN, "actor_id": "u", "account_id": "a"}',
]


def lines(model: TrafficModel, invalid_share: float = 0.0) -> Iterator[bytes]:
    """:func:`generate` as JSON lines, with ``invalid_share`` of extra malformed lines mixed in."""
    import orjson

    rnd = random.Random(model.seed + 1)
    for obj in generate(model):
        if invalid_share and rnd.random() < invalid_share:
            yield rnd.choice(_BAD_LINES)
        yield orjson.dumps(obj)


def paced(stream: Iterator[bytes], rate: float, halt: Any = None, counter: list[int] | None = None) -> Iterator[bytes]:
    """Hold lines back so that about ``rate`` pass per wall-clock second; stops early when ``halt`` is set."""
    import time

    began = time.monotonic()
    for count, line in enumerate(stream, start=1):
        if halt is not None and halt.is_set():
            return
        if counter is not None:
            counter[0] = count
        if count % 100 == 0:
            ahead = count / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
        yield line
