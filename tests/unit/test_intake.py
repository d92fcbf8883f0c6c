"""The bulk intake: its batching, and the guard on the Faust code it copies."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from typing import Any

import faust.transport.consumer
from faust.types import TP, Message

import pipeline.intake
from pipeline.intake import IntakeBuffer

# sha256 of faust-streaming 0.15.3's Consumer._drain_messages, which IntakeConsumer._drain_messages copies.
FAUST_DRAIN_MESSAGES_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


def message(offset: int, value: bytes = b"{}") -> Message:
    return Message("t", 0, offset, 0.0, 0, None, None, value, None, tp=TP("t", 0))


def offsets(batch: list[Message]) -> list[int]:
    return [m.offset for m in batch]


def committing_consumer(
    topic: str, committed: dict[TP, int], logged: list[str], **more: Any
) -> pipeline.intake.IntakeConsumer:
    """An :class:`~pipeline.intake.IntakeConsumer` with Faust's commit bookkeeping, without Kafka: ``topic``
    is its intake topic, ``committed`` the committed offsets Faust knows, errors logged go to ``logged``;
    ``more`` sets or replaces other attributes."""
    from collections import defaultdict
    from types import SimpleNamespace

    from intervaltree import IntervalTree

    consumer = object.__new__(pipeline.intake.IntakeConsumer)
    vars(consumer).update(
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None, committed),
        app=SimpleNamespace(intake=IntakeBuffer({topic}, batch_size=10, within=10.0)),
        log=SimpleNamespace(
            error=lambda text, *args: logged.append(text % args), info=lambda *args: None, warning=lambda *args: None
        ),
    )
    vars(consumer).update(more)
    return consumer


def test_the_copied_faust_fetch_loop_is_unchanged_upstream() -> None:
    source = inspect.getsource(faust.transport.consumer.Consumer._drain_messages)
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_DRAIN_MESSAGES_SHA256, (
        "faust-streaming changed Consumer._drain_messages: port the change to pipeline/intake.py, then update this hash"
    )


def test_batches_close_at_their_size_and_the_buffer_pushes_back() -> None:
    async def run() -> None:
        buffer = IntakeBuffer({"t"}, batch_size=3, within=10.0, capacity_batches=2)
        accepted = [buffer.put(message(offset)) for offset in range(6)]
        assert accepted == [True, True, True, True, True, False] and not buffer.space.is_set()
        assert offsets(await buffer.take()) == [0, 1, 2] and buffer.space.is_set()
        assert offsets(await buffer.take()) == [3, 4, 5]

    asyncio.run(run())


def test_an_open_batch_is_taken_within_its_time() -> None:
    async def run() -> tuple[list[int], float]:
        buffer = IntakeBuffer({"t"}, batch_size=100, within=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        buffer.put(message(0))
        loop.call_later(0.05, buffer.put, message(1))
        batch = await buffer.take()
        return offsets(batch), loop.time() - started

    batch, waited = asyncio.run(run())
    assert batch == [0, 1] and 0.15 <= waited < 1.0


def test_after_a_long_batch_what_waited_is_taken_at_once() -> None:
    """The fetch loop puts messages only while the worker awaits, so a batch opened at the end of a long
    batch holds messages that waited all along: the worker takes them at once instead of idling."""

    async def run() -> tuple[list[int], float, list[int], float]:
        buffer = IntakeBuffer({"t"}, batch_size=100, within=0.2)
        loop = asyncio.get_running_loop()
        buffer.put(message(0))
        await buffer.take()  # within its time
        await asyncio.sleep(0.25)  # the worker processes its batch for longer than within
        buffer.put(message(1))
        started = loop.time()
        late = await buffer.take()
        waited_late = loop.time() - started
        buffer.put(message(2))  # a quick batch after: the next one waits for its time again
        started = loop.time()
        quick = await buffer.take()
        return offsets(late), waited_late, offsets(quick), loop.time() - started

    late, waited_late, quick, waited_quick = asyncio.run(run())
    assert late == [1] and waited_late < 0.15
    assert quick == [2] and waited_quick >= 0.15


def test_clearing_drops_everything_and_frees_space() -> None:
    async def run() -> None:
        buffer = IntakeBuffer({"t"}, batch_size=1, within=10.0, capacity_batches=1)
        assert buffer.put(message(0)) is False
        buffer.clear()
        assert len(buffer) == 0 and buffer.space.is_set()

    asyncio.run(run())


def test_read_order_delivers_in_order_and_reads_a_hole_again_once() -> None:
    from pipeline.intake import ReadOrder

    now = [0.0]
    order = ReadOrder(monotonic=lambda: now[0])
    assert order.due("p", 7)  # unknown position: the first record sets it
    assert order.due("p", 8)
    assert not order.due("p", 11)  # 9 and 10 were passed over by the fetch
    assert order.seek_target("p") == 9
    assert not order.due("p", 12) and order.seek_target("p") is None  # fetched before the seek: dropped
    now[0] = 10.0
    assert order.seek_target("p") == 9  # the re-read never came: seek again
    assert order.due("p", 9) and order.due("p", 10) and order.due("p", 11)


def test_read_order_after_a_seek_to_the_committed_offset() -> None:
    from pipeline.intake import ReadOrder

    order = ReadOrder()
    order.expect("p", 100)
    assert not order.due("p", 101) and order.seek_target("p") == 100  # the head record was passed over
    assert not order.due("p", 99)  # already delivered
    assert order.due("p", 100)
    order.forget(["p"])
    assert order.due("p", 5)  # revoked, then assigned again: unknown until the next seek


def test_no_record_is_due_while_a_seek_runs_and_a_seek_that_brings_nothing_is_issued_again() -> None:
    from pipeline.intake import ReadOrder

    now = [0.0]
    order = ReadOrder(monotonic=lambda: now[0])
    order.suspend()
    order.suspend()  # nested seeks
    assert not order.due("p", 0) and order.seek_target("p") is None  # maybe fetched before the seek: dropped
    order.resume()
    assert not order.due("p", 0) and order.stale_seeks() == []
    order.expect("p", 30)
    order.expect("q", 5)
    assert not order.due("q", 5)  # fetched after the seek, yet dropped: the fetch is now past it
    order.resume()
    assert sorted(order.stale_seeks()) == [("p", 30), ("q", 5)]  # read both again from their offsets due, at once
    assert order.due("q", 5)
    assert not order.due("p", 71) and order.seek_target("p") is None  # sought just now: not again yet
    assert order.stale_seeks() == []
    now[0] = 5.0  # the fetch was already at the partition's end: no record came to ask again
    assert order.stale_seeks() == [("p", 30)] and order.stale_seeks() == []  # timed anew
    now[0] = 10.0
    assert order.stale_seeks() == [("p", 30)]
    assert order.due("p", 30) and order.stale_seeks() == []  # it came: nothing pending


def test_the_private_faust_and_aiokafka_parts_the_worker_reads_exist() -> None:
    """pipeline.worker reads each partition's last fetch time (for the freshness of its highwater) through
    Faust's consumer thread: ``Consumer._thread._ensure_consumer().last_poll_timestamp(tp)``."""
    import aiokafka
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread_init = inspect.getsource(faust.transport.consumer.ThreadDelegateConsumer.__init__)
    assert "self._thread = " in thread_init
    assert callable(faust_aiokafka.AIOKafkaConsumerThread._ensure_consumer)
    assert "partition" in inspect.signature(aiokafka.AIOKafkaConsumer.last_poll_timestamp).parameters


