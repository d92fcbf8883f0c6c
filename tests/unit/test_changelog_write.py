"""A changelog write returns before its records are queued; it holds the changelog lock until they
are, so writes queue in order and a rebalance waits for them; a failure reaches whoever awaits it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import pytest

from pipeline.settings import Settings
from pipeline.worker import create_app
from tests.unit.test_changelog_batches import FakeBatch


class GatedProducer:
    """Takes a batch only when ``gate`` is set (aiokafka waits for the partition's previous batch to
    leave in a produce request); ``fail`` makes it raise instead."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.sent: list[list[bytes]] = []
        self.records: list[tuple[bytes, bytes | None]] = []
        self.fail = False

    def create_batch(self) -> FakeBatch:
        return FakeBatch(capacity=2)

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> asyncio.Future[None]:
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("the producer is closed")
        self.sent.append([key for key, _ in batch.records])
        self.records += batch.records
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, BaseException | None]]:
    """The worker's exits (what failed, the exception), recorded instead of ending the test process."""
    recorded: list[tuple[str, BaseException | None]] = []
    monkeypatch.setattr("pipeline.worker.exit_without_committing", lambda what, exc=None: recorded.append((what, exc)))
    return recorded


def writer_of(producer: GatedProducer) -> tuple[Any, Any]:
    app, processor = create_app(Settings(app_id="engagement-test", partitions=2), warehouse=object())  # type: ignore[arg-type]
    app.producer._ensure_producer = lambda: producer  # type: ignore[attr-defined]
    assignment = {faust.types.TP(topic, p) for topic in app.intake.topics for p in (0, 1)}  # type: ignore[attr-defined]
    app.consumer = SimpleNamespace(assignment=lambda: assignment)  # type: ignore[misc]
    return app, processor.store.changelog


def test_a_write_returns_before_it_is_queued_and_writes_queue_in_order() -> None:
    async def run() -> None:
        producer = GatedProducer()
        app, write = writer_of(producer)
        first = await asyncio.wait_for(write([[(b"a%d" % i, b"v1", 0) for i in range(3)]]), 5)  # nothing is queued yet
        assert app.changelog_lock.locked() and not producer.sent
        assert app.tables["account-state"].data.data[b"a2"] == b"v1"  # the local table has it already
        second = asyncio.ensure_future(write([[(b"a0", b"v2", 0)]]))
        await asyncio.sleep(0.01)
        assert not second.done()  # waits for the first write to be queued
        producer.gate.set()
        await asyncio.wait_for(asyncio.gather(first, await second), 5)
        assert producer.sent == [[b"a0", b"a1"], [b"a2"], [b"a0"]]
        assert not app.changelog_lock.locked()

    asyncio.run(run())


def test_a_deletion_leaves_the_local_table_and_reaches_the_changelog_as_a_tombstone() -> None:
    async def run() -> None:
        producer = GatedProducer()
        producer.gate.set()
        app, write = writer_of(producer)
        store = app.tables["account-state"].data
        await asyncio.wait_for(await write([[(b"k", b"v", 1), (b"gone", b"w", 1)]]), 5)
        assert store.data[b"k"] == b"v" and store._key_partition[b"k"] == 1
        await asyncio.wait_for(await write([[(b"k", None, 1)]]), 5)
        assert b"k" not in store.data and b"k" not in store._key_partition
        assert b"gone" in store.data
        assert producer.records[-1] == (b"k", None)  # a record with no value: Kafka's tombstone

    asyncio.run(run())


def test_a_write_that_cannot_be_queued_ends_the_worker_fails_whoever_awaits_it_and_frees_the_lock(
    exits: list[tuple[str, BaseException | None]],
) -> None:
    async def run() -> None:
        producer = GatedProducer()
        producer.fail = True
        app, write = writer_of(producer)
        written = await asyncio.wait_for(write([[(b"a0", b"v", 1)]]), 5)
        producer.gate.set()
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wait_for(written, 5)
        assert not app.changelog_lock.locked()

    asyncio.run(run())
    # by the write itself, not by the acknowledgement (which runs only after the acknowledgements before it)
    assert [(what, str(exc)) for what, exc in exits] == [
        ("queueing account states on the changelog", "the producer is closed")
    ]


