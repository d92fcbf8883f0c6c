"""Bulk intake: Kafka messages of the source topics go from Faust's consumer straight into batches.

Faust delivers every message through a per-message path: its fetch loop (``Consumer._drain_messages``)
awaits ``wait_first(callback(message), ...)`` (four asyncio tasks per message), the conductor decodes it
into an ``Event`` and puts it on the channel's queue, the ``Stream`` takes it off, tracks it, calls the
sensors, and ``take_events`` buffers it again. With one event per message that path costs more than the
pipeline's own work. Here the fetch loop appends the messages of the source topics to an
:class:`IntakeBuffer` (a list; no task, no event object), the worker takes them off in batches of
``batch_max_messages`` (or whatever arrived within ``batch_max_seconds``), processes them and only then
acknowledges each to the consumer (:meth:`IntakeConsumer.ack_batch`), which makes its offset committable
exactly as a stream's ack would. Messages of every other topic (dead letters, changelogs) still take
Faust's own path.

What is kept from Faust's path: messages of an older consumer generation (fetched before a rebalance)
are dropped when taken, like the ``Stream`` does, and the buffer is emptied when partitions are revoked;
they are fetched again from the committed offset. What is not: Faust's read offsets and offset gaps decide
nothing for the intake topics; :class:`ReadOrder` alone says which record comes next, and a commit never
passes a record that was not acknowledged (:meth:`IntakeConsumer._new_offset`). Flow control: the fetch
loop stops while the buffer holds ``capacity`` messages.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, Message
from faust.types.tuples import ack_lock

from pipeline import metrics
from pipeline.fetch_holes import HOLES, install
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.web import Route

# After a batch that took the worker ``within`` or longer, how long it lets the fetch loop put the messages
# it holds before it takes them (the loop runs only while the worker awaits).
CATCH_UP_SECONDS = 0.02


class IntakeBuffer:
    """Messages waiting to be processed, cut into batches as they arrive.

    :meth:`put` is called by the fetch loop for every message (keep it cheap): it appends to the open
    batch and closes it at ``batch_size`` messages or ``max_bytes`` of payload, whichever comes first.
    :meth:`take` returns the oldest closed batch, or the open one once its first message is ``within``
    seconds old, or at once when the worker's last batch took ``within`` or longer (its messages waited
    for the worker, not for more to come).
    """

    def __init__(
        self,
        topics: Iterable[str],
        batch_size: int,
        within: float,
        capacity_batches: int = 2,
        max_bytes: int = Settings.batch_max_bytes,
    ) -> None:
        self.topics = frozenset(topics)
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self._open_bytes = 0
        self.within = within
        self.capacity_batches = max(1, capacity_batches)
        self._closed: collections.deque[list[Message]] = collections.deque()
        self._open: list[Message] = []
        self._open_since = 0.0
        self._handed_out_at = time.monotonic()  # when take() last returned a batch
        self._changed = asyncio.Event()  # the first message of a batch arrived, or a batch closed
        self.space = asyncio.Event()  # set while the fetch loop may put more
        self.space.set()

    def __len__(self) -> int:
        return sum(map(len, self._closed)) + len(self._open)

    def put(self, message: Message) -> bool:
        """Append ``message``; False when the buffer is full (wait for :attr:`space` before the next)."""
        current = self._open
        current.append(message)
        if len(current) == 1:
            self._open_since = time.monotonic()
            self._open_bytes = 0
            self._changed.set()
        value = message.value
        if value is not None:
            self._open_bytes += len(value)
        if len(current) >= self.batch_size or self._open_bytes >= self.max_bytes:
            self._closed.append(current)
            self._open = []
            self._changed.set()
            if len(self._closed) >= self.capacity_batches:
                self.space.clear()
                return False
        return True

    async def take(self) -> list[Message]:
        """The next batch (never empty)."""
        if not self._closed and time.monotonic() - self._handed_out_at >= self.within:
            # The worker spent ``within`` or longer on its last batch: what came meanwhile waited for it
            # (the fetch loop puts messages only when the worker awaits, so their put times say little).
            await asyncio.sleep(CATCH_UP_SECONDS)  # the fetch loop puts what it holds
            if self._open and not self._closed:
                batch, self._open = self._open, []
                self._handed_out_at = time.monotonic()
                return batch
        while True:
            if self._closed:
                batch = self._closed.popleft()
                if len(self._closed) < self.capacity_batches:
                    self.space.set()
                self._handed_out_at = time.monotonic()
                return batch
            timeout: float | None = None
            if self._open:
                timeout = self._open_since + self.within - time.monotonic()
                if timeout <= 0:
                    batch, self._open = self._open, []
                    self._handed_out_at = time.monotonic()
                    return batch
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def clear(self) -> None:
        """Drop everything buffered (partitions revoked: it will be fetched again)."""
        self._closed.clear()
        self._open = []
        self._handed_out_at = time.monotonic()
        self.space.set()
        self._changed.set()


class _ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the fetch long-poll bounded by ``app.fetch_max_wait_ms``.

    Faust hard-codes ``fetch_max_wait_ms=1500``. Apache Kafka answers a fetch as soon as data arrives,
    but brokers that hold the long-poll (tansu, the embedded broker) then delay every message by up to
    that long: a shorter wait bounds the delay, at the price of more (empty) fetches when idle.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        install()  # aiokafka notes the offsets it skips (pipeline.fetch_holes)
        intake = getattr(self.app, "intake", None)
        if intake is not None:
            HOLES.watch(intake.topics)
        consumer = super()._create_worker_consumer(transport)
        # Records of aborted transactions are not input; the fetch then stops at the last stable offset.
        consumer._isolation_level = "read_committed"  # read when the consumer starts its fetcher
        wait_ms = getattr(self.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
        return consumer


class ReadOrder:
    """The next offset due from each intake partition, so that no record is ever passed over.

    Faust's ``getmany`` drops records it already fetched when flow stops, the consumer generation changes
    or a partition is paused, and its fetch loop then marks the hole as acknowledged (meant for compacted
    topics and transactions): offsets of records nobody processed would be committed. Instead, a record
    that is not the next one due is not delivered, and the partition is read again from the offset due.
    Positions are known after a seek to the committed offsets (or to a given offset); until then, the
    first record delivered sets them. While such a seek runs (:meth:`suspend`), no record is due (it may
    have been fetched before the seek), and each partition that had one dropped is read again from its
    offset due once the seek is over. A seek whose records never come (the fetch had already reached the
    end of the partition, so no later record asks again) is issued again by :meth:`stale_seeks`.
    """

    SEEK_AGAIN_AFTER = 5.0  # seconds: a seek whose re-read never came is issued again

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._next: dict[Any, int] = {}
        self._seeking: dict[Any, tuple[int, float]] = {}  # partition -> (target, when sought)
        self._monotonic = monotonic
        self._suspended = 0
        self.epoch = 0  # counts seeks and revocations: a wait that spans one must not act on what it knew
        self._dropped: set[Any] = set()  # partitions whose records were dropped while suspended

    def suspend(self) -> None:
        """A seek of the partitions starts: no record is due until :meth:`resume` (nested calls count)."""
        self._suspended += 1
        self.epoch += 1

    def resume(self) -> None:
        """The seek is over: partitions that had records dropped meanwhile are due a seek to their offset
        due at once (:meth:`stale_seeks`): a record fetched after the seek and dropped would otherwise
        leave the fetch past it with nothing to ask for it again."""
        self._suspended -= 1
        if self._suspended:
            return
        overdue = self._monotonic() - self.SEEK_AGAIN_AFTER
        for tp in self._dropped:
            target = self._next.get(tp)
            if target is not None:
                self._seeking[tp] = (target, overdue)
        self._dropped.clear()

    @property
    def suspended(self) -> bool:
        """Whether a seek runs (see :meth:`suspend`)."""
        return self._suspended > 0

    def expect(self, tp: Any, offset: int | None) -> None:
        """``tp`` is read from ``offset`` next (None: unknown, the next record delivered sets it)."""
        self._seeking.pop(tp, None)
        if offset is None:
            self._next.pop(tp, None)
        else:
            self._next[tp] = offset

    def pass_to(self, tp: Any, offset: int) -> None:
        """The offsets from the one due up to ``offset`` hold no record: ``offset`` is due next. A re-read
        still to come (records after them were dropped) is re-pointed there, not cancelled."""
        self._next[tp] = offset
        sought = self._seeking.get(tp)
        if sought is not None:
            self._seeking[tp] = (offset, sought[1])

    def next_due(self, tp: Any) -> int | None:
        """The offset due next from ``tp`` (None: unknown, or a seek runs)."""
        return None if self._suspended else self._next.get(tp)

    def forget(self, tps: Iterable[Any]) -> None:
        self.epoch += 1
        for tp in tps:
            self._next.pop(tp, None)
            self._seeking.pop(tp, None)
            self._dropped.discard(tp)

    def due(self, tp: Any, offset: int) -> bool:
        """Whether the record at ``offset`` is the next one due (then it is delivered and the one after
        it becomes due); False: a record before it was passed over, or it was already delivered, or a
        seek is running."""
        if self._suspended:
            self._dropped.add(tp)
            return False
        expected = self._next.get(tp)
        if expected is None or offset == expected:
            self._next[tp] = offset + 1
            self._seeking.pop(tp, None)
            return True
        return False

    def seek_target(self, tp: Any) -> int | None:
        """Where to seek ``tp`` after a record was not due: its next offset due, unless a seek there was
        issued less than :attr:`SEEK_AGAIN_AFTER` seconds ago (None)."""
        target = self._next.get(tp)
        if target is None or self._suspended:
            return None
        now = self._monotonic()
        previous = self._seeking.get(tp)
        if previous is not None and previous[0] == target and now - previous[1] < self.SEEK_AGAIN_AFTER:
            return None
        self._seeking[tp] = (target, now)
        return target

    def stale_seeks(self) -> list[tuple[Any, int]]:
        """Partitions sought :attr:`SEEK_AGAIN_AFTER` seconds ago or more whose offset due has still not
        come, with that offset: seek them again (each is then timed anew)."""
        if self._suspended:
            return []
        now = self._monotonic()
        stale = [
            (tp, target)
            for tp, (target, since) in self._seeking.items()
            if self._next.get(tp) == target and now - since >= self.SEEK_AGAIN_AFTER
        ]
        for tp, target in stale:
            self._seeking[tp] = (target, now)
        return stale


class IntakeConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer whose fetch loop hands the intake topics' messages to ``app.intake``.

    Seeks go through ``seek_wait`` (run on the consumer's thread): Faust's ``seek`` calls aiokafka from
    this thread while the consumer thread reads the fetched records (a ``KeyError`` in aiokafka's
    ``fetched_records`` crashed a worker)."""

    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _intake(self) -> IntakeBuffer | None:
        return cast(IntakeBuffer | None, getattr(self.app, "intake", None))

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        intake = self._intake()
        if intake is not None:
            intake.clear()
        async with cast(IntakeApp, self.app).changelog_lock:  # a changelog write in progress is queued
            pass  # before Faust flushes the producer (the app is marked rebalancing: no new one starts)
        self._forget_revoked(revoked)
        await super().on_partitions_revoked(revoked)

    def _forget_revoked(self, revoked: Iterable[TP]) -> None:
        """What this consumer knew of the positions of ``revoked`` partitions, gone with them (Faust forgets
        their acknowledgements and committed offsets too): the next assignment's seek says it again. A
        seek start kept past it would be taken for the partition's commit start once Faust forgot the
        committed offset, and acknowledgements arriving after the revocation for a hole."""
        self._order.forget(revoked)
        for tp in revoked:
            self._starts.pop(tp, None)
            self._holes.pop(tp, None)

    @cached_property
    def _order(self) -> ReadOrder:
        return ReadOrder()

    async def perform_seek(self) -> None:
        """Faust's seek of every partition to its committed offset, and of every stream partition without
        one to its earliest offset; those are the next offsets due. Records already in the intake were
        fetched before the seek: they are dropped, and read again from there.

        aiokafka seeks only the partitions committed past offset 0, and Faust resumes fetching before it
        seeks: a newly assigned partition without a committed offset was read from wherever fetches
        during the recovery left it, and those records were dropped (flow was stopped). The first record
        after them would then have been taken as the start, and the ones before it never processed, yet
        committed past: a worker that received such a partition in a later rebalance lost its first
        records (``tests/integration/test_scale_out.py`` caught it on a loaded machine).

        Every assigned intake partition is expected from where it was sought, those sought to offset 0
        included: Faust's seek forgets their read offset (``_seek_wait``), and a partition left without an
        expectation took the first record delivered as its start, so the records a fetch brought in while
        the seek ran (dropped) were passed over, and, never committed before, committed past.
        """
        order = self._order
        order.suspend()  # the fetch loop runs on while we wait for the seeks: what it delivers meanwhile is dropped
        try:
            await super().perform_seek()
            committed = dict(self._read_offset)  # as Faust's seek read them; the seeks below change _read_offset
            starts = await self._seek_uncommitted_to_start(committed)
            self._starts = starts
            intake = self._intake()
            if intake is not None:
                intake.clear()
                for tp in self.assignment():
                    if tp.topic in intake.topics:
                        order.expect(tp, starts.get(tp, committed.get(tp)))
        finally:
            order.resume()

    async def _seek_uncommitted_to_start(self, committed: Mapping[TP, int | None]) -> dict[TP, int]:
        """Seek each assigned stream partition (not a table's changelog: recovery reads those) that has no
        ``committed`` offset to its earliest offset, and those committed at 0 to 0 (aiokafka seeks neither);
        returns where each was sought."""
        changelogs = self.app.tables.changelog_topics
        assigned = self.assignment()
        starts: dict[TP, int | None] = {
            tp: offset
            for tp, offset in committed.items()
            if not offset and tp.topic not in changelogs and tp in assigned
        }
        unknown = [tp for tp, offset in starts.items() if offset is None]
        if unknown:
            starts.update(await self.earliest_offsets(*unknown))
        sought: dict[TP, int] = {tp: offset or 0 for tp, offset in starts.items()}
        if sought:
            await self.seek_wait(sought)
        return sought

    async def _read_again(self, tp: TP, offset: int) -> None:
        """Seek ``tp`` back to its next offset due, the record at ``offset`` having come instead (once per
        hole: records after the hole that were already fetched are dropped without seeking again).

        Unless the broker deleted the records from the offset due (retention ran before this group read
        them: every seek there lands on the partition's first record): they are gone, so the partition
        is expected from its first record on, which commits may then pass; the loss is logged as an
        error and counted in ``engagement_records_expired_total``."""
        target = self._order.seek_target(tp)
        if target is None:
            return
        if offset > target:
            firsts = await self._first_existing({tp: target})
            if firsts is None:
                return
            target = firsts[tp]
        self.log.info("re-reading %s from offset %d: the fetch passed records over", tp, target)
        await self.seek_wait({tp: target})

    async def _first_existing(self, due: Mapping[TP, int]) -> dict[TP, int] | None:
        """Where to read each partition of ``due`` (partition -> offset due) from: the offset due, or the
        partition's first offset where the broker deleted it (then handled by :meth:`_skip_expired`).
        None when a seek or a revocation happened meanwhile (what is due was said again)."""
        earliest: Mapping[TP, int | None]
        epoch = self._order.epoch
        try:
            earliest = await self.earliest_offsets(*due)
        except Exception as exc:  # the broker did not answer: read again from the offsets due
            self.log.warning("the first offsets of %s are unknown (%r): reading them again", sorted(due), exc)
            earliest = {}
        if self._order.suspended or self._order.epoch != epoch:
            return None
        firsts = dict(due)
        for tp, offset in due.items():
            first = earliest.get(tp)
            if first is not None and first > offset:
                self._skip_expired(tp, offset, first)
                firsts[tp] = first
        return firsts

    def _skip_expired(self, tp: TP, due: int, earliest: int) -> None:
        """Records ``due``..``earliest - 1`` of ``tp`` no longer exist: expect ``earliest`` next, and let
        commits start there."""
        self.log.error(
            "records %d..%d of %s were deleted by the broker (retention) before this consumer group read "
            "them: they are lost; reading on from %d",
            due,
            earliest - 1,
            tp,
            earliest,
        )
        metrics.RECORDS_EXPIRED.labels(tp.topic).inc(earliest - due)
        self._order.expect(tp, earliest)
        self._order.seek_target(tp)  # the seek issued now
        # Commits start there: later acknowledgements before it are refused (Consumer.ack), earlier ones
        # dropped at the next commit (_new_offset).
        self._committed_offset[tp] = earliest

    def _pass_hole(self, tp: TP, offset: int) -> bool:
        """Whether the record at ``offset``, not the one due, comes after offsets the fetch skipped on
        purpose (:mod:`pipeline.fetch_holes`: transaction markers, aborted transactions, compaction):
        then those offsets are passed over (committable without a record) and the record is due."""
        due = self._order.next_due(tp)
        if due is None or offset <= due:
            return False
        if HOLES.take(tp.topic, tp.partition, due, until=offset) < offset:
            return False
        self._passed(tp, due, offset)
        return self._order.due(tp, offset)

    def _pass_trailing_holes(self, topics: frozenset[str]) -> None:
        """Pass over the offsets skipped on purpose right after the last record of each partition of
        ``topics`` (a transaction's commit marker at the end of a partition): else its commits would stop
        before them."""
        order = self._order
        for tp in self.assignment():
            if tp.topic not in topics:
                continue
            due = order.next_due(tp)
            if due is None:
                continue
            end = HOLES.take(tp.topic, tp.partition, due)
            if end > due:
                self._passed(tp, due, end)
                self._trailing[tp] = (due, end)

    @cached_property
    def _trailing(self) -> dict[TP, tuple[int, int]]:
        """Per partition, the last run of offsets without records passed after its last record."""
        return {}

    def records_end(self, tp: TP, highwater: int) -> int:
        """``highwater`` (the partition's log end), or, when the log ends with offsets without records that
        were passed after its last record (a transaction's marker), the offset after that record: where
        a reader of every record stands once it read them all."""
        trailing = self._trailing.get(tp)
        if trailing is not None and trailing[1] == highwater:
            return trailing[0]
        return highwater

    def _passed(self, tp: TP, start: int, end: int) -> None:
        """Offsets ``start``..``end - 1`` of ``tp`` hold no record: expect ``end`` next, and let commits pass
        them (as a gap of Faust's, which :meth:`_new_offset` reads; the partition is listed among those
        with acknowledgements, the only ones Faust commits)."""
        self._order.pass_to(tp, end)
        gaps = self._gap[tp]
        gaps.addi(start, end)
        gaps.merge_overlaps()
        self._acked.setdefault(tp, [])
        metrics.OFFSETS_WITHOUT_RECORDS.labels(tp.topic).inc(end - start)

    def _past_gaps(self, tp: TP, offset: int) -> int:
        """The end of the run of gaps (offsets without records) that starts at ``offset``; ``offset`` if none."""
        gaps = self._gap[tp]
        while True:
            covering = gaps.at(offset)
            if not covering:
                return offset
            offset = max(interval.end for interval in covering)

    async def _seek_stale_again(self) -> None:
        """Seek again the partitions whose re-read never came (:meth:`ReadOrder.stale_seeks`), or from their
        first record if the broker deleted the offset due (see :meth:`_read_again`)."""
        stale = self._order.stale_seeks()
        if not stale:
            return
        firsts = await self._first_existing(dict(stale))
        if firsts is None:
            return
        for tp, target in firsts.items():
            self.log.info("re-reading %s from offset %d again: nothing came since the last seek", tp, target)
        await self.seek_wait(firsts)

    @cached_property
    def _starts(self) -> dict[TP, int]:
        """Where the last seek put each intake partition without a committed offset (see perform_seek)."""
        return {}

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp`` (Faust's: the end of the acknowledged run from the committed
        offset), or None. For an intake partition, None as long as the lowest acknowledged offset is not
        the committed one (or, before any commit, where the last seek started it) or right after offsets
        without records (transaction markers, see :meth:`_pass_hole`): Faust checks that only after a
        first commit and lets one record through, and a commit past a record never acknowledged loses it.
        Logged (once per hole) as an error: unless the records before the lowest acknowledged one are
        acknowledged later, they were passed over, and are read again only after a restart or a
        rebalance; nothing is committed for the partition until then. Acknowledgements of offsets before
        the start are dropped (Faust's own rule drops them too): records committed already, or gone
        (deleted by retention), or of an earlier ownership of the partition, acknowledged after it moved.
        A run that ends at offsets without records commits past them."""
        intake = self._intake()
        if intake is None or tp.topic not in intake.topics:
            return super()._new_offset(tp)
        acked = self._acked[tp]
        start = self._committed_offset[tp]
        if start is None:
            start = self._starts.get(tp)
        if start is None:
            return super()._new_offset(tp)
        if acked and min(acked) < start:  # before the start: committed already, or gone (expired, or moved away)
            self._forget_acks(tp, start)
        result = None
        if acked:
            lowest = min(acked)
            if lowest > self._past_gaps(tp, start):
                if self._holes.get(tp) != start:
                    self._holes[tp] = start
                    self.log.error(
                        "not committing %s: offsets %d..%d are not acknowledged, %d is; nothing is committed "
                        "for it until they are (after a restart or a rebalance, they are read again)",
                        tp,
                        start,
                        lowest - 1,
                        lowest,
                    )
                return None
            result = super()._new_offset(tp)  # takes the gaps before the last acknowledgement as acknowledged
        reached = start if result is None else result
        beyond = self._past_gaps(tp, reached)
        if beyond > reached:
            self._gap[tp].chop(0, beyond)
            return beyond
        return result

    def _forget_acks(self, tp: TP, below: int) -> None:
        """Drop the acknowledgements of ``tp`` for offsets before ``below``: nothing is committed for them."""
        acked = self._acked[tp]
        index = self._acked_index[tp]
        stale = [offset for offset in acked if offset < below]
        acked[:] = [offset for offset in acked if offset >= below]
        index.difference_update(stale)

    @cached_property
    def _holes(self) -> dict[TP, int]:
        """The hole last logged per partition (logged once)."""
        return {}

    def ack_batch(self, messages: Iterable[Message]) -> None:
        """:meth:`~faust.transport.consumer.Consumer.ack` for each message (under one lock): each offset
        becomes committable once every offset before it is."""
        ack = self.ack
        with ack_lock:
            for message in messages:
                ack(message)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover (covered by integration)
        """``faust.transport.consumer.Consumer._drain_messages`` (faust-streaming 0.15), but messages of
        the intake topics are appended to the buffer instead of being awaited through the conductor."""
        intake = self._intake()
        if intake is None:
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        app = self.app
        acks_enabled_for = app.topics.acks_enabled_for
        intake_topics = intake.topics
        order = self._order
        put = intake.put
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in getmany(timeout=1.0):
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        if message.topic in intake_topics:
                            # A record of an earlier consumer generation (a rebalance ran during an await of
                            # this loop) is neither taken nor due: its partition is read again as the seek
                            # of the new generation said. Between taking a record (due) and putting it in
                            # the intake nothing is awaited: a seek (which empties the intake and says what
                            # is due next) sees it either not taken, or taken and dropped.
                            if message.generation_id != app.consumer_generation_id:
                                continue
                            if not order.due(tp, offset) and not self._pass_hole(tp, offset):
                                await self._read_again(tp, offset)  # a hole before it: never pass records over
                                continue
                            set_read_offset(tp, offset)
                            if not put(message):
                                await self.wait_first(intake.space.wait(), self.suspend_flow.wait())
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            continue
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    self._pass_trailing_holes(intake_topics)
                    await self._seek_stale_again()
                    self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class IntakeTransport(aiokafka_driver.Transport):
    Consumer = IntakeConsumer


class IntakeApp(faust.App):
    """A Faust app whose consumer feeds :attr:`intake` (set it before the worker starts)."""

    intake: IntakeBuffer | None = None
    fetch_max_wait_ms: int | None = None  # None: Faust's 1500
    # The worker's web pages given its loop (pipeline.worker sets it; run_worker serves them on a thread
    # of their own, pipeline.web).
    pages: Callable[[asyncio.AbstractEventLoop], list[Route]] | None = None

    @cached_property
    def changelog_lock(self) -> asyncio.Lock:
        """Held while account states are written to the table's changelog (see the worker)."""
        return asyncio.Lock()

    def _new_transport(self) -> Any:
        return IntakeTransport(self.conf.broker_consumer, self)

    async def take_batch(self) -> list[Message]:
        """The next batch of intake messages of the current consumer generation, once flow is active
        (not during a rebalance). Messages fetched before a rebalance are dropped: they are fetched again
        from the committed offset."""
        assert self.intake is not None
        while True:
            batch = await self.intake.take()
            await self.flow_control.acquire()
            generation = self.consumer_generation_id
            fresh = [m for m in batch if m.generation_id == generation]
            if fresh:
                metrics.MESSAGES_TAKEN.inc(len(fresh))
                return fresh