def test_a_batch_closes_at_its_byte_bound_before_its_message_count() -> None:
    async def run() -> list[int]:
        buffer = IntakeBuffer({"t"}, batch_size=100, within=10.0, max_bytes=1000)
        for offset in range(7):
            buffer.put(message(offset, b"x" * 300))  # the 4th message reaches 1,200 bytes: the batch closes
        first = await buffer.take()
        assert buffer._open_bytes == 900 and len(buffer) == 3
        return offsets(first)

    assert asyncio.run(run()) == [0, 1, 2, 3]


def test_a_partition_without_a_committed_offset_is_read_from_its_start_after_the_seek() -> None:
    """Faust resumes fetching before it seeks to the committed offsets, and aiokafka seeks only partitions
    committed past 0: a new partition's records fetched during the recovery were dropped, and the next
    one was taken as its start. The seek now puts every uncommitted stream partition at its earliest
    offset (not the changelog: recovery reads it), drops what the intake holds, and expects exactly that
    offset first."""
    from collections import defaultdict
    from types import SimpleNamespace

    from pipeline.intake import IntakeConsumer

    new, committed, at_zero, changelog, revoked = (
        TP("likes", 2),
        TP("likes", 5),
        TP("engagement-dead-letters", 2),
        TP("state-changelog", 2),
        TP("likes", 9),
    )
    sought: dict[TP, int] = {}
    consumer = object.__new__(IntakeConsumer)

    async def seek_to_committed() -> dict[TP, int]:
        return {new: -1, committed: 40, at_zero: 0, changelog: -1}

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        assert set(tps) == {new}  # only those without a committed offset
        return {new: 3}  # retention removed 0..2

    async def seek_wait(offsets: dict[TP, int]) -> None:
        sought.update(offsets)

    intake = IntakeBuffer({"likes"}, batch_size=10, within=10.0)
    intake.put(message(70))  # fetched during the recovery, before the seek
    vars(consumer).update(
        _read_offset=defaultdict(lambda: None, {revoked: None}),
        _committed_offset={},
        seek_to_committed=seek_to_committed,
        earliest_offsets=earliest_offsets,
        seek_wait=seek_wait,
        assignment=lambda: {new, committed, at_zero, changelog},
        app=SimpleNamespace(intake=intake, tables=SimpleNamespace(changelog_topics={"state-changelog"})),
    )
    asyncio.run(consumer.perform_seek())
    assert sought == {new: 3, at_zero: 0}
    assert len(intake) == 0
    order = consumer._order
    assert not order.due(new, 70) and order.seek_target(new) == 3  # a record past the start: read again
    assert order.due(new, 3)
    assert not order.due(committed, 41) and order.due(committed, 40)


