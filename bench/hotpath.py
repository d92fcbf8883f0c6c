"""Our per-event cost without Kafka: the same batches the worker sees, through BatchProcessor with the
real chDB warehouse, a dict for the Faust table and an outbox that acknowledges at once.

Reports events/s and its ratio to the floor measured in the same run: orjson decoding the same messages.

    .venv/bin/python bench/hotpath.py [--events N] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.generate import TrafficModel, lines  # noqa: E402
from pipeline.ingest import ingest_lines  # noqa: E402
from pipeline.partitioning import account_partitioner  # noqa: E402
from pipeline.processor import BatchProcessor, Message, StagedStore  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.sink import WarehouseWriter  # noqa: E402
from pipeline.warehouse import open_warehouse  # noqa: E402
from pipeline.warehouse.migrate import migrate  # noqa: E402

PARTITIONS = 4


class Collector:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.offsets: dict[tuple[str, int], int] = {}

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        p = partition or 0
        offset = self.offsets.get((topic, p), 0)
        self.offsets[(topic, p)] = offset + 1
        self.sent.append(Message(topic, p, offset, value))

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def flush(self) -> None:
        pass


class InstantOutbox:
    async def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    model = TrafficModel(accounts=20_000, users=200_000, events_per_second=2000, events=args.events, seed=1)
    settings = Settings.from_env({}, partitions=PARTITIONS, upsert_interval_seconds=2.0)
    collector = Collector()
    ingest_lines(list(lines(model)), settings, collector, "bench", batch_events=100)  # type: ignore[arg-type]
    messages = [m for m in collector.sent if m.topic != "engagement-dead-letters"]
    batches = [messages[i : i + 500] for i in range(0, len(messages), 500)]

    started = time.perf_counter()
    for message in messages:
        orjson.loads(message.value or b"")
    floor = args.events / (time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({}, partitions=PARTITIONS, data_dir=Path(tmp))
        warehouse = open_warehouse(settings)
        migrate(warehouse, settings)
        table: dict[bytes, bytes] = {}
        writer = WarehouseWriter(lambda: warehouse)
        marks = dict(collector.offsets)
        processor = BatchProcessor(
            settings,
            StagedStore(table),
            writer,
            InstantOutbox(),
            account_partitioner(PARTITIONS),
            lambda t, p: marks.get((t, p), 0),
        )
        processor.on_assignment(set(range(PARTITIONS)))

        import gc

        from pipeline.worker import GC_MIDDLE_EVERY

        gc.set_threshold(50_000, GC_MIDDLE_EVERY, 100)  # as the worker does (run_worker)
        gc.freeze()

        async def run() -> tuple[float, float]:
            began, began_cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                await processor.process(batch)
            await processor.flush()
            return time.perf_counter() - began, time.process_time() - began_cpu

        profiler: Any = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        seconds, cpu_seconds = asyncio.run(run())
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        writer.close()
    eps = args.events / seconds
    print(f"events: {args.events:,} in {len(messages):,} messages, {len(batches):,} batches")
    print(f"orjson floor        {floor:>12,.0f} events/s   1.00x")
    print(f"BatchProcessor      {eps:>12,.0f} events/s   {eps / floor:.3f}x of the floor")
    # CPU time of all the process's threads (chDB's included): steadier than wall time on a busy machine.
    print(f"BatchProcessor CPU  {1e6 * cpu_seconds / args.events:>12.1f} µs per event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
