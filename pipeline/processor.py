"""One batch of Kafka messages through the pipeline: decode → route → aggregate → write → persist state.

:meth:`BatchProcessor.process` is the whole data path, in the order that keeps results exact under
at-least-once delivery:

1. decode and validate every message; bad input becomes dead letters (never an exception), unless so
   much of it is bad that the dead-letter brake trips (:mod:`pipeline.brake`): then the batch stops there;
2. events of accounts owned by another partition, and responses, are re-keyed to the owner's partition;
3. the aggregator counts events, moves the event-time frontier and finalizes windows; the drop detector
   observes every final window (and the silent ones) and raises alerts (:mod:`pipeline.drops`);
4. raw events, window rows and alerts are inserted into ClickHouse (retried until durable), while dead
   letters, re-keyed messages and alerts are produced and acknowledged by Kafka;
5. only when all of that is done are the account states written to the Faust table (changelog), once
   per touched account — at the end of the batch, or for several batches at once (the worker calls
   :meth:`BatchProcessor.persist`), or under load in slices of the oldest touched states, staged at the
   end of a batch and committed once its rows are durable (:meth:`BatchProcessor.slices_committed`), or
   early once more accounts are touched than the live cache holds;
6. the batches are acknowledged once the changelog has every state they changed, and Faust commits their
   offsets.

A large batch runs 1-4 in chunks, pipelined: a chunk's inserts run on the warehouse thread while the next
chunk is decoded and aggregated. A crash anywhere before 6 replays the batches from their committed
offsets: the same rows are written again and absorbed by ReplacingMergeTree, and an event whose effect
an account's stored state already holds is skipped by its position (``docs/DESIGN.md``). The method
blocks (awaits) while ClickHouse is down, pausing consumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Coroutine, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

import orjson

from pipeline import metrics
from pipeline.account_state import MAX_POSITIONED_OFFSET, input_position
from pipeline.aggregator import (
    NO_FRONTIER,
    Aggregator,
    Outcome,
    ResponseCandidate,
    WindowConfig,
)
from pipeline.brake import DeadLetterBrake
from pipeline.collector import ChunkCollector
from pipeline.deadletter import DeadLetter
from pipeline.decode import InvalidEvent, decode_message, encode_element, validate_event
from pipeline.drops import FIRING, Alert, DropConfig, DropDetector
from pipeline.events import (
    ALERTS_TOPIC,
    DEAD_LETTER_TOPIC,
    MAX_EVENT_ID_CHARS,
    MAX_ID_CHARS,
    MAX_TS_MS,
    REKEY_TOPIC,
    SOURCE_TOPICS,
    Event,
    Reason,
    Rejection,
)
from pipeline.settings import Settings
from pipeline.sink import (
    ALERTS_TABLE,
    EVENTS_TABLE,
    WINDOWS_TABLE,
    PendingWrite,
    SourcedEvents,
    WarehouseWriter,
    alert_columns,
    window_columns,
)
from pipeline.state_records import (
    CHUNK_BYTES,
    Generations,
    Record,
    StateCorrupted,
    assemble,
    is_chunk_key,
    layout,
    orphans,
    parse_chunk_key,
    segment_key,
)

# How old a partition's highwater may be for the partition to count as caught up (see _caught_up).
HIGHWATER_MAX_AGE_MS = 2000
LATE_LOG_INTERVAL_S = 10.0
# Under load, the states are persisted in this many slices per ENGAGEMENT_PERSIST_INTERVAL_SECONDS, one
# at the end of a batch (see BatchProcessor.process): each stores the oldest touched states.
PERSIST_SLICES = 5
_TS_MS = itemgetter(Event._fields.index("ts_ms"))  # an event's time, read in C
CANDIDATES_PER_MESSAGE = 1000  # response candidates per re-key message (~100 bytes each: ~100 KB at most)

log = logging.getLogger(__name__)


class SourceMessage(Protocol):
    """What the processor reads of one consumed Kafka message. Faust's own message objects qualify: the
    worker hands them over as they are, instead of copying each (~0.8 µs a message); and so does
    :class:`Message`."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed Kafka message, as tests and tools build them (a :class:`SourceMessage`)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


class Outbox(Protocol):
    """Produces to Kafka. ``send`` returns an awaitable that completes when the broker acknowledged.

    ``partition`` None means the default (murmur2) partitioner on ``key``."""

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> Awaitable[Any]: ...


# Receives the phases of a write, each a list of (key, value or None to delete, partition) in the order they
# must reach the changelog: stores them all locally, starts sending them to the changelog (a phase once the
# one before is acknowledged) and returns what completes once the changelog has them all; see StagedStore.
ChangelogWriter = Callable[[list[list[Record]]], Awaitable[Awaitable[object]]]


# A state above this is logged (once per account): it is stored in chunks (pipeline.state_records), but
# rewritten whole every time it changes, and serializing it holds up the worker's batches.
LARGE_STATE_BYTES = 4 * 1024 * 1024


