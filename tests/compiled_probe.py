"""One fixed stream through the batch data path, every output printed as JSON: what tests/unit/test_compiled.py
compares between the compiled hot path and its source (run once with each ``ENGAGEMENT_COMPILED``).

The stream is generated traffic (duplicates, self-engagement, replies answered late, follower snapshots,
events delayed past their window's lateness), cut into messages of several sizes, with a tenth of malformed
messages of every poison kind inserted (pipeline/poison.py). It goes through BatchProcessor with in-memory
fakes for ClickHouse, the outbox and the Faust table, on a fake monotonic clock. The outputs: every row
inserted (per table), every message sent (dead letters, forwarded events, response candidates, alerts), the
changelog table, and the processor's counts. Values of the wall clock are replaced: ``ingested_ms`` and
``failed_at`` by 0, row versions by their rank.

    ENGAGEMENT_COMPILED=off python tests/compiled_probe.py > source.json
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import compiled, metrics
from pipeline.events import REKEY_TOPIC, TOPIC_TYPES
from pipeline.generate import TrafficModel, lines
from pipeline.ingest import ingest_lines
from pipeline.partitioning import account_partitioner
from pipeline.poison import poison_stream
from pipeline.processor import BatchProcessor, Message, StagedStore
from pipeline.settings import Settings
from pipeline.sink import WarehouseWriter
from tests.unit.test_processor import FakeOutbox, FakeWarehouse

PARTITIONS = 3
EVENTS = 12_000
START_MS = TrafficModel.start_ms


class Collector:
    """Kafka for ``ingest_lines``: keeps what it is sent, numbering offsets per partition."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes]] = []

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.sent.append((topic, partition or 0, value))

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def flush(self) -> None:
        pass


def messages(settings: Settings) -> list[Message]:
    """The source messages, poisoned, with offsets per topic and partition, in the order they were sent."""
    model = TrafficModel(accounts=60, users=2000, events_per_second=150, events=EVENTS, max_delay_s=40.0, seed=11)
    collector = Collector()
    ingest_lines(list(lines(model)), settings, collector, "probe", batch_events=37)  # type: ignore[arg-type]
    by_place: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
    for index, (topic, partition, value) in enumerate(collector.sent):
        by_place.setdefault((topic, partition), []).append((index, value))
    kinds = {settings.topic(kind): kind for kind in TOPIC_TYPES}
    placed: list[tuple[int, int, Message]] = []
    for (topic, partition), sent in by_place.items():
        if topic not in kinds:
            continue  # ingest's own dead letters
        values = [value for _, value in sent]
        poisoned = poison_stream(values, kinds[topic], share=0.1, seed=partition, max_oversized=2)
        for offset, message in enumerate(poisoned):
            # in the order ingest sent them: a malformed message right after the one it borrows from
            placed.append((sent[message.origin][0], offset, Message(topic, partition, offset, message.value)))
    return [message for _, _, message in sorted(placed, key=lambda p: (p[0], p[1], p[2].topic, p[2].partition))]


def late_messages(settings: Settings) -> list[Message]:
    """Likes at the traffic's first second, after all of it: late (each window final by then), dead-lettered."""
    owner = account_partitioner(PARTITIONS)
    out = []
    for n in range(6):
        account = f"acct-{n:05d}"
        like = {"event_id": f"late-{n}", "type": "like", "ts": START_MS, "actor_id": "user-late", "account_id": account}
        out.append(Message(settings.topic("likes"), owner(account), 10_000 + n, orjson.dumps([like])))
    return out


def normalized(warehouse: FakeWarehouse, outbox: FakeOutbox) -> dict[str, Any]:
    tables: dict[str, list[dict[str, list[Any]]]] = {}
    for table, columns in warehouse.inserts:
        columns = dict(columns)
        if "ingested_ms" in columns:
            columns["ingested_ms"] = [0] * len(columns["ingested_ms"])
        tables.setdefault(table, []).append(columns)
    versions = sorted({v for blocks in tables.values() for block in blocks for v in block.get("version", [])})
    rank = {version: i for i, version in enumerate(versions)}
    for blocks in tables.values():
        for block in blocks:
            if "version" in block:
                block["version"] = [rank[v] for v in block["version"]]
    sent = []
    for topic, key, value, partition in outbox.sent:
        body = orjson.loads(value)
        if isinstance(body, dict) and "failed_at" in body:
            body["failed_at"] = 0
        sent.append([topic, key.hex(), body, partition])
    return {"tables": tables, "sent": sent}


def digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def run() -> dict[str, Any]:
    settings = Settings.from_env(
        {},
        partitions=PARTITIONS,
        window_seconds=5,
        allowed_lateness_seconds=10,
        conversation_horizon_seconds=30,
        upsert_interval_seconds=0.0,
        max_future_seconds=0,
        drop_warmup_windows=2,
        drop_min_baseline=1.0,
        drop_windows=1,
        drop_half_life_windows=2.0,
        drop_watch="acct-00001,acct-00002,acct-00003",
    )
    warehouse = FakeWarehouse()
    outbox = FakeOutbox()
    table: dict[bytes, bytes] = {}
    ticks = [0.0]

    def monotonic() -> float:  # moves a little at every look: persist slices come due, the same in any run
        ticks[0] += 0.05
        return ticks[0]

    processor = BatchProcessor(
        settings,
        StagedStore(table),
        WarehouseWriter(lambda: warehouse),  # type: ignore[arg-type,return-value]
        outbox,
        account_partitioner(PARTITIONS),
        lambda topic, partition: 0,
        monotonic=monotonic,
    )
    processor.on_assignment(set(range(PARTITIONS)))
    stream = [*messages(settings), *late_messages(settings)]
    rekey_topic = settings.topic(REKEY_TOPIC)
    rekey_offsets = [0] * PARTITIONS
    looked = 0
    for size in [1, 7, 50, 200, *[300] * (len(stream) // 300 + 1)]:  # batches of several sizes
        # What the processor sent to the re-key topic (forwarded events, response candidates, watermarks)
        # comes back in the next batch, as a consumer of that topic would read it.
        batch = stream[:size]
        del stream[:size]
        for topic, _key, value, partition in outbox.sent[looked:]:
            if topic == rekey_topic:
                assert partition is not None
                batch.append(Message(topic, partition, rekey_offsets[partition], value))
                rekey_offsets[partition] += 1
        looked = len(outbox.sent)
        if batch:
            await processor.process(batch)
    await processor.flush()
    processor.writer.close()
    outputs = normalized(warehouse, outbox)
    counts = {  # the counters the processor published (its own metrics registry: this process's)
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for family in metrics.REGISTRY.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    return {
        "compiled": compiled.STATUS.active,
        "rows": {
            table: sum(len(next(iter(b.values()))) for b in blocks) for table, blocks in outputs["tables"].items()
        },
        "sent": {topic: sum(1 for s in outputs["sent"] if s[0] == topic) for topic in {s[0] for s in outputs["sent"]}},
        "counts": counts,
        "digests": {
            **{f"table {name}": digest(blocks) for name, blocks in outputs["tables"].items()},
            "sent": digest(outputs["sent"]),
            "changelog": digest(sorted([k.hex(), v.hex()] for k, v in table.items())),
        },
    }


if __name__ == "__main__":
    print(orjson.dumps(asyncio.run(run()), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode())
