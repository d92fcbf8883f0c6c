"""The worker's main-thread cost per event as its states age, on live-paced traffic.

The harness drains traffic whose event time runs far faster than a live stream's (2,000 events per second
of event time over 20,000 accounts), so its accounts' open windows hold few event ids. A live worker's
states hold every event id of their open windows, the allowed lateness and the window (6 minutes by
default), and a state is serialized whole each time it is persisted. This runs live-paced traffic
(``--rate`` events per second of event time, each batch one second of it, the processor's clock at the
batch's second) through :class:`~pipeline.processor.BatchProcessor` in this process, with neither Kafka nor
ClickHouse (a writer that keeps nothing and an outbox that acknowledges at once; the watermark
announcements a worker owning every partition would read back from the re-key topic are handed back
after each batch, the response candidates are not: replies answering a conversation were ~0.1 % of the
traffic). A worker's main thread also runs the Kafka client (fetching, and producing the persisted
states to the changelog), which this leaves out: its figures are a lower bound of the live cost per
event. For every ``--segment`` seconds of input it prints the main thread's CPU per event,
the part of it spent staging persist slices (serializing states), the bytes persisted per event and the
event ids held. Ratios are against the first segment, measured in the same run (the young state: what
the harness measures).

    .venv/bin/python bench/steady_state.py [--accounts 2000] [--rate 4000] [--seconds 480]
                                           [--persist-interval 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hotpath import PARTITIONS, Collector, InstantOutbox  # noqa: E402

from pipeline.generate import TrafficModel, lines  # noqa: E402
from pipeline.ingest import ingest_lines  # noqa: E402
from pipeline.partitioning import account_partitioner  # noqa: E402
from pipeline.processor import BatchProcessor, Message, StagedStore  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.sink import PendingWrite  # noqa: E402
from pipeline.warehouse.base import row_count  # noqa: E402


class DiscardingWriter:
    """Stands for the warehouse writer: counts rows per table, keeps nothing, is durable at once."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def write_soon(self, table: str, columns: Mapping[str, Sequence[Any]]) -> PendingWrite:
        self.rows[table] = self.rows.get(table, 0) + row_count(columns)  # as the worker counts: no transposing
        return PendingWrite(None, None)

    async def write(self, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        self.write_soon(table, columns)


@dataclass
class Segment:
    """One segment of input: its end (seconds of input), and what it cost per event."""

    end_s: int
    events: int
    cpu_us: float  # main-thread CPU per event
    slice_us: float  # of which staging persist slices
    persisted_bytes: float  # state bytes committed per event
    window_rows: float  # window rows written per event
    ids_held: int  # event ids in the live states' open windows at its end


class Meter:
    """Wraps a processor's persist slices and commits to time and weigh them."""

    def __init__(self, processor: BatchProcessor) -> None:
        self.slice_s = 0.0
        self.persisted = 0
        stage, store = processor._stage_slice, processor.store
        commit = store.commit

        def timed_stage() -> bool:
            started = time.thread_time()
            try:
                return stage()
            finally:
                self.slice_s += time.thread_time() - started

        async def weighed_commit() -> Any:
            self.persisted += sum(map(len, store.staged.values()))
            self.persisted += sum(len(v) for records in store.staged_segments.values() for v in records.values())
            return await commit()

        processor._stage_slice = timed_stage  # type: ignore[method-assign]
        store.commit = weighed_commit  # type: ignore[method-assign]


def ids_held(processor: BatchProcessor) -> int:
    live: Any = processor.aggregator._live  # type: ignore[attr-defined]
    return sum(len(window.ids) for state in live.values() for window in state.windows.values())


def live_batches(args: argparse.Namespace) -> list[list[Message]]:
    """The traffic, as one batch per second of input (what a live worker takes per second): the messages
    in order, cut into ``--seconds`` batches of equal size (the generator's event time runs at the rate,
    so a batch is about a second of it)."""
    model = TrafficModel(
        accounts=args.accounts,
        users=args.accounts * 10,
        events_per_second=args.rate,
        events=int(args.rate * args.seconds),
        seed=1,
        drain_tail=False,
    )
    settings = Settings.from_env({}, partitions=PARTITIONS)
    collector = Collector()
    ingest_lines(list(lines(model)), settings, collector, "bench", batch_events=100)  # type: ignore[arg-type]
    messages = [m for m in collector.sent if m.topic != "engagement-dead-letters"]
    per_second = -(-len(messages) // args.seconds)  # rounded up: no more batches than seconds
    return [messages[i : i + per_second] for i in range(0, len(messages), per_second)]


async def run(args: argparse.Namespace, batches: list[list[Message]]) -> list[Segment]:
    settings = Settings.from_env({}, partitions=PARTITIONS, persist_interval_seconds=args.persist_interval)
    clock = [0.0]  # the processor's monotonic clock: the second of input being processed
    writer = DiscardingWriter()
    held: list[BatchProcessor] = []  # live, everything published so far is read: the highwater is the next offset

    processor = BatchProcessor(
        settings,
        StagedStore({}),
        writer,  # type: ignore[arg-type]
        InstantOutbox(),
        account_partitioner(PARTITIONS),
        lambda topic, partition: held[0].progress.next_offset.get((topic, partition), 0),
        monotonic=lambda: clock[0],
    )
    held.append(processor)
    processor.aggregator._monotonic = lambda: clock[0]  # type: ignore[attr-defined]  # the upsert throttle
    processor.on_assignment(set(range(PARTITIONS)))
    meter = Meter(processor)
    segments: list[Segment] = []
    started, slice_s, persisted, rows, events = time.thread_time(), 0.0, 0, 0, 0
    counts = [sum(_events(m) for m in batch) for batch in batches]  # counted before the clock runs
    for second, (batch, count) in enumerate(zip(batches, counts, strict=True), start=1):
        clock[0] = float(second)
        await processor.process(batch, persist=False)
        frontiers = {q: processor.source_frontier(q) for q in range(PARTITIONS)}
        for q in range(PARTITIONS):  # what a worker owning every partition reads back from the re-key topic
            processor.progress.upstream[q] = dict(frontiers)
        events += count
        if second % args.segment == 0:  # a partial last segment is not reported (report() says so)
            now = time.thread_time()
            windows = writer.rows.get("engagement_windows", 0)
            segments.append(
                Segment(
                    end_s=second,
                    events=events,
                    cpu_us=1e6 * (now - started) / events,
                    slice_us=1e6 * (meter.slice_s - slice_s) / events,
                    persisted_bytes=(meter.persisted - persisted) / events,
                    window_rows=(windows - rows) / events,
                    ids_held=ids_held(processor),
                )
            )
            started, slice_s, persisted, rows, events = time.thread_time(), meter.slice_s, meter.persisted, windows, 0
    await processor.persist()  # the last delivery in flight
    return segments


def _events(message: Message) -> int:
    value = message.value or b""
    return value.count(b'"event_id"')


def report(args: argparse.Namespace, segments: list[Segment]) -> str:
    base = segments[0]
    reported = segments[-1].end_s
    lines_out = [
        f"{args.accounts:,} accounts, {args.rate:,.0f} events per second of event time (the live pace), "
        f"{args.seconds} s, persist interval {args.persist_interval} s; baseline: the first {args.segment} s",
        f"{'input s':>8} {'µs/event':>9} {'x base':>7} {'slices µs':>10} {'persisted B/ev':>15} {'x base':>7} "
        f"{'win rows/ev':>12} {'ids held':>11}",
    ]
    for s in segments:
        lines_out.append(
            f"{s.end_s:>8} {s.cpu_us:>9.2f} {s.cpu_us / base.cpu_us:>6.2f}x {s.slice_us:>10.2f} "
            f"{s.persisted_bytes:>15.1f} {s.persisted_bytes / max(base.persisted_bytes, 1e-9):>6.2f}x "
            f"{s.window_rows:>12.3f} {s.ids_held:>11,}"
        )
    if reported < args.seconds:
        lines_out.append(f"(the input's last {args.seconds - reported} s, a partial segment, not reported)")
    return "\n".join(lines_out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=4_000.0, help="events per second of event time")
    parser.add_argument("--seconds", type=int, default=480, help="seconds of input (event time)")
    parser.add_argument("--persist-interval", type=float, default=Settings.persist_interval_seconds)
    parser.add_argument("--segment", type=int, default=30, help="seconds of input per reported segment")
    args = parser.parse_args(argv)
    batches = live_batches(args)
    gc.set_threshold(50_000, 4, 100)  # as the worker does
    gc.freeze()
    print(report(args, asyncio.run(run(args, batches))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