def test_a_partition_sought_to_offset_zero_is_expected_from_zero() -> None:
    """Faust's seek forgets the read offset of a partition it puts at offset 0 (``_seek_wait``), and the
    expectations were taken from the read offsets: a never-committed partition starting at 0 had none, and
    took whatever record came first as its start. A fetch that ran during the seek (its records dropped)
    left the consumer past them, so they were never processed, yet committed past (the kill -9 chaos test
    lost the first message of four partitions that way). Every assigned intake partition is now expected
    from where it was sought."""
    from collections import defaultdict
    from types import SimpleNamespace

    from pipeline.intake import IntakeConsumer

    at_zero, committed, dead_letters = TP("likes", 1), TP("likes", 2), TP("engagement-dead-letters", 0)
    consumer = object.__new__(IntakeConsumer)
    read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)

    async def seek_to_committed() -> dict[TP, int]:
        return {at_zero: -1, committed: 40, dead_letters: -1}

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    thread = object.__new__(AIOKafkaConsumerThread)  # Faust's own seek, on a stand-in aiokafka consumer
    vars(thread).update(
        consumer=consumer,
        app=SimpleNamespace(conf=SimpleNamespace(broker_request_timeout=5.0)),
        log=SimpleNamespace(dev=lambda *args: None),
    )

    async def position(tp: TP) -> int:
        return 0

    aiokafka_consumer = SimpleNamespace(seek=lambda tp, offset: None, position=position)

    async def seek_wait(offsets: dict[TP, int]) -> None:
        await thread._seek_wait(aiokafka_consumer, offsets)  # type: ignore[arg-type]

    vars(consumer).update(
        _read_offset=read_offset,
        _committed_offset={},
        seek_to_committed=seek_to_committed,
        earliest_offsets=earliest_offsets,
        seek_wait=seek_wait,
        assignment=lambda: {at_zero, committed, dead_letters},
        app=SimpleNamespace(
            intake=IntakeBuffer({"likes"}, batch_size=10, within=10.0),
            tables=SimpleNamespace(changelog_topics=set()),
        ),
    )
    asyncio.run(consumer.perform_seek())
    order = consumer._order
    assert not order.due(at_zero, 1) and order.seek_target(at_zero) == 0  # record 0 is due, not whatever comes
    assert order.due(at_zero, 0) and order.due(at_zero, 1)
    assert not order.due(committed, 41) and order.due(committed, 40)
    assert consumer._starts == {at_zero: 0, dead_letters: 0}


