"""The windowed engagement aggregator: pure Python, no Kafka, no I/O beyond a key-value state store.

It turns valid events (already routed to the partition owning their account) into per-account tumbling
event-time windows and emits window rows:

- :meth:`Aggregator.apply_event` / :meth:`Aggregator.apply_response` change state and mark windows dirty;
  they never block and never raise on any valid event.
- :meth:`Aggregator.advance` moves a partition's event-time frontier and finalizes every window whose
  ``end + allowed_lateness`` it has passed; :meth:`Aggregator.flush` finalizes everything (end of replay).
- :meth:`Aggregator.end_batch` returns the rows to write (open windows that changed, as ``final=0``
  upserts, and windows that became final, as ``final=1``) and writes the touched states to the store.
  The caller writes the rows durably *before* it lets the source offsets be committed.
- With a :class:`~pipeline.drops.DropDetector`, every final window is observed by the drop detector, and
  :meth:`Aggregator.advance` also observes the windows the frontier made final for watched accounts that
  had no events in them (silence); :meth:`Aggregator.take_alerts` returns the alerts, which the caller
  writes durably with the rows.

Definitions are those of the README ("Windowed engagement"); :mod:`pipeline.reference` computes the same
rows from a whole event list and is the test oracle.
"""

from __future__ import annotations

import heapq
import operator
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from itertools import islice
from typing import Any, Final, NamedTuple, Protocol

from pipeline.account_state import AccountState, WindowCounts
from pipeline.drops import Alert, DropDetector, DropState
from pipeline.events import FOLLOW, FOLLOWERS, LIKE, MENTION, REPLY, UNFOLLOW, Event
from pipeline.followers import FOLLOW as LEDGER_FOLLOW
from pipeline.followers import SNAPSHOT as LEDGER_SNAPSHOT
from pipeline.followers import UNFOLLOW as LEDGER_UNFOLLOW
from pipeline.partitioning import AccountOwners
from pipeline.state_records import Generations, StateCorrupted

NO_FRONTIER: Final = -(2**62)


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """Window size, lateness and weights, all in milliseconds / points."""

    window_ms: int = 60_000
    lateness_ms: int = 300_000
    conversation_horizon_ms: int = 7 * 86_400_000
    weight_like: int = 1
    weight_mention: int = 2
    weight_reply: int = 3

    def window_start(self, ts_ms: int) -> int:
        return ts_ms - ts_ms % self.window_ms


class WindowRow(NamedTuple):
    """One row of ``engagement_windows`` (times in epoch ms; ``version`` orders upserts). A named tuple:
    one is built per upserted window, and a block of them transposes into columns with ``zip``."""

    account_id: str
    window_start: int
    window_end: int
    likes: int
    replies: int
    mentions: int
    engagers: int
    follows: int
    unfollows: int
    followers: int
    responses: int
    score: int
    engagement_rate: float | None
    final: int
    version: int

    def key(self) -> tuple[str, int]:
        return (self.account_id, self.window_start)

    def values(self) -> tuple[object, ...]:
        """The row without its version: what two runs over the same input must agree on."""
        return self[:-1]


class ResponseCandidate(NamedTuple):
    """A reply by ``responder`` to someone else, sent to the responder's partition to be matched against
    the inbound reply/mention it answers (``in_reply_to``). A tuple, as :class:`WindowRow`: one is built per
    reply on the hot path, and a dataclass's generated ``__init__`` (frozen: ``object.__setattr__`` per
    field) is interpreted Python even in the compiled build."""

    event_id: str
    responder: str
    in_reply_to: str
    ts_ms: int


def response_candidate(event: Event) -> ResponseCandidate | None:
    """The response candidate of a reply to someone else, or None.

    It is sent to the responder's partition as soon as the reply is read from its source topic, with the
    source's other output and before that source's frontier is announced: a candidate sent later (say,
    by the partition owning the replied-to account, after a re-key hop) could reach the responder after
    the announced frontiers let its window become final, and a response would be lost."""
    if event.type == REPLY and event.in_reply_to is not None and event.actor_id != event.account_id:
        return ResponseCandidate(event.event_id, event.actor_id, event.in_reply_to, event.ts_ms)
    return None