class StagedStore:
    """A :class:`~pipeline.aggregator.StateStore` over a table that holds writes until :meth:`commit`.

    The aggregator writes states at the end of its batch; they reach the table (and its changelog) only
    when the processor commits them, after ClickHouse has the rows. A state is laid out as one record or,
    when large, as chunks (:mod:`pipeline.state_records`), with the segment records of its conversations
    (:mod:`pipeline.account_state`) that ``put`` was given. With ``changelog``, :meth:`commit` hands all
    records of the batch to it at once, in phases, each record with its account's partition from
    ``partition_of``; without, it applies them to ``table`` one by one. ``contents``: the table's records
    as a plain mapping, read instead of ``table`` (Faust's table runs hooks on every read: 0.7 µs, against
    0.1 µs for its memory store's dict). ``settled``: whether the table is whole, i.e. no recovery is
    writing into it (chunks are only taken for orphans then: in the middle of a recovery, a write's
    chunks may be in the table before the record naming them).
    """

    def __init__(
        self,
        table: Any,
        changelog: ChangelogWriter | None = None,
        partition_of: Callable[[str], int] = lambda account_id: 0,
        chunk_bytes: int = CHUNK_BYTES,
        contents: Mapping[bytes, bytes] | None = None,
        settled: Callable[[], bool] = lambda: True,
    ) -> None:
        self.table = table
        self.contents: Mapping[bytes, bytes] = table if contents is None else contents
        self.changelog = changelog
        self.partition_of = partition_of
        self.chunk_bytes = chunk_bytes
        self.settled = settled
        self.staged: dict[str, bytes] = {}
        self.staged_segments: dict[str, dict[int, bytes]] = {}  # account -> new segment records
        self.staged_replaced: dict[str, set[int]] = {}  # account -> stored segment records to delete
        self.generations = Generations()
        self.losses = 0  # commits whose changelog write dropped segment records (StateStore.losses)
        # Segment keys whose stored value is not the one last written to them: a write that dropped its
        # records rewrote the key of an orphan a write cut short had left (a delta takes the generation
        # after its window's or journal's last one). Not "held" (has_segment) until written again.
        self._stale: set[bytes] = set()
        self._sweep: frozenset[int] | None = None  # partitions whose orphans to look for at the next commit
        self._large: set[str] = set()  # accounts whose large state was logged

    def _watch_sizes(self, staged: dict[str, bytes]) -> None:
        largest = max(map(len, staged.values()))
        metrics.ACCOUNT_STATE_LARGEST_BYTES.set(largest)
        if largest <= LARGE_STATE_BYTES:
            return
        for account_id, value in staged.items():
            if len(value) > LARGE_STATE_BYTES and account_id not in self._large:
                self._large.add(account_id)
                log.warning(
                    "the state of account %r is %d bytes: it is rewritten whole every time it changes, which "
                    "holds up the worker's batches (docs/DESIGN.md, Not promised)",
                    account_id,
                    len(value),
                )

    def _stored(self, key: bytes) -> bytes | None:
        value = self.contents.get(key)
        return bytes(value) if value is not None else None

    def get(self, account_id: str) -> bytes | None:
        """The account's serialized state: staged, else stored (assembled from its chunks). Raises
        :class:`~pipeline.state_records.StateCorrupted` when a chunk its record names is missing."""
        staged = self.staged.get(account_id)
        if staged is not None:
            return staged
        key = account_id.encode("utf-8")
        value = self._stored(key)
        return assemble(key, value, self._stored) if value is not None else None

    def get_segment(self, account_id: str, generation: int) -> bytes:
        """A segment record of the account's conversations: staged, else stored. Raises
        :class:`~pipeline.state_records.StateCorrupted` when it is neither."""
        staged = self.staged_segments.get(account_id)
        value = staged.get(generation) if staged else None
        if value is None:
            value = self._stored(segment_key(generation, account_id.encode("utf-8")))
        if value is None:
            raise StateCorrupted(f"the state of account {account_id!r} names segment {generation}, which is missing")
        return value

    def has_segment(self, account_id: str, generation: int) -> bool:
        """Whether the segment record is staged or stored."""
        staged = self.staged_segments.get(account_id)
        if staged and generation in staged:
            return True
        key = segment_key(generation, account_id.encode("utf-8"))
        return key in self.contents and not (self._stale and key in self._stale)

    def put(
        self, account_id: str, value: bytes, segments: Sequence[tuple[int, bytes]] = (), replaced: Sequence[int] = ()
    ) -> None:
        self.staged[account_id] = value
        if not segments and not replaced:
            return
        written = self.staged_segments.setdefault(account_id, {})
        for generation in replaced:
            if written.pop(generation, None) is None:  # a record stored: delete it; one only staged: drop it
                self.staged_replaced.setdefault(account_id, set()).add(generation)
        written.update(segments)

    def keep(self, wanted: Callable[[str], bool]) -> None:
        """Drop the staged changes of accounts that are not ``wanted``."""
        self.staged = {a: v for a, v in self.staged.items() if wanted(a)}
        self.staged_segments = {a: v for a, v in self.staged_segments.items() if wanted(a)}
        self.staged_replaced = {a: v for a, v in self.staged_replaced.items() if wanted(a)}

    def accounts(self) -> Iterable[str]:
        stored = [k for k in list(self.contents) if not is_chunk_key(k)]
        keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in stored]
        return [*keys, *[k for k in self.staged if k.encode("utf-8") not in self.contents]]

    def sweep(self, partitions: Collection[int]) -> None:
        """Delete, with the next :meth:`commit` made while the table is settled, the chunks of
        ``partitions``' accounts that no main record names (a write cut short left them). Call on an
        assignment."""
        self._sweep = frozenset(partitions)

    def _orphans(self) -> list[Record]:
        """Deletions of the orphaned chunks of the partitions to sweep, if the table is settled now."""
        if self._sweep is None or not self.settled():
            return []
        partitions, self._sweep = self._sweep, None
        owner = self.partition_of
        deletions: list[Record] = []
        for key in orphans(list(self.contents), self._stored):
            partition = owner(parse_chunk_key(key)[2].decode("utf-8"))
            if partition in partitions:
                deletions.append((key, None, partition))
        if deletions:
            log.info("deleting %d chunks of account states left by a write cut short", len(deletions))
        return deletions

    async def commit(self) -> Awaitable[object]:
        """Hand every staged change to the table, laid out as records (and the deletion of orphaned chunks,
        see :meth:`sweep`); returns what completes once its changelog has them. Publishes the largest
        state's size (``engagement_account_state_largest_bytes``) and logs, once per account, a state
        above ``LARGE_STATE_BYTES``. Counts in ``losses`` a write whose changelog dropped any of its new
        segment records, or stored other bytes under one's key (the states naming them write them again at
        their next store)."""
        staged, self.staged = self.staged, {}
        if staged:
            self._watch_sizes(staged)
        owner = self.partition_of
        segments, self.staged_segments = self.staged_segments, {}
        replaced, self.staged_replaced = self.staged_replaced, {}
        new_segments = [
            (segment_key(g, a.encode("utf-8")), value, owner(a))
            for a, written in segments.items()
            for g, value in written.items()
        ]
        phases = layout(
            [(a.encode("utf-8"), value, owner(a)) for a, value in staged.items()],
            self.contents,
            self.generations,
            self.chunk_bytes,
            before=new_segments,
            after=[(segment_key(g, a.encode("utf-8")), None, owner(a)) for a, gone in replaced.items() for g in gone],
        )
        orphaned = self._orphans()  # before this write: none of its chunks is taken for one
        if orphaned:  # named by nothing: deleted with the last phase, in any order
            # ...but a key this write stores again is not deleted after it: a window's delta record takes
            # the generation after its last one, which a write cut short may have left as an orphan.
            rewritten = {key for phase in phases for key, value, _ in phase if value is not None}
            orphaned = [record for record in orphaned if record[0] not in rewritten]
        if orphaned:
            phases = [*phases[:-1], phases[-1] + orphaned] if phases else [orphaned]
        if self.changelog is not None:
            done = await self.changelog(phases)
            contents = self.contents  # the write applied what it kept: were segment records dropped?
            lost = False
            for key, written, _ in new_segments:
                held = contents.get(key)
                if held == written:
                    if self._stale:
                        self._stale.discard(key)
                    continue
                lost = True
                if held is not None:  # an orphan's value under the key: not what the state names
                    self._stale.add(key)
            if lost:
                self.losses += 1
            return done
        for key, value, _ in (record for phase in phases for record in phase):
            if value is None:
                with contextlib.suppress(KeyError):
                    del self.table[key]
            else:
                self.table[key] = value
        return asyncio.gather()  # already complete


@dataclass
class Progress:
    """Per topic-partition position and event-time watermark, for the frontier and for lag metrics.

    ``upstream[p][q]`` is the latest source frontier that source partition ``q`` announced on re-key
    partition ``p`` (``None``: q has no events at all), see :meth:`BatchProcessor.frontier`.
    """

    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    watermark: dict[tuple[str, int], int] = field(default_factory=dict)
    upstream: dict[int, dict[int, int | None]] = field(default_factory=dict)