def test_a_commit_never_passes_an_intake_record_that_was_not_acknowledged() -> None:
    """Faust commits the first run of acknowledged offsets without looking at where it starts before a
    partition's first commit, and after one lets a single missing record through: either commit loses
    the records before the run. For the intake topics the run must start at the committed offset (or,
    before any commit, where the seek started the partition); other topics keep Faust's rule."""
    new, committed, other = TP("likes", 1), TP("likes", 2), TP("engagement-dead-letters", 0)
    logged: list[str] = []
    consumer = committing_consumer("likes", {committed: 40}, logged, _starts={new: 0})
    consumer._acked[new] = [1, 2, 3]  # 0 never acknowledged
    consumer._acked[committed] = [41, 42]  # 40 never acknowledged: Faust lets one through
    consumer._acked[other] = [5, 6]
    assert consumer._new_offset(new) is None
    assert consumer._new_offset(committed) is None
    assert consumer._new_offset(other) == 7  # not an intake topic: Faust's own rule
    assert len(logged) == 2 and "offsets 0..0 are not acknowledged" in logged[0]
    consumer._new_offset(new)
    assert len(logged) == 2  # each hole is logged once
    consumer._acked[new].append(0)
    consumer._acked[committed].append(40)
    assert consumer._new_offset(new) == 4
    assert consumer._new_offset(committed) == 43


def test_records_deleted_by_retention_before_they_were_read_are_counted_and_passed() -> None:
    """A group that fell behind the topic's retention (a worker down longer than it) is sought to its
    committed offset, whose records no longer exist: the consumer lands on the partition's first record
    at every seek, and re-reading from the offset due would go on forever. The records are gone: the
    partition goes on from its first record, commits may pass them, and the loss is counted. A hole
    whose records still exist is read again as before."""
    from pipeline import metrics

    behind, fine, unknown = TP("likes", 3), TP("likes", 4), TP("likes", 5)
    sought: list[dict[TP, int]] = []
    logged: list[str] = []

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        if unknown in tps:
            raise ConnectionError("the broker is away")
        return {tp: {behind: 25, fine: 0}[tp] for tp in tps}

    async def seek_wait(offsets: dict[TP, int]) -> None:
        sought.append(offsets)

    consumer = committing_consumer(
        "likes", {behind: 10, fine: 7}, logged, earliest_offsets=earliest_offsets, seek_wait=seek_wait
    )
    order = consumer._order
    order.expect(behind, 10)
    order.expect(fine, 7)
    expired = metrics.RECORDS_EXPIRED.labels("likes")
    before = expired._value.get()

    consumer._acked[behind] = [10, 11]  # processed before the rest was deleted, not committed yet
    consumer._acked_index[behind] = {10, 11}
    assert not order.due(behind, 25)  # the consumer was reset to the first record there is
    asyncio.run(consumer._read_again(behind, 25))
    assert sought == [{behind: 25}]
    assert expired._value.get() - before == 15 and "records 10..24 of" in logged[0]
    assert order.due(behind, 25)
    consumer._acked[behind] += [25, 26]
    assert consumer._new_offset(behind) == 27  # commits pass the records that are gone

    assert not order.due(fine, 9)
    asyncio.run(consumer._read_again(fine, 9))
    assert sought[-1] == {fine: 7} and order.due(fine, 7)  # they exist: read again
    assert expired._value.get() - before == 15 and len(logged) == 1

    order.expect(unknown, 3)
    assert not order.due(unknown, 8)
    asyncio.run(consumer._read_again(unknown, 8))
    assert sought[-1] == {unknown: 3}  # the broker did not say where the partition starts: read it again


