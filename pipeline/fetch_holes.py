"""Offsets a fetch passed over on purpose: transaction markers, aborted transactions, compacted records.

A partition's offsets are not all records. A transactional producer's commit (or abort) marker takes an
offset of its own, records of an aborted transaction are not delivered to a ``read_committed`` consumer, and
compaction removes records. aiokafka skips all of them as it unpacks a fetch response, so the records it
delivers have holes. The intake must tell those holes from the ones Faust makes when it drops records it
already fetched (:class:`~pipeline.intake.ReadOrder` re-reads a partition from the record due, so that no
record is ever passed over): only aiokafka knows which offsets it skipped, so :func:`install` makes it note
them here, as it unpacks each fetch response, in :data:`HOLES`.

A hole noted here is a fact about the log (those offsets will never deliver a record to this consumer),
whenever and by whichever fetch it was seen; the intake takes it as read (:meth:`FetchHoles.take`).
Notes are made on the consumer's thread and taken on the event loop's (under a lock).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from aiokafka.consumer import fetcher

# Holes noted per partition and not taken yet; beyond this many, the oldest half is forgotten (notes of
# offsets already read past, or a hole forgotten, which a read from its start notes again).
MAX_HOLES_PER_PARTITION = 10_000


class FetchHoles:
    """Per partition ``(topic, partition)`` of the topics watched: hole start offset -> end (exclusive).
    Thread-safe (notes come from the consumer's thread)."""

    def __init__(self) -> None:
        self._holes: dict[tuple[str, int], dict[int, int]] = {}
        self._topics: frozenset[str] | None = None
        self._lock = threading.Lock()

    def watch(self, topics: Iterable[str]) -> None:
        """Note holes of ``topics`` only (the intake's; compacted changelogs have holes nobody takes)."""
        self._topics = frozenset(topics)

    def note(self, topic: str, partition: int, start: int, end: int) -> None:
        """Offsets ``start``..``end - 1`` of the partition hold no record for this consumer."""
        if self._topics is not None and topic not in self._topics:
            return
        with self._lock:
            holes = self._holes.setdefault((topic, partition), {})
            if len(holes) >= MAX_HOLES_PER_PARTITION:
                for old in sorted(holes)[: MAX_HOLES_PER_PARTITION // 2]:
                    del holes[old]
            if end > holes.get(start, start):
                holes[start] = end

    def take(self, topic: str, partition: int, start: int, until: int | None = None) -> int:
        """The end of the run of noted holes from ``start`` (``start`` itself if none starts there), taking
        them. With ``until``: only if the run reaches at least ``until``, else ``start`` (nothing taken)."""
        with self._lock:
            holes = self._holes.get((topic, partition))
            if not holes:
                return start
            end, run = start, []
            while end in holes and (until is None or end < until):
                run.append(end)
                end = holes[end]
            if until is not None and end < until:
                return start
            for offset in run:
                del holes[offset]
            return end

    def clear(self) -> None:
        with self._lock:
            self._holes.clear()
        self._topics = None


HOLES = FetchHoles()


class HoleNotingRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    """aiokafka's records of one partition of a fetch response, noting in :data:`HOLES` every run of offsets
    it skips: before the first record (from the fetch offset), between records, and after the last one
    (to the offset the next fetch starts from)."""

    def _unpack_records(self) -> Iterator[Any]:
        tp = self._tp
        expected = self.next_fetch_offset  # the fetch's offset: where this response starts
        for record in super()._unpack_records():
            if record.offset > expected:
                HOLES.note(tp.topic, tp.partition, expected, record.offset)
            expected = record.offset + 1
            yield record
        if self.next_fetch_offset > expected:
            HOLES.note(tp.topic, tp.partition, expected, self.next_fetch_offset)


def install() -> None:
    """Make aiokafka's fetcher unpack responses with :class:`HoleNotingRecords` (idempotent). aiokafka
    0.14 builds them by the module-level name ``PartitionRecords`` (checked by
    ``tests/unit/test_fetch_holes.py``)."""
    fetcher.PartitionRecords = HoleNotingRecords
