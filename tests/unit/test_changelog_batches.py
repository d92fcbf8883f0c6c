"""Account states go to the changelog as whole record batches, a partition's last record alone, the
partitions' batches in turn; the worker's producer makes batches large enough for that to be quick."""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka

from pipeline.settings import Settings
from pipeline.worker import PRODUCER_BATCH_BYTES, create_app, produce_in_batches


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.capacity = capacity

    def append(self, key: bytes, value: bytes | None, timestamp: Any) -> object | None:
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
        (1, [b"b0"]),
        (0, [b"a3", b"a4", b"a5"]),
        (0, [b"a6"]),  # alone: tansu lists a partition's end as its last batch's base offset + 1
    ]


def test_the_partitions_batches_go_in_turn_so_a_produce_request_carries_one_of_each() -> None:
    producer = FakeProducer(capacity=2)
    records = [(b"a%d" % i, b"v", 0) for i in range(5)] + [(b"b%d" % i, b"v", 1) for i in range(3)] + [(b"c0", b"v", 2)]

    async def run() -> None:
        await produce_in_batches(producer, "changelog", records)

    asyncio.run(run())
    assert producer.sent == [
        (0, [b"a0", b"a1"]),
        (1, [b"b0", b"b1"]),
        (2, [b"c0"]),
        (0, [b"a2", b"a3"]),
        (1, [b"b2"]),
        (0, [b"a4"]),
    ]


def test_the_workers_producer_fills_batches_far_beyond_fausts_16_kib() -> None:
    """A batch of the worker's real producer takes 20 states of 40 KB (Faust's default batch holds
    one), and stays under Kafka's default limit on a record batch (message.max.bytes, 1 MiB + 12)."""
    app, _processor = create_app(Settings(app_id="engagement-test"), warehouse=object())  # type: ignore[arg-type]

    async def capacity() -> tuple[int, int]:
        producer = app.producer._new_producer()  # type: ignore[attr-defined]
        assert isinstance(producer, aiokafka.AIOKafkaProducer)
        batch, taken = producer.create_batch(), 0
        while batch.append(key=b"acct-%d" % taken, value=b"x" * 40_000, timestamp=None) is not None:
            taken += 1
        batch.close()
        return taken, batch.size()

    taken, size = asyncio.run(capacity())
    assert taken >= 20
    assert size <= PRODUCER_BATCH_BYTES < 1_048_588 - 1024