def test_a_seek_that_brings_nothing_because_the_records_were_deleted_goes_on_from_the_first_record() -> None:
    """The other way the expiry shows: records dropped while a seek ran leave the partition due a seek
    that is issued again every few seconds while nothing comes. When the offset due no longer exists,
    that seek goes to the partition's first record instead of looping."""
    from collections import defaultdict
    from types import SimpleNamespace

    from pipeline import metrics
    from pipeline.intake import IntakeConsumer, ReadOrder

    behind, fine = TP("replies", 0), TP("replies", 1)
    now = [100.0]
    consumer = object.__new__(IntakeConsumer)
    sought: list[dict[TP, int]] = []

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return {tp: {behind: 50, fine: 0}[tp] for tp in tps}

    async def seek_wait(offsets: dict[TP, int]) -> None:
        sought.append(dict(offsets))

    vars(consumer).update(
        _order=ReadOrder(monotonic=lambda: now[0]),
        _committed_offset=defaultdict(lambda: None, {behind: 20, fine: 9}),
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        earliest_offsets=earliest_offsets,
        seek_wait=seek_wait,
        log=SimpleNamespace(error=lambda *args: None, info=lambda *args: None, warning=lambda *args: None),
    )
    order = consumer._order
    expired = metrics.RECORDS_EXPIRED.labels("replies")
    before = expired._value.get()
    order.suspend()
    order.expect(behind, 20)
    order.expect(fine, 9)
    assert not order.due(behind, 50) and not order.due(fine, 9)  # dropped while the seek ran
    order.resume()
    asyncio.run(consumer._seek_stale_again())
    assert sought == [{behind: 50, fine: 9}]
    assert expired._value.get() - before == 30
    assert consumer._committed_offset[behind] == 50
    assert order.due(behind, 50) and order.due(fine, 9)


def test_acknowledgements_before_the_start_never_hold_commits_back() -> None:
    """Acknowledgements of offsets before where a partition's commits start are not holes: a commit in
    flight when the partition was revoked puts back a committed offset Faust had just forgotten, and the
    acknowledgements of its last batches arrive after it moved away; when the partition comes back, its
    committed offset is far past them. They are dropped, and commits go on from the committed offset."""
    returned = TP("likes", 6)
    logged: list[str] = []
    consumer = committing_consumer("likes", {returned: 10_000}, logged)  # read at its new assignment
    consumer._acked[returned] += [250, 251, 252]  # of its earlier ownership
    consumer._acked_index[returned].update({250, 251, 252})
    assert consumer._new_offset(returned) is None and not logged  # nothing to commit, no hole
    assert consumer._acked[returned] == [] and consumer._acked_index[returned] == set()
    consumer._acked[returned] += [10_000, 10_001]
    assert consumer._new_offset(returned) == 10_002


def test_a_seek_or_a_revocation_while_the_first_offsets_are_asked_cancels_the_re_read() -> None:
    """Asking the broker where a partition starts is a wait: a seek of a new generation, or the
    partition's revocation, may happen meanwhile. What was due before it no longer says anything: no
    seek is issued from it (a partition no longer assigned cannot be sought: the fetch loop would die)."""
    from collections import defaultdict
    from types import SimpleNamespace

    from pipeline.intake import IntakeConsumer

    tp = TP("likes", 7)
    consumer = object.__new__(IntakeConsumer)
    sought: list[dict[TP, int]] = []

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        consumer._order.forget([tp])  # revoked while the broker answered
        return dict.fromkeys(tps, 90)

    async def seek_wait(offsets: dict[TP, int]) -> None:
        sought.append(offsets)

    vars(consumer).update(
        _committed_offset=defaultdict(lambda: None, {tp: 40}),
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        earliest_offsets=earliest_offsets,
        seek_wait=seek_wait,
        log=SimpleNamespace(error=lambda *args: None, info=lambda *args: None, warning=lambda *args: None),
    )
    consumer._order.expect(tp, 40)
    assert not consumer._order.due(tp, 95)
    asyncio.run(consumer._read_again(tp, 95))
    assert sought == [] and consumer._committed_offset[tp] == 40  # nothing sought, nothing skipped