class Outcome(Enum):
    COUNTED = "counted"
    DUPLICATE = "duplicate"
    SELF = "self"
    LATE = "late"
    PENDING = "pending"  # a response waiting for what it answers
    UNMATCHED = "unmatched"  # answering a conversation older than the horizon, or matched past the lateness
    REPLAYED = "replayed"  # redelivered by Kafka after its effect was stored: skipped


class StateStore(Protocol):
    """Where account states live between batches (a Faust table in the worker, a dict in tests).

    ``put`` stores a state's main record with its new segment records (generation, value) and drops the
    segment records of the ``replaced`` generations (:class:`~pipeline.account_state.StoredRecords`);
    ``get_segment`` raises :class:`~pipeline.state_records.StateCorrupted` for a segment it does not hold.
    ``losses``: how many of its writes so far lost segment records it was given (a changelog write drops
    the records of partitions not owned at that moment); while it does not move, a state's segment
    records stored before are still held."""

    losses: int

    def get(self, account_id: str) -> bytes | None: ...

    def get_segment(self, account_id: str, generation: int) -> bytes: ...

    def has_segment(self, account_id: str, generation: int) -> bool: ...

    def put(
        self, account_id: str, value: bytes, segments: Sequence[tuple[int, bytes]] = (), replaced: Sequence[int] = ()
    ) -> None: ...

    def accounts(self) -> Iterable[str]: ...


