"""Account states go to the changelog as whole record batches, a partition's last record alone."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.worker import produce_in_batches


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.capacity = capacity

    def append(self, key: bytes, value: bytes, timestamp: Any) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None: ...


class FakeProducer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.sent: list[tuple[int, list[bytes]]] = []

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> asyncio.Future[None]:
        self.sent.append((partition, [key for key, _ in batch.records]))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def test_records_go_in_full_batches_and_each_partitions_last_record_alone() -> None:
    producer = FakeProducer(capacity=3)
    records = [(b"a%d" % i, b"v", 0) for i in range(7)] + [(b"b0", b"v", 1)]

    async def run() -> int:
        return len(await produce_in_batches(producer, "changelog", records))

    assert asyncio.run(run()) == len(producer.sent)
    assert producer.sent == [
        (0, [b"a0", b"a1", b"a2"]),
        (0, [b"a3", b"a4", b"a5"]),
        (0, [b"a6"]),  # alone: tansu lists a partition's end as its last batch's base offset + 1
        (1, [b"b0"]),
    ]