def test_the_fetch_loop_takes_no_record_of_an_earlier_generation_and_commits_after_putting_one() -> None:
    """The copied fetch loop awaits (a commit, the wait for space) while a rebalance may run. A record
    stamped with the generation before it must be neither taken nor marked due: the intake drops it as
    stale, and a record marked due but never processed is passed over when it comes again. And the
    commit is awaited only once the record taken is in the intake, where a seek finds and drops it."""
    import threading
    from collections import defaultdict
    from types import SimpleNamespace

    from pipeline.intake import IntakeConsumer

    tp = TP("likes", 0)
    consumer = object.__new__(IntakeConsumer)
    intake = IntakeBuffer({"likes"}, batch_size=100, within=10.0)
    app = SimpleNamespace(intake=intake, consumer_generation_id=1, topics=SimpleNamespace(acks_enabled_for=bool))
    stopped, fetcher_stopped, crashed = threading.Event(), threading.Event(), threading.Event()
    commits: list[int] = []

    def record(offset: int, generation: int) -> Message:
        return Message("likes", 0, offset, 0.0, 0, None, None, b"{}", None, tp=tp, generation_id=generation)

    async def getmany(timeout: float) -> Any:
        yield tp, record(4, 1)
        yield tp, record(5, 1)  # stamped before the rebalance that the commit after record 4 lets run
        stopped.set()

    async def commit() -> None:  # a rebalance and its seek run while the commit is awaited
        commits.append(len(intake))
        app.consumer_generation_id = 2
        consumer._order.suspend()
        intake.clear()
        consumer._order.expect(tp, 4)
        consumer._order.resume()

    async def nothing(*args: Any) -> None:
        return None

    vars(consumer).update(
        app=app,
        _stopped=stopped,
        _crashed=crashed,
        _read_offset=defaultdict(lambda: None),
        _commit_every=1,
        _n_acked=1,
        commit=commit,
        getmany=getmany,
        callback=nothing,
        sleep=nothing,
        diag=SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None),
        _seek_stale_again=nothing,
        assignment=lambda: {tp},
    )
    consumer._order.expect(tp, 4)
    asyncio.run(consumer._drain_messages(SimpleNamespace(_stopped=fetcher_stopped)))
    assert commits == [1]  # record 4 was in the intake when the commit (and the seek) ran
    assert len(intake) == 0  # the seek dropped it; record 5, of the generation before, was not taken
    assert consumer._order.due(tp, 4)  # both are read again, from 4


def test_acknowledgements_after_a_revocation_are_no_hole() -> None:
    """A partition sought to 0 and committed since is revoked; Faust forgets its committed offset, and the
    acknowledgement of its last batch arrives after that (the generation changes only at the next
    assignment). The seek start of the ownership that ended must not be taken for its commit start: that
    reported offsets 0..104 as never acknowledged (seen in the kill -9 stress runs)."""
    tp = TP("engagement-rekeyed", 1)
    logged: list[str] = []
    consumer = committing_consumer("engagement-rekeyed", {}, logged, _starts={tp: 0})  # Faust forgot its offset
    consumer._order.expect(tp, 105)
    consumer._forget_revoked({tp})
    consumer._acked[tp] += [105, 106]
    assert consumer._new_offset(tp) == 107 and not logged  # Faust's rule; its commit discards a revoked partition
    assert consumer._order.due(tp, 3)  # no expectation left: the next assignment's seek sets one
