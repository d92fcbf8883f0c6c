"""Offsets a fetch skips on purpose (transaction markers, aborted transactions, compaction) are noted by
aiokafka's unpacking and passed over by the intake; any other hole is still read again; commits pass
offsets without records, a partition's trailing marker included, and never a record not acknowledged."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from faust.types import TP

from pipeline import fetch_holes, metrics
from pipeline.fetch_holes import FetchHoles, HoleNotingRecords
from tests.unit.test_intake import committing_consumer


@pytest.fixture(autouse=True)
def no_notes_left() -> Iterator[None]:
    """The registry is the process's: each test starts and leaves it empty."""
    fetch_holes.HOLES.clear()
    yield
    fetch_holes.HOLES.clear()


def records_at(*offsets: int) -> MemoryRecords:
    """One record batch holding records at ``offsets`` (gaps between them, as compaction leaves them)."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1_000_000)
    for offset in offsets:
        builder.append(offset - offsets[0], timestamp=0, key=None, value=b"v", headers=[])
    raw = bytearray(builder.build())
    raw[0:8] = offsets[0].to_bytes(8, "big")  # the batch's base offset
    return MemoryRecords(bytes(raw))


def unpack(fetch_offset: int, *offsets: int) -> list[int]:
    partition_records = HoleNotingRecords(
        TopicPartition("likes", 0), records_at(*offsets), [], fetch_offset, None, None, False, 0
    )
    return [record.offset for record in partition_records]


def test_holes_before_between_and_after_the_records_of_a_fetch_are_noted() -> None:
    fetch_holes.HOLES.clear()
    assert unpack(3, 5, 6, 9) == [5, 6, 9]
    holes = fetch_holes.HOLES
    assert holes.take("likes", 0, 3, until=5) == 5  # before the first record
    assert holes.take("likes", 0, 7, until=9) == 9  # between records
    assert holes.take("likes", 0, 10) == 10  # none after the last: nothing taken
    assert holes.take("likes", 1, 3) == 3  # another partition: nothing


def test_a_run_of_holes_is_taken_whole_or_not_at_all() -> None:
    holes = FetchHoles()
    holes.watch({"t"})
    holes.note("t", 0, 10, 11)
    holes.note("t", 0, 11, 13)
    holes.note("changelog", 0, 13, 20)  # not watched: not noted
    assert holes.take("t", 0, 10, until=14) == 10  # the run ends at 13: 13 itself may be a record
    assert holes.take("t", 0, 10, until=13) == 13
    assert holes.take("t", 0, 10, until=13) == 10  # taken
    assert holes.take("changelog", 0, 13) == 13


def test_aiokafka_builds_its_partition_records_by_the_name_install_replaces() -> None:
    fetch_holes.install()
    assert fetcher.PartitionRecords is HoleNotingRecords
    assert "partition_records = PartitionRecords(" in inspect.getsource(fetcher.Fetcher)


def test_the_intake_passes_a_noted_hole_and_reads_any_other_again() -> None:
    tp = TP("likes", 0)
    logged: list[str] = []
    consumer = committing_consumer("likes", {tp: 0}, logged)
    order = consumer._order
    order.expect(tp, 0)
    fetch_holes.HOLES.clear()
    passed = metrics.OFFSETS_WITHOUT_RECORDS.labels("likes")
    before = passed._value.get()
    assert order.due(tp, 0) and order.due(tp, 1)
    fetch_holes.HOLES.note("likes", 0, 2, 3)  # a commit marker at 2
    assert not order.due(tp, 3) and consumer._pass_hole(tp, 3)
    assert not order.due(tp, 5) and not consumer._pass_hole(tp, 5)  # 4 was dropped, not skipped: read again
    assert order.next_due(tp) == 4
    assert passed._value.get() - before == 1
    consumer._acked[tp] = [0, 1, 3]
    assert consumer._new_offset(tp) == 4  # the marker is committed past with the records around it
    assert not logged


def test_commits_pass_a_trailing_marker_and_never_a_record_not_acknowledged() -> None:
    tp, other = TP("likes", 0), TP("likes", 1)
    logged: list[str] = []
    consumer = committing_consumer("likes", {tp: 10, other: 10}, logged, assignment=lambda: {tp, other})
    order = consumer._order
    order.expect(tp, 10)
    order.expect(other, 10)
    fetch_holes.HOLES.clear()
    assert order.due(tp, 10) and order.due(tp, 11)
    fetch_holes.HOLES.note("likes", 0, 12, 13)  # the last transaction's marker, the partition's last offset
    fetch_holes.HOLES.note("likes", 1, 11, 12)  # after a record not delivered yet: not passed
    consumer._pass_trailing_holes(frozenset({"likes"}))
    assert order.next_due(tp) == 13 and order.next_due(other) == 10
    consumer._acked[tp] = [10, 11]
    assert consumer._new_offset(tp) == 13
    consumer._committed_offset[tp] = 13
    consumer._acked[other] = [11]  # 10 was never acknowledged: no gap explains it
    assert consumer._new_offset(other) is None and "offsets 10..10 are not acknowledged" in logged[0]


def test_passing_offsets_without_records_re_points_a_re_read_still_to_come() -> None:
    """Records after a hole were dropped while a seek ran, so a re-read from the offset due is pending;
    passing the hole must move that re-read past it, not cancel it (the dropped records would wait for
    new input to be read again)."""
    tp = TP("likes", 0)
    consumer = committing_consumer("likes", {tp: 40}, [], assignment=lambda: {tp})
    order = consumer._order
    order.expect(tp, 40)
    order.suspend()
    assert not order.due(tp, 41)  # fetched after the marker at 40, dropped: the seek is running
    order.resume()
    fetch_holes.HOLES.note("likes", 0, 40, 41)
    consumer._pass_trailing_holes(frozenset({"likes"}))
    assert order.next_due(tp) == 41
    order.SEEK_AGAIN_AFTER = 0.0
    assert order.stale_seeks() == [(tp, 41)]  # read again from the record after the marker


def test_a_partition_whose_only_news_is_a_marker_is_committed_past_it_and_counts_as_read_to_its_end() -> None:
    """A partition assigned with only a commit marker after its committed offset has no acknowledgement
    at all: Faust commits only partitions listed among the acknowledged, so passing the marker lists it.
    And the processor, which compares the offsets it processed with the log end, must not see the marker
    as a record still unread (else the partition holds event time back forever)."""
    tp = TP("likes", 0)
    consumer = committing_consumer("likes", {tp: 40}, [], assignment=lambda: {tp})
    consumer._order.expect(tp, 40)
    fetch_holes.HOLES.note("likes", 0, 40, 41)
    consumer._pass_trailing_holes(frozenset({"likes"}))
    assert tp in list(consumer._filter_tps_with_pending_acks())
    assert consumer._new_offset(tp) == 41
    assert consumer.records_end(tp, 41) == 40  # nothing after the last record but the marker
    assert consumer.records_end(tp, 45) == 45  # records came since