def test_a_rebalance_waits_for_a_write_being_queued_and_a_write_waits_for_the_rebalance() -> None:
    async def run() -> None:
        producer = GatedProducer()
        app, write = writer_of(producer)
        first = await asyncio.wait_for(write([[(b"a0", b"v1", 0)]]), 5)
        app.rebalancing = True  # set by the consumer's thread before the revocation reaches the loop

        async def revoke() -> None:  # what IntakeConsumer.on_partitions_revoked does first
            async with app.changelog_lock:
                pass

        revoking = asyncio.ensure_future(revoke())
        second = asyncio.ensure_future(write([[(b"a1", b"v2", 1)]]))
        await asyncio.sleep(0.05)
        assert not revoking.done() and not second.done()  # the first write is still being queued
        producer.gate.set()
        await asyncio.wait_for(asyncio.gather(first, revoking), 5)
        await asyncio.sleep(0.1)
        assert not second.done() and producer.sent == [[b"a0"]]  # no write starts during a rebalance
        app.rebalancing = False
        await asyncio.wait_for(await second, 5)
        assert producer.sent == [[b"a0"], [b"a1"]]

    asyncio.run(run())


class HeldAcksProducer(GatedProducer):
    """Takes every batch at once; acknowledges it only when the test resolves its future in ``acks``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate.set()
        self.acks: list[asyncio.Future[None]] = []

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> asyncio.Future[None]:
        self.sent.append([key for key, _ in batch.records])
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]


def test_a_phase_is_sent_only_once_the_one_before_is_acknowledged() -> None:
    """A main record must never be stored without its chunks: the producer is not idempotent, and a
    batch it loses does not stop the later batches of its partition."""

    async def run() -> None:
        producer = HeldAcksProducer()
        app, write = writer_of(producer)
        chunks = [(b"\xffchunk0", b"[1", 0), (b"\xffchunk1", b",2]", 0)]
        phases = [chunks, [(b"main", b"{}", 0)], [(b"\xffold", None, 0)]]
        written = await asyncio.wait_for(write(phases), 5)
        await asyncio.sleep(0.05)
        assert producer.sent == [[b"\xffchunk0"], [b"\xffchunk1"]]  # the chunks (the last record alone)
        assert app.changelog_lock.locked()  # the write is not queued whole yet
        for ack in producer.acks:
            ack.set_result(None)
        await asyncio.sleep(0.05)
        assert producer.sent[2:] == [[b"main"]]  # the main records, once the chunks are stored
        producer.acks[-1].set_result(None)
        await asyncio.sleep(0.05)
        assert producer.sent[3:] == [[b"\xffold"]]
        assert not app.changelog_lock.locked()
        producer.acks[-1].set_result(None)
        await asyncio.wait_for(written, 5)

    asyncio.run(run())


def test_a_lost_chunk_stops_the_write_before_its_main_record_and_ends_the_worker(
    exits: list[tuple[str, BaseException | None]],
) -> None:
    async def run() -> None:
        producer = HeldAcksProducer()
        app, write = writer_of(producer)
        written = await asyncio.wait_for(write([[(b"\xffchunk", b"[]", 0)], [(b"main", b"{}", 0)]]), 5)
        await asyncio.sleep(0.05)
        producer.acks[0].set_exception(RuntimeError("the batch expired"))
        with pytest.raises(RuntimeError, match="expired"):
            await asyncio.wait_for(written, 5)
        assert producer.sent == [[b"\xffchunk"]]  # the main record was never sent
        assert not app.changelog_lock.locked()

    asyncio.run(run())
    assert [str(exc) for _, exc in exits] == ["the batch expired"]