class BatchProcessor:
    """Runs batches through the pipeline (see the module docstring). One instance per worker."""

    def __init__(
        self,
        settings: Settings,
        store: StagedStore,
        writer: WarehouseWriter,
        outbox: Outbox,
        partition_of: Callable[[str], int],
        highwater: Callable[[str, int], int | None],
        committed: Callable[[str, int], int | None] = lambda topic, partition: None,
        fetched_at: Callable[[str, int], int | None] = lambda topic, partition: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._monotonic = monotonic  # when persist slices are due (see process)
        self.store = store
        self.writer = writer
        self.outbox = outbox
        self.partition_of = partition_of
        self.highwater = highwater
        self.committed = committed
        self.fetched_at = fetched_at
        self.config = WindowConfig(
            window_ms=settings.window_seconds * 1000,
            lateness_ms=settings.allowed_lateness_seconds * 1000,
            conversation_horizon_ms=settings.conversation_horizon_seconds * 1000,
            weight_like=settings.weight_like,
            weight_mention=settings.weight_mention,
            weight_reply=settings.weight_reply,
        )
        self.aggregator = Aggregator(
            self.config,
            store,
            partition_of,
            upsert_interval_s=settings.upsert_interval_seconds,
            detector=DropDetector(DropConfig.of(settings)),
            watch=settings.drop_watch_accounts,
        )
        # The garbage collector: paused through each chunk, its survivors frozen, swept now and then.
        self.collector = ChunkCollector(settings.gc_sweep_seconds, settings.gc_idle_sweep_seconds, monotonic)
        self.progress = Progress()
        self.brake = DeadLetterBrake(settings.dead_letter_brake_share, settings.dead_letter_brake_messages)
        self.lock = asyncio.Lock()
        self.owned: frozenset[int] = frozenset()
        self._generation: int | None = None  # the consumer generation of the assignment owned
        self.source_kinds = {settings.topic(t): t for t in SOURCE_TOPICS}
        self.rekey_topic = settings.topic(REKEY_TOPIC)
        self.dead_letter_topic = settings.topic(DEAD_LETTER_TOPIC)
        self.alerts_topic = settings.topic(ALERTS_TOPIC)
        self.newest_event_ms = 0
        # Per-batch tallies, published to Prometheus once per batch (labels() per event is costly).
        self._messages: Counter[str] = Counter()
        self._events: Counter[tuple[str, str]] = Counter()
        self._outcomes: Counter[Outcome] = Counter()
        self._counted = 0  # Outcome.COUNTED, the common case, kept apart (hashing an Enum is slow)
        self._dead: Counter[str] = Counter()
        self._announced: dict[int, int | None] = {}
        self._announced_at = 0.0
        self._durable: list[Awaitable[object]] = []  # changelog sends not yet known to be stored
        # What the commits so far cover (an Aggregator.stored_position), and what was staged for the next.
        self._covered = 0
        self._staged_through = 0
        # Persisting in slices (process(persist=False)): when the last slice was staged, and the
        # aggregator's touch position after each batch since, with the time it ended.
        self._sliced_at = monotonic()
        self._batch_ends: deque[tuple[float, int]] = deque()
        self._slice_staged = False  # staged at the end of a batch, committed after the next one's first chunk
        self._in_flight: Delivery | None = None  # see process(persist=False)
        self._waited = 0.0  # seconds the batch being processed waited for deliveries (DELIVERY_WAIT_SECONDS)
        self._failed: str | None = None  # why a batch failed: from then on the processor refuses all work
        self._horizon = MAX_TS_MS  # the latest event time accepted in the chunk being processed
        self._origins: dict[tuple[str, int], str] = {}
        self._late_logged_at = -LATE_LOG_INTERVAL_S

    # -- ownership --------------------------------------------------------------------------------

    def on_assignment(self, partitions: set[int], generation: int | None = None) -> None:
        """Own exactly these partitions, the consumer's assignment in group ``generation`` (None: not
        known, as in tests and tools; an observation older than one already taken is ignored).

        Changes not persisted yet are kept (staged; the aggregator rebuilds from the store) for the
        partitions kept from one generation to the next, and dropped for those revoked: their batches
        are never acknowledged, the new owner replays them, and a late write of ours to their changelog
        could overwrite its newer states. When a generation went by unseen (the assignment was taken
        while a batch held the processor, say), a partition may have been another worker's meanwhile and
        come back: then nothing unpersisted is kept, and every state is read again from the table (the
        batches not acknowledged are read again and applied to it)."""
        gap = self._generation_gap(generation)
        if gap < 0:
            return  # taken before one already applied
        changes = self._assignment_changes(partitions, generation)  # asked before the generation is taken
        if generation is not None:
            self._generation = generation
        if not changes:
            return
        unseen = gap > 1 and bool(self.owned)  # owning nothing (a worker joining a group), nothing is stale
        kept = set() if unseen else set(partitions)
        if unseen:
            log.warning("%d consumer generation(s) went by unseen: reading every state again", gap - 1)
        self.owned = frozenset(partitions)
        self._announced.clear()
        self.aggregator.persist(kept)
        self._staged_through = self.aggregator.stored_position
        self.store.keep(lambda account_id: self.partition_of(account_id) in kept)
        self.store.sweep(partitions)
        self.aggregator.assign(set(partitions))
        metrics.ACCOUNTS_IN_DROP.set(self.aggregator.accounts_in_drop)
        for account in self.settings.drop_watch_accounts:  # another worker publishes the others' gauges
            if self.partition_of(account) not in partitions:
                for gauge in (metrics.WATCHED_SCORE, metrics.WATCHED_BASELINE, metrics.WATCHED_IN_DROP):
                    with contextlib.suppress(KeyError):
                        gauge.remove(account)
        self.progress = Progress(
            {k: v for k, v in self.progress.next_offset.items() if k[1] in partitions},
            {k: v for k, v in self.progress.watermark.items() if k[1] in partitions},
            {p: v for p, v in self.progress.upstream.items() if p in partitions},
        )
        log.info("owning partitions %s", sorted(partitions))

    def _generation_gap(self, generation: int | None) -> int:
        known = self._generation
        return generation - known if generation is not None and known is not None else 0

    async def take_assignment(self, partitions: set[int], generation: int | None = None) -> None:
        """:meth:`on_assignment` under the lock, once the delivery in flight is through if the assignment
        changes (a change stages the kept states, which the next commit stores: their rows must be
        durable first). Call between batches; raises :class:`BatchFailed` once a batch failed."""
        async with self.lock:
            self._check_usable()
            with self._refusing_work_on_failure("taking an assignment over"):
                if self._assignment_changes(partitions, generation):
                    await self._land_in_flight()
                self.on_assignment(partitions, generation)

    def _assignment_changes(self, partitions: set[int], generation: int | None) -> bool:
        """Whether :meth:`on_assignment` with these changes what is owned or reads the states again (a
        generation went by unseen while something was owned)."""
        gap = self._generation_gap(generation)
        return gap >= 0 and (frozenset(partitions) != self.owned or (gap > 1 and bool(self.owned)))

    # -- the data path ----------------------------------------------------------------------------

    async def process(self, messages: Sequence[SourceMessage], persist: bool = True) -> None:
        """Process one batch (see the module docstring). Blocks while ClickHouse is down.

        With ``persist``, returns once the batch's rows are durable and the account states it changed
        are in the table and its changelog. With ``persist=False`` the states wait for :meth:`persist`
        (the worker persists several batches at once, then acknowledges them) or for the slices that
        this method stages at a batch's end once one is due, while the batch's inserts run
        (:meth:`_stage_slice`; committed after the next batch's first chunk, which awaits those inserts,
        or by the next persist; :meth:`slices_committed` says which batches they cover), and the batch's
        last chunk may still be in flight (its inserts overlap the next batch's decoding):
        :meth:`persist` and every other method that writes await it first.

        A batch carrying more than ``batch_max_events`` events is processed in chunks of about that
        many at most, all of about the same size (:func:`_chunks`), so memory stays bounded whatever the
        messages carry. The chunks form a pipeline: a chunk's ClickHouse inserts start as soon as it is
        aggregated and run on the warehouse thread while the next chunk is decoded; a chunk's
        deliveries are awaited before the one after next begins. Once more accounts are touched than
        the live cache holds, their states are written to the table early (after the rows so far are
        durable), which bounds memory.

        Raises :class:`~pipeline.brake.DeadLetterBrakeTripped` when too many recent source messages were
        invalid. Like any exception here, it leaves nothing of the batch persisted or to acknowledge. The
        chunk being decoded sends nothing; the one in flight sends no dead letters or re-keyed messages
        (its ClickHouse inserts had started: idempotent rows, rewritten on replay); only earlier chunks of
        a batch of several were delivered in full.
        """
        async with self.lock:
            self._check_usable()
            started = time.perf_counter()
            self._waited = 0.0
            try:
                for chunk in _chunks(messages, self.settings.batch_max_events):
                    await self._next_chunk(chunk)
                    if self.aggregator.touched_accounts >= self.aggregator.cache_accounts:
                        await self._land_in_flight()
                        await self._persist()
                if persist:
                    await self._land_in_flight()
                    await self._persist()
                    await self._durable_now()
                else:  # the last chunk's inserts run on while the next batch is decoded
                    self._batch_ends.append((self._monotonic(), self.aggregator.touch_position))
                    # A slice due is staged now, while this batch's inserts run: staged before its chunks,
                    # it held the batch's rows back by as long (up to ~0.3 s on live traffic).
                    if messages:  # (its first chunk committed the last batch's slice)
                        self._slice_staged = self._stage_slice()
            except BaseException as exc:  # nothing of this batch is persisted; its last delivery is dropped
                # The aggregator holds part of the batch now: nothing it holds may be persisted, written or
                # announced any more (a call waiting for the lock would otherwise do it).
                self._give_up(f"{type(exc).__name__}: {exc}")
                raise
            self._publish_counts()
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
            metrics.DELIVERY_WAIT_SECONDS.inc(self._waited)
            self.collector.sweep_if_due()

    async def persist(self) -> Awaitable[object]:
        """Write the account states changed by every batch processed so far to the table (waits for a
        batch being processed to finish). Returns what completes once the table's changelog has them:
        only then may those batches be acknowledged. An exception from it means a state was not stored:
        the batches must not be acknowledged."""
        async with self.lock:
            self._check_usable()
            with self._refusing_work_on_failure("persisting"):
                await self._land_in_flight()
                await self._persist()
            durable, self._durable = self._durable, []
            return asyncio.gather(*durable)

    def slices_committed(self) -> tuple[Awaitable[object] | None, int]:
        """What the slices persisted so far cover (see :meth:`process`): the awaitable that completes once
        the table's changelog has every state committed since the last call (raises if one was not
        stored; None if nothing was committed), and the
        :attr:`~pipeline.aggregator.Aggregator.stored_position` they reach. A batch after which
        :attr:`~pipeline.aggregator.Aggregator.touch_position` was at most that position may be
        acknowledged once the awaitable completes. Does not block."""
        durable, self._durable = self._durable, []
        return (asyncio.gather(*durable) if durable else None), self._covered

    def _stage_slice(self) -> bool:
        """Stage a slice of the touched states if one is due (hold the lock, between batches): every
        ``ENGAGEMENT_PERSIST_INTERVAL_SECONDS / PERSIST_SLICES``, the oldest touches, a
        ``PERSIST_SLICES``-th of them or all those of batches that ended an interval ago or more, if
        more. So each state is stored about once per interval, as a persist of all would, and a batch
        is covered within about an interval, but no persist holds up the batches as long as one of
        all of them. Returns whether a slice was staged (to :meth:`_commit` once the delivery in
        flight is through: the slice holds its effects; any commit stores it)."""
        interval = self.settings.persist_interval_seconds
        now = self._monotonic()
        if interval <= 0 or now - self._sliced_at < interval / PERSIST_SLICES:
            return False
        self._sliced_at = now
        aggregator = self.aggregator
        due = aggregator.stored_position
        ends = self._batch_ends
        while ends and ends[0][0] <= now - interval:
            due = max(due, ends.popleft()[1])
        count = max(-(-aggregator.touched_accounts // PERSIST_SLICES), due - aggregator.stored_position)
        if count <= 0:
            return False
        started = time.perf_counter()
        aggregator.persist_oldest(count)
        metrics.STATE_PERSIST_SECONDS.labels("slice").observe(time.perf_counter() - started)
        self._staged_through = aggregator.stored_position
        return True

    async def _commit(self) -> None:
        """Commit what is staged (hold the lock, with every row it depends on durable)."""
        covered = self._staged_through
        self._slice_staged = False  # a commit stores everything staged
        self._durable.append(await self.store.commit())
        self._covered = covered

    def abandon(self) -> None:
        """Stop for good without delivering: drop the chunk delivery still in flight, if any (its sends are
        not made; inserts already handed to the warehouse thread may still land, idempotent rows), and
        refuse all work from then on (:class:`BatchFailed`). For a worker that stops: nothing processed
        since its last acknowledgement is acknowledged, so Kafka redelivers it to the next owner. Call
        once nothing else runs on the processor. Never raises, never blocks."""
        self._give_up("abandoned: the worker stopped")

    def _give_up(self, why: str) -> None:
        """Refuse all work from now on, for ``why`` (the first reason is kept), and drop the delivery in
        flight unawaited."""
        if self._failed is None:
            self._failed = why[:200]
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.abandon()

    @contextlib.contextmanager
    def _refusing_work_on_failure(self, what: str) -> Generator[None, None, None]:
        """Around a locked section that changes the aggregator or the store outside a batch: if it
        raises, the aggregator may hold effects whose sends, rows or states were lost, so the processor
        refuses all work from then on, as after a failed batch."""
        try:
            yield
        except BaseException as exc:
            self._failed = f"{what}: {type(exc).__name__}: {exc}"[:200]
            raise

    def _check_usable(self) -> None:
        """Raise :class:`BatchFailed` once a batch failed (hold the lock)."""
        if self._failed is not None:
            raise BatchFailed(f"a batch failed ({self._failed}): nothing more is persisted, written or announced")

    async def _land_in_flight(self) -> None:
        """Await the chunk delivery still in flight (hold the lock). If it fails, its batch's sends or
        rows are lost while the aggregator holds its effects: every caller then makes the processor
        refuse all work (:meth:`process`, or :meth:`_refusing_work_on_failure`)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            await self._await_delivery(in_flight)

    async def _await_delivery(self, delivery: Delivery) -> None:
        """Await ``delivery``, the time it takes added to what the batch being processed waited (counted
        in ``engagement_delivery_wait_seconds_total`` at the batch's end; outside a batch, dropped)."""
        started = time.perf_counter()
        try:
            await delivery
        finally:
            self._waited += time.perf_counter() - started

    async def _next_chunk(self, messages: Sequence[SourceMessage]) -> None:
        """Process a chunk now, leave its delivery in flight, and wait for the previous chunk's delivery
        meanwhile (its inserts ran while this chunk was decoded); then commit the slice staged at the end
        of the last batch, if any (its rows are durable now)."""
        previous, self._in_flight = self._in_flight, self._process_chunk(messages)
        if previous is not None:
            await self._await_delivery(previous)
        if self._slice_staged:
            await self._commit()

    def _process_chunk(self, messages: Sequence[SourceMessage]) -> Delivery:
        """Decode and aggregate ``messages`` now and start their inserts; returns the awaitable that
        completes once the chunk is delivered (Kafka acknowledged its sends, ClickHouse its rows). The
        garbage collector is paused meanwhile, and what is alive after it frozen (pipeline.collector)."""
        with self.collector.chunk():
            dead: list[DeadLetter] = []
            rekeyed: list[tuple[str, bytes]] = []
            candidates: list[ResponseCandidate] = []
            raw = SourcedEvents()
            touched: set[int] = set()
            self._horizon = self._future_horizon()  # once per chunk: a chunk takes well under a second
            for message in messages:
                self._consume(message, dead, rekeyed, candidates, raw)
                touched.add(message.partition)
            for partition in touched:
                self._advance(partition)
            # What this chunk lets us announce, fixed now: later chunks' progress must wait for their sends.
            frontiers = {q: self.source_frontier(q) for q in touched & self.owned}
            return self._deliver(dead, rekeyed, candidates, raw, frontiers)

    def _deliver(
        self,
        dead: list[DeadLetter],
        rekeyed: list[tuple[str, bytes]],
        candidates: list[ResponseCandidate],
        raw: SourcedEvents,
        frontiers: Mapping[int, int | None],
    ) -> Delivery:
        writes: list[PendingWrite] = []
        if raw:  # started first: the raw rows are ready, and their insert runs while the window rows are taken
            writes.append(self.writer.write_soon(EVENTS_TABLE, raw.block(int(time.time() * 1000))))
        rows = self.aggregator.take_rows()
        if rows:
            writes.append(self.writer.write_soon(WINDOWS_TABLE, window_columns(rows)))
            finals = sum(1 for r in rows if r.final)
            if finals:
                metrics.WINDOWS_FINALIZED.inc(finals)
        sends = [self.outbox.send(self.dead_letter_topic, d.dead_letter_id.encode(), d.to_json()) for d in dead]
        sends += [
            self.outbox.send(self.rekey_topic, b"", value, partition)
            for partition, value in _candidate_messages(candidates, self.partition_of)
        ]
        sends += [self.outbox.send(self.rekey_topic, key.encode("utf-8"), value) for key, value in rekeyed]
        alerts = self.aggregator.take_alerts()
        if alerts:
            writes.append(self.writer.write_soon(ALERTS_TABLE, alert_columns(alerts)))
            sends += self._send_alerts(alerts)
        self._publish_detection(alerts)
        return Delivery(self._delivered(sends, frontiers, writes), sends, writes, frozenset(frontiers))

    def _send_alerts(self, alerts: Sequence[Alert]) -> list[Awaitable[Any]]:
        """Produce ``alerts`` to the alerts topic, keyed by account (one account's alerts stay in order)."""
        return [self.outbox.send(self.alerts_topic, a.account_id.encode("utf-8"), a.to_json()) for a in alerts]

    def _publish_detection(self, alerts: Sequence[Alert]) -> None:
        """Alert counters (counted when raised: a replay after a crash may count one again), the gauge of
        accounts in a drop, and the watched accounts' gauges."""
        for alert in alerts:
            if alert.state == FIRING:
                metrics.ALERTS_FIRED.labels(alert.reason).inc()
            else:
                metrics.ALERTS_RESOLVED.inc()
        metrics.ACCOUNTS_IN_DROP.set(self.aggregator.accounts_in_drop)
        watched, self.aggregator.watched = self.aggregator.watched, {}
        for account, (score, baseline, in_drop) in watched.items():
            metrics.WATCHED_SCORE.labels(account).set(score)
            metrics.WATCHED_BASELINE.labels(account).set(baseline)
            metrics.WATCHED_IN_DROP.labels(account).set(int(in_drop))

    async def _delivered(
        self, sends: list[Awaitable[Any]], frontiers: Mapping[int, int | None], writes: list[PendingWrite]
    ) -> None:
        try:
            if sends:
                await asyncio.gather(*sends)
            # Only once everything re-keyed from these partitions is acknowledged, announce their progress.
            await self._announce(frontiers)
        finally:
            # Awaited even after a failed send, so no insert is left unobserved; if awaiting one is cut
            # short (the batch was cancelled), the writes not awaited yet are abandoned.
            for index, write in enumerate(writes):
                try:
                    await write
                except BaseException:
                    for rest in writes[index + 1 :]:
                        rest.abandon()
                    raise

    async def _persist(self) -> None:
        """Write touched account states to the table and start sending them to its changelog — only
        after their rows are durable. What completes once the changelog has them is kept for
        :meth:`persist`."""
        started = time.perf_counter()
        self.aggregator.persist()
        metrics.STATE_PERSIST_SECONDS.labels("all").observe(time.perf_counter() - started)
        self._staged_through = self.aggregator.stored_position
        self._batch_ends.clear()
        await self._commit()
        if self.aggregator.unmatched_responses:
            metrics.EVENT_OUTCOMES.labels(Outcome.UNMATCHED.value).inc(self.aggregator.unmatched_responses)
            self.aggregator.unmatched_responses = 0

    async def _durable_now(self) -> None:
        durable, self._durable = self._durable, []
        if durable:
            await asyncio.gather(*durable)

    def _publish_counts(self) -> None:
        for topic, n in self._messages.items():
            metrics.MESSAGES_CONSUMED.labels(topic).inc(n)
        for (topic, event_type), n in self._events.items():
            metrics.EVENTS_CONSUMED.labels(topic, event_type).inc(n)
        if self._counted:
            self._outcomes[Outcome.COUNTED] += self._counted
            self._counted = 0
        for outcome, n in self._outcomes.items():
            metrics.EVENT_OUTCOMES.labels(outcome.value).inc(n)
        for reason, n in self._dead.items():
            metrics.DEAD_LETTERS.labels(reason).inc(n)
        for tally in (self._messages, self._events, self._outcomes, self._dead):
            tally.clear()
        metrics.DEAD_LETTER_BRAKE_SHARE.set(self.brake.invalid_share)
        if self.newest_event_ms:
            metrics.NEWEST_EVENT_SECONDS.set(self.newest_event_ms / 1000)

    async def write_deferred(self) -> int:
        """Upsert open windows whose changes waited for their interval (a timer calls this, so rows
        catch up when traffic pauses). Returns the rows written.

        Writes nothing while a batch's delivery is in flight: batches are coming, and each takes the
        upserts that are due with its own rows; waiting here for that delivery would hold the next batch
        back until its inserts land. Once the input pauses, the worker persists (which lands it), and the
        next call writes what waited."""
        async with self.lock:
            self._check_usable()
            with self._refusing_work_on_failure("writing deferred upserts"):
                if self._in_flight is not None:
                    return 0
                if not self.aggregator.has_deferred_upserts:
                    return 0
                return await self._write_rows()

    async def flush(self, owned: set[int] | None = None, generation: int | None = None) -> int:
        """Finalize every open window now (end of a replay), write them and persist the states. Returns
        the rows written. ``owned``: the consumer's assignment in ``generation`` (see
        :meth:`on_assignment`), taken over first, once the delivery in flight is through (a change of
        assignment stages states, and a slice's commit would store them)."""
        async with self.lock:
            self._check_usable()
            with self._refusing_work_on_failure("flush"):
                await self._land_in_flight()
                if owned is not None:
                    self.on_assignment(owned, generation)
                self.aggregator.flush()
                rows = await self._write_rows()
                await self._persist()
                await self._durable_now()
            return rows

    async def _write_rows(self) -> int:
        rows = self.aggregator.take_rows()
        if rows:
            await self.writer.write(WINDOWS_TABLE, window_columns(rows))
            metrics.WINDOWS_FINALIZED.inc(sum(1 for r in rows if r.final))
        alerts = self.aggregator.take_alerts()
        if alerts:
            await self.writer.write(ALERTS_TABLE, alert_columns(alerts))
            await asyncio.gather(*self._send_alerts(alerts))
        self._publish_detection(alerts)
        return len(rows)

    def _consume(
        self,
        message: SourceMessage,
        dead: list[DeadLetter],
        rekeyed: list[tuple[str, bytes]],
        candidates: list[ResponseCandidate],
        raw: SourcedEvents,
    ) -> None:
        topic, partition, offset = message.topic, message.partition, message.offset
        key = (topic, partition)
        self.progress.next_offset[key] = offset + 1
        if topic == self.rekey_topic:
            self._consume_rekeyed(message, dead, raw)
            return
        self._messages[topic] += 1
        kind = self.source_kinds.get(topic)
        events, rejections = decode_message(message.value, kind, self.settings.max_message_bytes)
        for rejection in rejections:
            self._dead_letter(rejection, message, dead)
        horizon = self._horizon
        future = bool(events) and max(map(_TS_MS, events)) > horizon
        valid = len(events)
        elements: list[int] | None = None  # where the events sit in the message (rare paths only)
        refused = rejections
        if future:  # rare: a producer's clock far ahead; those events are skipped in apply_message
            elements = element_positions(message.value, events, rejections)
            ahead = self._reject_future(events, elements, horizon, message, dead)
            refused = [*rejections, *ahead]
            valid -= len(ahead)
        self.brake.observe(refused, topic, partition, offset, valid)  # raises DeadLetterBrakeTripped
        if not valid:
            return
        # The per-event loop of the hot path runs compiled, in the aggregator; what it leaves is rare.
        kinds: dict[str, int] = {}
        foreign: list[int] = []
        others: list[tuple[int, Outcome]] = []
        source = (topic, partition, offset)
        since = len(raw.events)
        watermark, counted = self.aggregator.apply_message(
            events,
            source,
            self._origin(topic, partition),
            input_position(offset, 0),
            horizon,
            self.partition_of,
            self.progress.watermark.get(key, NO_FRONTIER),
            kinds,
            candidates,
            raw.events,
            foreign,
            others,
        )
        raw.read_at(source, since)
        self._counted += counted
        for event_type, n in kinds.items():
            self._events[(topic, event_type)] += n
        if foreign or others:  # rare: events keyed to another partition, late, duplicate, replayed, self
            if elements is None:
                elements = element_positions(message.value, events, rejections)  # the decoder's rejections
            for index in foreign:
                event = events[index]
                forward = {"k": "e", "v": event.to_json_dict(), "t": topic, "p": partition, "o": offset, "i": index}
                if elements[index] >= 0:
                    forward["x"] = elements[index]
                rekeyed.append((event.account_id, orjson.dumps(forward)))
            for index, outcome in others:
                self._not_counted(events[index], outcome, partition, topic, partition, offset, elements[index], dead)
        self.progress.watermark[key] = watermark
        if watermark > self.newest_event_ms:
            self.newest_event_ms = watermark

    def _future_horizon(self) -> int:
        """The latest event time accepted now (epoch ms): the clock plus ENGAGEMENT_MAX_FUTURE_SECONDS."""
        if not self.settings.max_future_seconds:
            return MAX_TS_MS
        return int(time.time() * 1000) + self.settings.max_future_seconds * 1000

    def _reject_future(
        self,
        events: Sequence[Event],
        elements: Sequence[int],
        horizon: int,
        message: SourceMessage,
        dead: list[DeadLetter],
    ) -> list[Rejection]:
        """Dead-letter the events of ``message`` timed after ``horizon`` (reason ``future_ts``; ``elements``:
        their places in the message, see :func:`element_positions`); returns their rejections. Each
        letter's id ends with the event's id (a message may hold several)."""
        rejections = []
        bound = self.settings.max_future_seconds
        clock = horizon - bound * 1000
        for event, element in zip(events, elements, strict=True):
            if event.ts_ms > horizon:
                detail = f"ts {event.ts_ms} is more than {bound}s after this worker's clock ({clock})"
                detail += "; see ENGAGEMENT_MAX_FUTURE_SECONDS"
                rejections.append(
                    self._dead_letter_event(
                        event, Reason.FUTURE_TS, detail, message.topic, message.partition, message.offset, element, dead
                    )
                )
        return rejections

    def _dead_letter_event(
        self,
        event: Event,
        reason: Reason,
        detail: str,
        topic: str,
        partition: int,
        offset: int,
        element: int,
        dead: list[DeadLetter],
    ) -> Rejection:
        """Dead-letter one valid event the worker refuses (``late``, ``future_ts``), read at ``topic``,
        ``partition``, ``offset``, element ``element`` of its JSON array (-1: the message was one object);
        the letter's id ends with the reason and the event's id (a message may hold several such events).
        Returns the rejection."""
        rejection = Rejection(reason, detail, element, orjson.dumps(event.to_json_dict()))
        letter = DeadLetter.from_rejection(rejection, topic, partition, offset, self.settings.dead_letter_payload_bytes)
        dead.append(_with_id(letter, f"{letter.dead_letter_id}/{reason.value}/{event.event_id}"))
        self._dead[reason.value] += 1
        return rejection

    def _consume_rekeyed(self, message: SourceMessage, dead: list[DeadLetter], raw: SourcedEvents) -> None:
        """One message of the re-key topic: a watermark announcement (``w``), response candidates (``rs``,
        ``r``) or a forwarded event (``e``). The topic is ours, but nothing in it may crash the worker or
        reach its state unchecked: a malformed message, or candidate, is dead-lettered with its reason."""
        try:
            data = orjson.loads(message.value or b"")
        except orjson.JSONDecodeError as exc:
            self._dead_letter(_rekey_rejection(Reason.INVALID_JSON, str(exc), message), message, dead)
            return
        try:
            kind = data["k"] if isinstance(data, dict) else None
            if kind == "w":
                source, value = data["q"], data["t"]
                if not (_is_count(source, self.settings.partitions - 1) and (value is None or _is_frontier(value))):
                    raise _Malformed(f"a watermark needs an integer partition and time, not {source!r}, {value!r}")
                announced = self.progress.upstream.setdefault(message.partition, {})
                previous = announced.get(source, NO_FRONTIER)
                announced[source] = None if value is None else max(value, previous or NO_FRONTIER)
                return
            if kind in ("rs", "r"):  # "r": one candidate per message, as written before 2026-11-26
                rows = data["c"] if kind == "rs" else [[data["e"], data["a"], data["i"], data["t"]]]
                if not isinstance(rows, list):
                    raise _Malformed("candidates must be a list")
                apply_response, outcomes = self.aggregator.apply_response, self._outcomes
                for index, row in enumerate(rows):
                    candidate = _candidate(row)
                    if candidate is None:
                        rejection = Rejection(
                            Reason.WRONG_TYPE,
                            "a response candidate is [event_id, responder, in_reply_to, ts_ms] (ids as strings, "
                            "ts_ms as integer epoch ms)",
                            index,
                            encode_element(row),
                        )
                        self._dead_letter(rejection, message, dead)
                        continue
                    outcomes[apply_response(candidate, message.partition)] += 1
                return
            if kind != "e":
                raise _Malformed(f"unknown kind {kind!r}")
            event = validate_event(data["v"], None)
            topic, partition, offset, index = data["t"], data["p"], data["o"], data.get("i")
            # "i" is absent in messages of earlier versions: no replay detection for those; "x" (the
            # element of the source message's array) is absent for a message of one object, and in
            # messages of versions before 2026-11-27
            element = data.get("x", -1)
            if not (
                _is_id(topic, MAX_TOPIC_CHARS)
                and _is_count(partition, MAX_PARTITION)
                and _is_count(offset, MAX_POSITIONED_OFFSET)
                and (index is None or _is_count(index))
                and (element == -1 or _is_count(element, MAX_ELEMENT))
            ):
                raise _Malformed("a forwarded event needs its source topic, partition, offset and index")
        except InvalidEvent as exc:
            self._dead_letter(_rekey_rejection(exc.reason, exc.detail, message), message, dead)
            return
        except (_Malformed, KeyError, TypeError) as exc:
            reason = Reason.MISSING_FIELD if isinstance(exc, KeyError) else Reason.WRONG_TYPE
            self._dead_letter(_rekey_rejection(reason, repr(exc), message), message, dead)
            return
        self._apply(
            event,
            self.partition_of(event.account_id),
            topic,
            partition,
            offset,
            dead,
            raw,
            self._origin(topic, partition),
            -1 if index is None else input_position(offset, index),
            int(element),  # -1.0 passes the check as -1
        )
        if event.ts_ms > self.newest_event_ms:
            self.newest_event_ms = event.ts_ms

    def _apply(
        self,
        event: Event,
        owner: int,
        topic: str,
        partition: int,
        offset: int,
        dead: list[DeadLetter],
        raw: SourcedEvents,
        origin: str,
        position: int,
        element: int,
    ) -> None:
        """Aggregate one event of an account owned by partition ``owner``; it came from ``topic``,
        ``partition``, ``offset``, element ``element`` of its array (where its dead letter and raw row
        point), ``origin`` and ``position`` name that place for replay detection (see
        :meth:`Aggregator.apply_event`)."""
        outcome = self.aggregator.apply_event(event, owner, origin, position)
        if outcome is Outcome.COUNTED:
            self._counted += 1
            raw.add(event, topic, partition, offset)
            return
        if outcome is Outcome.SELF:
            raw.add(event, topic, partition, offset)
        self._not_counted(event, outcome, owner, topic, partition, offset, element, dead)

    def _not_counted(
        self,
        event: Event,
        outcome: Outcome,
        owner: int,
        topic: str,
        partition: int,
        offset: int,
        element: int,
        dead: list[DeadLetter],
    ) -> None:
        """Count an outcome other than COUNTED of ``event`` (its raw row, if any, is written already); a
        late event is dead-lettered, pointing at ``topic``, ``partition``, ``offset`` and ``element``."""
        self._outcomes[outcome] += 1
        if outcome is Outcome.LATE:
            window_end = self.config.window_start(event.ts_ms) + self.config.window_ms
            detail = (
                f"window ending {window_end} is already final (allowed lateness "
                f"{self.settings.allowed_lateness_seconds}s)"
            )
            self._dead_letter_event(event, Reason.LATE, detail, topic, partition, offset, element, dead)
            self._explain_late(event, owner, window_end)

    def _explain_late(self, event: Event, owner: int, window_end: int) -> None:
        """Log why an event was late, at most every ``LATE_LOG_INTERVAL_S``: what moved time past it (the
        owner's frontier, the account's final windows) and each source topic's read position."""
        now = time.monotonic()
        if now - self._late_logged_at < LATE_LOG_INTERVAL_S:
            return
        self._late_logged_at = now
        wall_ms = time.time() * 1000
        topics = []
        for topic in self.source_kinds:
            key = (topic, owner)
            fetched = self.fetched_at(*key)
            age = "?" if fetched is None else f"{(wall_ms - fetched) / 1000:.1f}s"
            topics.append(
                f"{topic}:{owner} watermark={self.progress.watermark.get(key)} next={self._next_offset(key)} "
                f"highwater={self.highwater(*key)} (fetched {age} ago)"
            )
        log.warning(
            "late event %s of %s at %d (window end %d, lateness %ds): partition %d frontier %d, account "
            "final through %d, announced %s; %s (logged at most every %ds)",
            event.event_id,
            event.account_id,
            event.ts_ms,
            window_end,
            self.settings.allowed_lateness_seconds,
            owner,
            self.aggregator.frontier(owner),
            self.aggregator.final_through(event.account_id),
            self.progress.upstream.get(owner, {}),
            "; ".join(topics),
            LATE_LOG_INTERVAL_S,
        )

    def _dead_letter(self, rejection: Rejection, message: SourceMessage, dead: list[DeadLetter]) -> None:
        dead.append(
            DeadLetter.from_rejection(
                rejection, message.topic, message.partition, message.offset, self.settings.dead_letter_payload_bytes
            )
        )
        self._dead[rejection.reason.value] += 1

    def _origin(self, topic: str, partition: int) -> str:
        """The short, stable name of a source partition in account states: ``"likes:3"``."""
        key = (topic, partition)
        name = self._origins.get(key)
        if name is None:
            name = self._origins[key] = f"{self.source_kinds.get(topic, topic)}:{partition}"
        return name

    # -- event time -------------------------------------------------------------------------------

    def _watermark(self, key: tuple[str, int], ts_ms: int) -> None:
        if ts_ms > self.progress.watermark.get(key, NO_FRONTIER):
            self.progress.watermark[key] = ts_ms

    def _advance(self, partition: int) -> None:
        frontier = self.frontier(partition)
        if frontier > NO_FRONTIER:
            self.aggregator.advance(partition, frontier)
            metrics.FRONTIER_SECONDS.set(
                min((self.aggregator.frontier(p) for p in self.owned), default=frontier) / 1000
            )

    def source_frontier(self, partition: int) -> int | None:
        """How far the source topics of ``partition`` have been read, in event time: the lowest watermark
        over its topics that still have unread messages (a caught-up topic does not hold time back), or
        the highest when all are caught up. ``None``: no event ever seen and nothing to read;
        ``NO_FRONTIER``: a topic has unread messages but no watermark yet."""
        busy: list[int] = []
        seen: list[int] = []
        for topic in self.source_kinds:
            key = (topic, partition)
            watermark = self.progress.watermark.get(key)
            if watermark is not None:
                seen.append(watermark)
            if self._caught_up(key):
                continue
            if watermark is None:
                return NO_FRONTIER
            busy.append(watermark)
        if busy:
            return min(busy)
        return max(seen) if seen else None

    def frontier(self, partition: int) -> int:
        """The event-time frontier of ``partition``: events before ``frontier - lateness`` are late.

        It is the lower of (a) this partition's own :meth:`source_frontier` and (b) the frontiers every
        source partition announced on this partition of the re-key topic: responses and re-keyed events
        come from all partitions, so time may only pass once every one of them has passed it.
        """
        constraints: list[int] = []
        own = self.source_frontier(partition)
        if own is not None:
            constraints.append(own)
        announced = self.progress.upstream.get(partition, {})
        if len(announced) < self.settings.partitions:
            return NO_FRONTIER
        constraints.extend(v for v in announced.values() if v is not None)
        return min(constraints) if constraints else NO_FRONTIER

    async def announce_watermarks(
        self, owned: set[int] | None = None, every: float = 10.0, generation: int | None = None
    ) -> None:
        """Announce owned partitions' source frontiers on all re-key partitions where they changed, and all
        of them every ``every`` seconds (a timer calls this: idle partitions still let time pass downstream,
        and a new owner of a re-key partition learns every upstream frontier). ``owned``: the consumer's
        assignment in ``generation`` (see :meth:`on_assignment`), taken over first."""
        async with self.lock:
            self._check_usable()
            with self._refusing_work_on_failure("announcing watermarks"):
                if owned is not None:
                    if self._assignment_changes(owned, generation):
                        await self._land_in_flight()  # see take_assignment
                    self.on_assignment(owned, generation)
                now = time.monotonic()
                if now - self._announced_at >= every:
                    self._announced.clear()
                # A partition's frontier may be announced only once its re-keyed messages are acknowledged:
                # those the delivery in flight touched are announced by it when it lands (the next batch
                # awaits it). The others have nothing in flight, so the batches need not wait for it.
                in_flight = self._in_flight.partitions if self._in_flight is not None else frozenset()
                await self._announce({q: self.source_frontier(q) for q in self.owned - in_flight})

    async def _announce(self, frontiers: Mapping[int, int | None]) -> None:
        """Tell every re-key partition the source frontiers of ``frontiers`` that changed since last told."""
        pending = []
        for q, frontier in frontiers.items():
            if q in self._announced and self._announced[q] == frontier:
                continue
            if not self._announced:
                self._announced_at = time.monotonic()
            self._announced[q] = frontier
            marker = orjson.dumps({"k": "w", "q": q, "t": frontier})
            for p in range(self.settings.partitions):
                pending.append(self.outbox.send(self.rekey_topic, b"", marker, p))
        if pending:
            await asyncio.gather(*pending)

    def _caught_up(self, key: tuple[str, int]) -> bool:
        """Everything of ``key`` up to its highwater has been read, and that highwater is recent.

        The highwater is the log end seen by the consumer's last fetch of the partition: messages
        published since are unread although the offsets say "caught up". A stale highwater (a paused
        partition, a slow fetch on a loaded machine) would let the other topics' watermarks carry time
        past those messages, and they would be dead-lettered as late. So a topic counts as caught up only
        while its highwater is at most ``HIGHWATER_MAX_AGE_MS`` old (``fetched_at``: the wall-clock ms of
        that fetch; unknown counts as recent): time then runs at most that much wall time ahead of a
        topic's unread messages. An idle partition is fetched every fetch long-poll, so this holds time
        back only while a partition is not being fetched.
        """
        highwater = self.highwater(*key)
        if highwater is None or self._next_offset(key) < highwater:
            return False
        fetched = self.fetched_at(*key)
        return fetched is None or time.time() * 1000 - fetched <= HIGHWATER_MAX_AGE_MS

    def _next_offset(self, key: tuple[str, int]) -> int:
        known = self.progress.next_offset.get(key)
        if known is not None:
            return known
        return self.committed(*key) or 0

    def lag(self) -> Mapping[str, int]:
        """Unprocessed messages per topic over the owned partitions (for the lag gauge)."""
        out: dict[str, int] = {}
        for topic in [*self.source_kinds, self.rekey_topic]:
            total = 0
            for partition in self.owned:
                highwater = self.highwater(topic, partition)
                if highwater is not None:
                    total += max(0, highwater - self._next_offset((topic, partition)))
            out[topic] = total
        return out


def element_positions(payload: bytes | None, events: Sequence[Event], rejections: Sequence[Rejection]) -> list[int]:
    """Where each of ``events``, decoded from ``payload`` with ``rejections``
    (:func:`~pipeline.decode.decode_message`), sits in the message's JSON array: the indexes the
    rejected elements leave, in order; all -1 when the message is one object, not an array."""
    if payload is None or _ARRAY_START.match(payload) is None:
        return [-1] * len(events)
    rejected = {r.index for r in rejections if r.index >= 0}
    if not rejected:  # the common case: element i is event i
        return list(range(len(events)))
    positions: list[int] = []
    index = 0
    while len(positions) < len(events):
        if index not in rejected:
            positions.append(index)
        index += 1
    return positions


def _candidate_messages(
    candidates: Sequence[ResponseCandidate], partition_of: Callable[[str], int]
) -> list[tuple[int, bytes]]:
    """Response candidates as re-key messages, several per message: ``(partition, value)`` with
    ``{"k": "rs", "c": [[event_id, responder, in_reply_to, ts_ms], ...]}``, each on the responder's
    partition, in their order, at most :data:`CANDIDATES_PER_MESSAGE` per message. One message per reply
    made every reply a producer send (8 % of a live worker's main thread at 40,000 events/s)."""
    by_partition: dict[int, list[list[Any]]] = {}
    for c in candidates:
        by_partition.setdefault(partition_of(c.responder), []).append([c.event_id, c.responder, c.in_reply_to, c.ts_ms])
    return [
        (partition, orjson.dumps({"k": "rs", "c": group[i : i + CANDIDATES_PER_MESSAGE]}))
        for partition, group in by_partition.items()
        for i in range(0, len(group), CANDIDATES_PER_MESSAGE)
    ]


class BatchFailed(RuntimeError):
    """A batch failed (an exception, the brake, a cancellation) in this processor earlier: its state holds
    part of that batch, so it persists, writes and announces nothing more. The worker is stopping."""


class Delivery:
    """A chunk's delivery, in flight: await it (once) for its sends to be acknowledged by Kafka and its
    rows by ClickHouse, or :meth:`abandon` it unawaited when its batch failed (nothing of it will be
    acknowledged: Kafka redelivers the batch). Abandoning sends nothing more and leaves nothing to warn
    that it was never awaited; inserts already handed to the warehouse thread may still land."""

    def __init__(
        self,
        run: Coroutine[Any, Any, None],
        sends: Sequence[Awaitable[Any]],
        writes: Sequence[PendingWrite],
        partitions: frozenset[int],
    ) -> None:
        self._run = run
        self._sends = sends
        self._writes = writes
        self.partitions = partitions  # the owned partitions whose frontiers it announces once its sends land

    def __await__(self) -> Generator[Any, None, None]:
        return (yield from self._run.__await__())

    def abandon(self) -> None:
        """Give up a delivery nobody awaited. Never raises."""
        self._run.close()
        for send in self._sends:
            if inspect.iscoroutine(send):
                send.close()
        for write in self._writes:
            write.abandon()


class _Malformed(ValueError):
    """A re-key message that is valid JSON but not what the worker writes there."""


_INT64_MAX = 2**63 - 1


# A forwarded event's source: Kafka's longest topic name, a partition of an Int32 column, and an offset
# whose input positions fit a stored state.
MAX_TOPIC_CHARS = 249
MAX_PARTITION = 2**31 - 1
MAX_ELEMENT = 2**31 - 1  # an element index (Int32 column)
_ARRAY_START = re.compile(rb"[ \t\n\r]*\[")  # JSON's whitespace, then an array


def _is_count(value: Any, high: int = _INT64_MAX) -> bool:
    """An integer (not a bool) in 0..``high``: a partition, an offset, an index, epoch milliseconds."""
    return value.__class__ is int and 0 <= value <= high


def _is_frontier(value: Any) -> bool:
    """An announced frontier: epoch milliseconds, or NO_FRONTIER (unread messages, no watermark yet)."""
    return value.__class__ is int and NO_FRONTIER <= value <= _INT64_MAX


def _is_id(value: Any, limit: int) -> bool:
    return value.__class__ is str and 0 < len(value) <= limit


def _candidate(row: Any) -> ResponseCandidate | None:
    """The response candidate of a re-key row ``[event_id, responder, in_reply_to, ts_ms]``, or None if the
    row is not one (wrong length or types, ids out of bounds, a time outside the accepted range)."""
    if row.__class__ is not list or len(row) != 4:
        return None
    event_id, responder, in_reply_to, ts_ms = row
    if not (
        _is_id(event_id, MAX_EVENT_ID_CHARS)
        and _is_id(responder, MAX_ID_CHARS)
        and _is_id(in_reply_to, MAX_EVENT_ID_CHARS)
        and _is_count(ts_ms)
        and ts_ms <= MAX_TS_MS
    ):
        return None
    return ResponseCandidate(event_id, responder, in_reply_to, ts_ms)


def _rekey_rejection(reason: Reason, detail: str, message: SourceMessage) -> Rejection:
    return Rejection(reason, f"bad re-keyed message: {detail}"[:300], -1, message.value or b"")


def _chunks(messages: Sequence[SourceMessage], limit: int) -> list[list[SourceMessage]]:
    """``messages`` in order, cut into as few chunks as about ``limit`` estimated events each allows, of
    about the same size: a message goes to the next chunk when its middle lies past the next of the even
    cuts (so a chunk holds its share of the batch, at most ``limit``, give or take half of its first and
    of its last message). Cut at ``limit`` instead, a batch ended in a short chunk, aggregated long before
    the chunk ahead of it was written: the main thread then waited idle for that delivery at every
    batch's end (bench/RESULTS.md)."""
    sizes = [_estimated_events(message) for message in messages]
    total = sum(sizes)
    count = max(1, -(-total // limit))
    chunks: list[list[SourceMessage]] = []
    chunk: list[SourceMessage] = []
    done = 0  # estimated events before the message
    for message, size in zip(messages, sizes, strict=True):
        # its middle, done + size / 2, past the cut len(chunks) + 1 of count, total * (len(chunks) + 1) / count
        if chunk and (2 * done + size) * count > 2 * total * (len(chunks) + 1):
            chunks.append(chunk)
            chunk = []
        chunk.append(message)
        done += size
    if chunk:
        chunks.append(chunk)
    return chunks


def _estimated_events(message: SourceMessage) -> int:
    """About how many events a message carries (a JSON array of ~200-byte events, or one)."""
    value = message.value
    if not value or value[:1] != b"[":
        return 1
    return max(1, len(value) // 200)


def _with_id(letter: DeadLetter, dead_letter_id: str) -> DeadLetter:
    from dataclasses import replace

    return replace(letter, dead_letter_id=dead_letter_id)