class DictStore:
    """An in-memory :class:`StateStore`."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.segments: dict[tuple[str, int], bytes] = {}
        self.losses = 0

    def get(self, account_id: str) -> bytes | None:
        return self.data.get(account_id)

    def get_segment(self, account_id: str, generation: int) -> bytes:
        value = self.segments.get((account_id, generation))
        if value is None:
            raise StateCorrupted(f"the state of account {account_id!r} names segment {generation}, which is missing")
        return value

    def has_segment(self, account_id: str, generation: int) -> bool:
        return (account_id, generation) in self.segments

    def put(
        self, account_id: str, value: bytes, segments: Sequence[tuple[int, bytes]] = (), replaced: Sequence[int] = ()
    ) -> None:
        self.data[account_id] = value
        for generation in replaced:
            self.segments.pop((account_id, generation), None)
        for generation, segment in segments:
            self.segments[(account_id, generation)] = segment

    def accounts(self) -> Iterable[str]:
        return list(self.data)


class EndIndex:
    """Accounts by an end time (ms), popped in end order: a heap of the distinct ends and, per end, the
    accounts due then (one list slot per entry, not one tuple per entry). An account may be listed twice."""

    def __init__(self) -> None:
        self._ends: list[int] = []
        self._due: dict[int, list[str]] = {}

    def add(self, end: int, account_id: str) -> None:
        accounts = self._due.get(end)
        if accounts is None:
            accounts = self._due[end] = []
            heapq.heappush(self._ends, end)
        accounts.append(account_id)

    def pop_through(self, horizon: int) -> Iterable[tuple[int, list[str]]]:
        """``(end, accounts sorted)`` for every end at or before ``horizon``, earliest first, removed."""
        ends = self._ends
        while ends and ends[0] <= horizon:
            end = heapq.heappop(ends)
            yield end, sorted(self._due.pop(end, ()))


_new_tuple: Final = tuple.__new__
# int / int through Python's number protocol: correctly rounded for any size, as CPython divides. Compiled by
# mypyc, a typed `int / int` converts each side to a double first, which differs in the last bit above 2**53
# (a follower count that large is accepted); the compiled hot path must give the source's results.
_true_divide: Final[Callable[[int, int], float]] = operator.truediv
_EXACT_IN_A_DOUBLE: Final = 2**53  # every integer below it is a double exactly


def _engagement_rate(engagers: int, followers: int) -> float:
    """``engagers / followers`` exactly as CPython divides (correctly rounded). Below 2**53 both are doubles
    exactly, and dividing doubles is correctly rounded too: that path skips a Python-level call."""
    if engagers < _EXACT_IN_A_DOUBLE and followers < _EXACT_IN_A_DOUBLE:
        return engagers / followers
    return _true_divide(engagers, followers)


class VersionClock:
    """Strictly increasing row versions from wall-clock nanoseconds (later writes always win)."""

    def __init__(self, now_ns: Callable[[], int] = time.time_ns) -> None:
        self._now_ns = now_ns
        self._last = 0

    def next(self) -> int:
        self._last = max(self._now_ns(), self._last + 1)
        return self._last

    def run_of(self, count: int) -> int:
        """The first of ``count`` consecutive versions, all after every one given so far, from one reading
        of the clock (for rows stamped together: a reading per row cost more than the rest of a row)."""
        first = max(self._now_ns(), self._last + 1)
        self._last = first + max(count, 1) - 1
        return first


class Aggregator:
    """Per-account tumbling windows over the partitions this process owns. Not thread-safe."""

    def __init__(
        self,
        config: WindowConfig,
        store: StateStore,
        partition_of: Callable[[str], int],
        clock: VersionClock | None = None,
        upsert_interval_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        cache_accounts: int = 100_000,
        detector: DropDetector | None = None,
        watch: Collection[str] = (),
    ) -> None:
        self.config = config
        self.store = store
        self.partition_of = partition_of
        self.clock = clock or VersionClock()
        self.generations = Generations()  # of segment records (pipeline.account_state)
        self.upsert_interval_s = upsert_interval_s
        self._monotonic = monotonic
        # Upsert throttle: an open window is upserted at most once per interval. A window notes when it was
        # last upserted and whether a change of it waits (WindowCounts.upserted_at / waiting); this queue
        # holds the upserts of the last interval, oldest first, (time, account, start, window), so that a
        # waiting change is upserted when its interval ends. ``_waiting`` counts the windows that wait.
        # (No (account, start) keys: compiled, each use of such a key built a tuple; take_rows spent most
        # of its time there.)
        self._upserts: deque[tuple[float, str, int, WindowCounts]] = deque()
        self._waiting = 0
        # Live states, most recently used last (an LRU bounded by ``cache_accounts``); the accounts
        # touched since the last persist (written then), and those touched since the last take_rows.
        self._live: OrderedDict[str, AccountState] = OrderedDict()
        self._touched: dict[str, AccountState] = {}
        self._fresh: dict[str, AccountState] = {}
        # Touches are numbered in the order they made a state touched (its first change since it was
        # last stored): ``_touched`` holds touches ``_done`` to ``touch_position - 1``, oldest first.
        self._done = 0
        self.cache_accounts = cache_accounts
        # The finalization index, per partition: accounts by the ends of their open windows.
        self._ending: dict[int, EndIndex] = {}
        self._frontier: dict[int, int] = {}
        self._final_rows: list[WindowRow] = []
        self.unmatched_responses = 0
        # Drop detection: per partition, the accounts whose silence counts, by the end of their next
        # window (observed as silent once the frontier passes it without a final window for it).
        self.detector = detector
        self.watch = frozenset(watch)
        self._quiet: dict[int, EndIndex] = {}
        self._alerts: list[Alert] = []
        self.accounts_in_drop = 0  # owned accounts in a drop
        self.watched: dict[str, tuple[float, float, bool]] = {}  # watched account -> score, baseline, in drop

    # -- state access -----------------------------------------------------------------------------

    def _state(self, account_id: str) -> AccountState:
        """The state of ``account_id`` for changing: marked touched (persisted at the next
        :meth:`persist`) and fresh (its dirty windows collected at the next :meth:`take_rows`)."""
        state = self._fresh.get(account_id)
        if state is not None:
            return state
        state = self._touched.get(account_id)
        if state is None:
            state = self._live.get(account_id)
            if state is None:
                state = self._live[account_id] = self._load(account_id)
            else:
                self._live.move_to_end(account_id)
            self._touched[account_id] = state
        self._fresh[account_id] = state
        return state

    def _peek(self, account_id: str) -> AccountState:
        """The state of ``account_id`` for reading only: not marked touched (so not persisted again)."""
        return self._touched.get(account_id) or self._live.get(account_id) or self._load(account_id)

    def _load(self, account_id: str) -> AccountState:
        raw = self.store.get(account_id)
        if raw is None:
            return AccountState()
        return AccountState.loads(raw, lambda generation: self.store.get_segment(account_id, generation))

    def _window(self, account_id: str, state: AccountState, start: int, partition: int) -> WindowCounts:
        """The window of ``account_id`` (owned by ``partition``) starting at ``start``, opened if new;
        marked dirty."""
        window = state.windows.get(start)
        if window is None:
            window = WindowCounts()
            state.windows[start] = window
            self._index(partition, account_id, start + self.config.window_ms)
        state.dirty.add(start)
        return window

    def _is_late(self, state: AccountState, start: int, partition: int) -> bool:
        end = start + self.config.window_ms
        return end <= state.final_through or end + self.config.lateness_ms <= self._frontier.get(partition, NO_FRONTIER)

    # -- applying input ---------------------------------------------------------------------------

    def apply_event(self, event: Event, partition: int, origin: str = "", position: int = -1) -> Outcome:
        """Count one valid event of an account owned by ``partition``. Never raises, never blocks.

        ``origin`` and ``position`` say where the event was read (its source partition, and its
        :func:`~pipeline.account_state.input_position` there): an event at or before the last position
        whose effect the account's stored state holds is a replay and changes nothing (``REPLAYED``).
        Without them (``position`` -1) replays are recognized by event id in open windows only."""
        return self._apply_owned(event, partition, origin, position, self._frontier.get(partition, NO_FRONTIER))

    def _apply_owned(self, event: Event, partition: int, origin: str, position: int, frontier: int) -> Outcome:
        """:meth:`apply_event`, ``partition``'s frontier read by the caller (it does not move while events
        are applied: only :meth:`advance` and :meth:`flush` move it)."""
        account_id = event.account_id
        if event.actor_id == account_id:
            return Outcome.SELF
        state = self._fresh.get(account_id) or self._state(account_id)
        if position >= 0:
            if position <= state.applied.get(origin, -1):
                return Outcome.REPLAYED
            state.applying[origin] = position
        ts = event.ts_ms
        window_ms = self.config.window_ms
        start = ts - ts % window_ms
        end = start + window_ms
        if end <= state.final_through or end + self.config.lateness_ms <= frontier:
            return Outcome.LATE
        start_key: Any = start  # boxed once for both lookups (compiled, each use of an int key boxes it)
        window = state.windows.get(start_key)
        if window is None:
            window = self._window(account_id, state, start, partition)
        elif event.event_id in window.ids:
            return Outcome.DUPLICATE
        else:
            state.dirty.add(start_key)
        window.add_id(event.event_id)
        kind = event.type
        if kind == LIKE:
            window.likes += 1
            window.add_engager(event.actor_id)
        elif kind in (REPLY, MENTION):
            if kind == REPLY:
                window.replies += 1
            else:
                window.mentions += 1
            window.add_engager(event.actor_id)
            state.add_conversation(event.event_id, ts)
            if state.pending:
                self._match_pending(account_id, state, event.event_id, ts, partition)
        else:
            if kind == FOLLOW:
                window.follows += 1
                state.ledger.add((ts, LEDGER_FOLLOW, 0, event.event_id))
            elif kind == UNFOLLOW:
                window.unfollows += 1
                state.ledger.add((ts, LEDGER_UNFOLLOW, 0, event.event_id))
            elif kind == FOLLOWERS:
                assert event.followers is not None
                state.ledger.add((ts, LEDGER_SNAPSHOT, event.followers, event.event_id))
            # The count at every later open window's end may have changed: re-emit those rows.
            for other in state.windows:
                if other + window_ms > ts:
                    state.dirty.add(other)
        return Outcome.COUNTED

    def apply_message(
        self,
        events: Sequence[Event],
        source: tuple[Any, ...],
        origin: str,
        first: int,
        horizon: int,
        owner: Callable[[str], int],
        watermark: int,
        kinds: dict[str, int],
        candidates: list[ResponseCandidate],
        raw: list[Event],
        foreign: list[int],
        others: list[tuple[int, Outcome]],
    ) -> tuple[int, int]:
        """The per-event loop of one source message, read at ``source`` (topic, partition, offset), its
        partition's watermark so far ``watermark``: compiled with this module, it is most of a message's
        cost. Never raises (but what ``owner`` raises), never blocks; returns the new watermark and how
        many events were COUNTED. ``owner`` is called directly, without Python's call protocol, when it is
        an :class:`~pipeline.partitioning.AccountOwners`.

        Per event, in order: an event timed after ``horizon`` is skipped (its caller dead-letters it,
        ``future_ts``); the others move the watermark and are counted by type in ``kinds``; a reply's
        response candidate goes to ``candidates``; an event of an account that ``owner`` puts on another
        partition goes to ``foreign`` (its index, to forward); the rest are applied (:meth:`apply_event`,
        at ``first + index``). Counted and self events are appended to ``raw`` (their raw rows: the caller
        knows their source, the message's); every outcome but COUNTED goes to ``others`` with the event's
        index."""
        partition: int = source[1]
        frontier = self._frontier.get(partition, NO_FRONTIER)
        owners = owner if isinstance(owner, AccountOwners) else None
        counted = 0
        index = -1
        run_kind = ""  # kinds are counted by runs (a topic carries one type, or nearly)
        run = 0
        for event in events:
            index += 1
            ts = event.ts_ms
            if ts > horizon:
                continue
            if ts > watermark:
                watermark = ts
            kind = event.type
            if kind is not run_kind:  # the decoder gives each type's one shared string
                if run:
                    kinds[run_kind] = kinds.get(run_kind, 0) + run
                run_kind = kind
                run = 0
            run += 1
            if kind == REPLY:
                candidate = response_candidate(event)
                if candidate is not None:
                    candidates.append(candidate)
            home = owners.partition_of(event.account_id) if owners is not None else owner(event.account_id)
            if home != partition:
                foreign.append(index)
                continue
            outcome = self._apply_owned(event, partition, origin, first + index, frontier)
            if outcome is Outcome.COUNTED:
                counted += 1
                raw.append(event)
                continue
            if outcome is Outcome.SELF:
                raw.append(event)
            others.append((index, outcome))
        if run:
            kinds[run_kind] = kinds.get(run_kind, 0) + run
        return watermark, counted

    def apply_response(self, candidate: ResponseCandidate, partition: int) -> Outcome:
        """Match a reply by ``candidate.responder`` against the inbound conversation it answers."""
        state = self._state(candidate.responder)
        start = self.config.window_start(candidate.ts_ms)
        if self._is_late(state, start, partition):
            return Outcome.LATE
        existing = state.windows.get(start)
        if existing is not None and candidate.event_id in existing.response_ids:
            return Outcome.DUPLICATE
        answered_ts = state.conversations.get(candidate.in_reply_to)
        if answered_ts is None:
            waiting = state.pending.setdefault(candidate.in_reply_to, [])
            if not any(item[0] == candidate.event_id for item in waiting):
                waiting.append([candidate.event_id, candidate.ts_ms])
            return Outcome.PENDING
        if answered_ts < candidate.ts_ms - self.config.conversation_horizon_ms:
            return Outcome.UNMATCHED
        self._count_response(candidate.responder, state, candidate.event_id, start, partition)
        return Outcome.COUNTED

    def _count_response(self, account_id: str, state: AccountState, event_id: str, start: int, partition: int) -> None:
        window = self._window(account_id, state, start, partition)
        window.add_response(event_id)
        window.responses += 1

    def _match_pending(
        self, account_id: str, state: AccountState, answered_id: str, answered_ts: int, partition: int
    ) -> None:
        waiting = state.pending.pop(answered_id, None)
        if not waiting:
            return
        for response_id, ts_ms in waiting:
            if answered_ts < ts_ms - self.config.conversation_horizon_ms:
                continue
            start = self.config.window_start(ts_ms)
            if self._is_late(state, start, partition):  # final, or past the lateness: as apply_response would
                self.unmatched_responses += 1
                continue
            existing = state.windows.get(start)
            if existing is not None and response_id in existing.response_ids:
                continue
            self._count_response(account_id, state, response_id, start, partition)

    # -- time -------------------------------------------------------------------------------------

    def _index(self, partition: int, account_id: str, end: int) -> None:
        """Finalize ``account_id``'s window ending at ``end`` once the frontier passes ``end + lateness``."""
        ending = self._ending.get(partition)
        if ending is None:
            ending = self._ending[partition] = EndIndex()
        ending.add(end, account_id)

    def _finalize_through(self, partition: int, horizon: int) -> None:
        """Finalize ``partition``'s windows ending at or before ``horizon``, by end, then account."""
        ending = self._ending.get(partition)
        if ending is None:
            return
        window_ms = self.config.window_ms
        for end, accounts in ending.pop_through(horizon):
            for account_id in accounts:
                self._finalize(account_id, end - window_ms)

    def frontier(self, partition: int) -> int:
        return self._frontier.get(partition, NO_FRONTIER)

    def final_through(self, account_id: str) -> int:
        """The end of the account's last final window (read only: the state is not marked touched)."""
        return self._peek(account_id).final_through

    def advance(self, partition: int, frontier_ms: int) -> None:
        """Move ``partition``'s event-time frontier forward (never back) and finalize what it passed."""
        if frontier_ms <= self._frontier.get(partition, NO_FRONTIER):
            return
        self._frontier[partition] = frontier_ms
        horizon = frontier_ms - self.config.lateness_ms
        self._finalize_through(partition, horizon)
        if self.detector is not None:
            self._silence_through(partition, horizon)

    def flush(self) -> None:
        """Finalize every open window of every owned partition (end of a replay). The windows after them
        are not observed as silent: the input ended, not the accounts' activity."""
        for partition in list(self._ending):
            self._finalize_through(partition, 2**62)
            self._frontier[partition] = 2**62

    def _finalize(self, account_id: str, start: int) -> None:
        state = self._state(account_id)
        window = state.windows.pop(start, None)
        if window is None:
            return
        state.dirty.discard(start)
        if window.waiting:  # its final row below has the change; the queue's entry is skipped when it ends
            window.waiting = False
            self._waiting -= 1
        end = start + self.config.window_ms
        row = self._row(account_id, state, start, window, 1, self.clock.next())
        self._final_rows.append(row)
        state.final_through = max(state.final_through, end)
        self._prune(state)
        if self.detector is not None:
            if state.drop is None:
                state.drop = DropState()
            before = state.drop.in_drop
            self._alerts += self.detector.observe(account_id, state.drop, start, row.score)
            self._after_detection(account_id, state.drop, before, float(row.score))

    # -- drop detection ---------------------------------------------------------------------------

    def _silence_through(self, partition: int, horizon: int) -> None:
        """Observe as silent the windows ending at or before ``horizon`` of the watched accounts of
        ``partition`` that had no final window for them."""
        quiet = self._quiet.get(partition)
        if quiet is None or self.detector is None:
            return
        window_ms = self.config.window_ms
        until = horizon // window_ms * window_ms  # windows starting before it end at or before horizon
        for end, accounts in quiet.pop_through(horizon):
            for account_id in accounts:
                seen = self._peek(account_id).drop
                if seen is None or seen.last_end + window_ms != end or seen.last_end >= until:
                    continue  # a final window (or an earlier silence) observed it already
                state = self._state(account_id)  # the copy that is persisted (_peek may load a throwaway)
                drop = state.drop
                assert drop is not None
                before = drop.in_drop
                self._alerts += self.detector.silence(account_id, drop, until)
                # the windows observed as silent are final: an event for them is late, even after a restart
                state.final_through = max(state.final_through, until)
                self._after_detection(account_id, drop, before, 0.0)

    def _after_detection(self, account_id: str, drop: DropState, was_in_drop: bool, score: float) -> None:
        """Count drops, watch the silence of accounts whose silence counts, publish watched accounts."""
        assert self.detector is not None
        self.accounts_in_drop += drop.in_drop - was_in_drop
        if self.detector.watches_silence(drop):
            partition = self.partition_of(account_id)
            quiet = self._quiet.get(partition)
            if quiet is None:
                quiet = self._quiet[partition] = EndIndex()
            quiet.add(drop.last_end + self.config.window_ms, account_id)
        if account_id in self.watch:
            self.watched[account_id] = (score, self.detector.baseline(drop), drop.in_drop)

    def take_alerts(self) -> list[Alert]:
        """The alerts raised since the last call (write them with the rows taken at the same time)."""
        alerts, self._alerts = self._alerts, []
        return alerts

    def _prune(self, state: AccountState) -> None:
        through = state.final_through
        oldest_useful = through - self.config.conversation_horizon_ms
        state.prune_conversations(oldest_useful)
        if state.pending:
            window_ms = self.config.window_ms
            kept: dict[str, list[list[Any]]] = {}
            for answered_id, waiting in state.pending.items():
                alive = [w for w in waiting if self.config.window_start(w[1]) + window_ms > through]
                self.unmatched_responses += len(waiting) - len(alive)
                if alive:
                    kept[answered_id] = alive
            state.pending = kept
        state.ledger.fold(through)

    # -- ownership --------------------------------------------------------------------------------

    def assign(self, partitions: set[int]) -> None:
        """Own exactly ``partitions``: drop the rest, rebuild the finalization and silence indexes and the
        count of accounts in a drop from the store."""
        self._done += len(self._touched)
        self._touched.clear()
        self._fresh.clear()
        self._live.clear()
        self._upserts = deque(u for u in self._upserts if self.partition_of(u[1]) in partitions)
        self._waiting = sum(1 for u in self._upserts if u[3].waiting)  # a window has one entry at most
        self._ending = {p: EndIndex() for p in partitions}
        self._quiet = {p: EndIndex() for p in partitions}
        self._frontier = {p: f for p, f in self._frontier.items() if p in partitions}
        self.accounts_in_drop = 0
        self.watched = {a: v for a, v in self.watched.items() if self.partition_of(a) in partitions}
        for account_id in self.store.accounts():
            partition = self.partition_of(account_id)
            if partition not in partitions:
                continue
            raw = self.store.get(account_id)
            if raw is None:
                continue
            state = AccountState.loads(  # read for its windows and drop state only, then dropped
                raw, partial(self.store.get_segment, account_id), conversations_too=False
            )
            for start in state.windows:
                self._index(partition, account_id, start + self.config.window_ms)
            drop = state.drop
            if drop is not None and self.detector is not None:
                self.accounts_in_drop += drop.in_drop
                if self.detector.watches_silence(drop):
                    self._quiet[partition].add(drop.last_end + self.config.window_ms, account_id)

    # -- output -----------------------------------------------------------------------------------

    def _row(
        self, account_id: str, state: AccountState, start: int, w: WindowCounts, final: int, version: int
    ) -> WindowRow:
        c = self.config
        end = start + c.window_ms
        ledger = state.ledger
        followers = ledger.at(end) if ledger.entries else max(0, ledger.base)  # most accounts: no recent follows
        engagers = len(w.engagers)
        likes, replies, mentions = w.likes, w.replies, w.mentions
        fields = (
            account_id,
            start,
            end,
            likes,
            replies,
            mentions,
            engagers,
            w.follows,
            w.unfollows,
            followers,
            w.responses,
            c.weight_like * likes + c.weight_mention * mentions + c.weight_reply * replies,
            _engagement_rate(engagers, followers) if followers else None,
            final,
            version,
        )
        return _new_tuple(WindowRow, fields)  # WindowRow(*fields) without its Python-level __new__

    @property
    def touched_accounts(self) -> int:
        """Accounts changed since their state was last stored (their states are held until then)."""
        return len(self._touched)

    @property
    def touch_position(self) -> int:
        """The number of the next touch (see :attr:`stored_position`): every change made so far belongs
        to a touch before it."""
        return self._done + len(self._touched)

    @property
    def stored_position(self) -> int:
        """Every change of a touch numbered before this is in the store (or was dropped with its
        partition). A touch is an account's first change since its state was last stored, numbered in
        the order they came; a later change of the same state belongs to that touch until the state is
        stored again. So once ``stored_position`` reaches the :attr:`touch_position` read after some
        input was applied, every state that input changed is in the store."""
        return self._done

    @property
    def has_deferred_upserts(self) -> bool:
        """Whether changed open windows wait for their upsert interval (call :meth:`end_batch` later)."""
        return self._waiting > 0

    def end_batch(self) -> list[WindowRow]:
        """:meth:`take_rows`, then :meth:`persist`: everything since the last call, in one step."""
        rows = self.take_rows()
        self.persist()
        return rows

    def take_rows(self) -> list[WindowRow]:
        """Rows to write for everything since the last call (states stay in memory until :meth:`persist`).

        Open windows that changed come first (``final=0``; a window is upserted at most once every
        ``upsert_interval_s``, later changes wait for a later call), then windows that became final.
        """
        now = self._monotonic()
        interval = self.upsert_interval_s
        ready: list[tuple[str, AccountState, int, WindowCounts]] = []
        for account_id, state in self._fresh.items():
            dirty = state.dirty
            if dirty:
                windows = state.windows
                for start in dirty:
                    window = windows.get(start)
                    if window is None or window.waiting:  # (a final window's start leaves dirty with it)
                        continue
                    if window.upserted_at + interval > now:  # upserted within the interval: wait for its end
                        window.waiting = True
                        self._waiting += 1
                    else:
                        window.upserted_at = now
                        ready.append((account_id, state, start, window))
                dirty.clear()
        self._fresh.clear()
        upserts = self._upserts
        while upserts and upserts[0][0] + interval <= now:  # oldest first: the intervals that ended
            _, account_id, start, window = upserts.popleft()
            if window.waiting:
                window.waiting = False
                self._waiting -= 1
                state = self._peek(account_id)  # the window itself unless its state was evicted and read back
                current = state.windows.get(start)
                if current is not None and current.upserted_at != now:  # (not upserted above: read back, changed)
                    current.upserted_at = now
                    ready.append((account_id, state, start, current))
        rows: list[WindowRow] = []
        if ready:
            version = self.clock.run_of(len(ready))
            for account_id, state, start, window in ready:
                rows.append(self._row(account_id, state, start, window, 0, version))
                version += 1
                if interval > 0:
                    upserts.append((now, account_id, start, window))
        rows.extend(self._final_rows)
        self._final_rows = []
        return rows

    def persist(self, partitions: Collection[int] | None = None) -> None:
        """Write every state touched since the last call to the store (once each, however many events
        and row takes touched it), then bound the live cache. Call after the rows taken so far are
        durable: the store's contents are what a restart resumes from.

        With ``partitions``, states of accounts owned by other partitions are dropped instead (they were
        revoked: whatever changed them was not acknowledged and is replayed by their new owner)."""
        store = self._store
        for account_id, state in self._touched.items():
            if partitions is None or self.partition_of(account_id) in partitions:
                store(account_id, state)
        self._done += len(self._touched)
        # States changed since the last take_rows stay touched: their next changes skip _state().
        self._touched = dict(self._fresh)
        self._evict()

    def persist_oldest(self, count: int) -> None:
        """Write the states of the ``count`` oldest touches (see :attr:`stored_position`) to the store,
        as :meth:`persist` writes all of them: a persist in slices, so that no single one holds up the
        batches for long. Call, like :meth:`persist`, once the rows of everything applied so far are
        durable, or stage what it writes and commit it only then."""
        if count >= len(self._touched):
            self.persist()
            return
        touched = self._touched
        oldest = list(islice(touched.items(), count))
        store = self._store
        for account_id, state in oldest:
            store(account_id, state)
        fresh = self._fresh
        for account_id, state in oldest:  # off the front, in place: a copy of the rest cost O(touched)
            del touched[account_id]
            if account_id in fresh:  # changed since the last take_rows: its next changes skip _state()
                touched[account_id] = state  # a new touch, at the back
        self._done += count
        self._evict()

    def _store(self, account_id: str, state: AccountState) -> None:
        if state.applying:
            state.fold_applied()
        store = self.store
        if not state.needs_records():
            store.put(account_id, state.dumps())  # the common case: one record
            return
        losses = store.losses  # records lost since the state was stored: look them all up
        records = state.store_records(self.generations, partial(store.has_segment, account_id), state.checked != losses)
        state.checked = losses
        store.put(account_id, *records)

    def _evict(self) -> None:
        """Bound the live cache: evict the least recently used states. One still touched stays held by
        ``_touched`` (read from there first) until it is stored."""
        while len(self._live) > self.cache_accounts:
            self._live.popitem(last=False)
