"""One fixed stream through the batch data path, every output printed as JSON: what tests/unit/test_compiled.py
compares between the compiled hot path and its source (run once with each ``ENGAGEMENT_COMPILED``).

The stream is generated traffic (duplicates, self-engagement, replies answered late, follower snapshots),
cut into messages, with a tenth of malformed messages of every poison kind inserted (pipeline/poison.py),
events crafted where the traffic lacks them (a response read before the conversation it answers, an
account with over 2**53 followers, likes past their lateness), and conversations kept in segment records
from 12 on. It goes through BatchProcessor with in-memory fakes for ClickHouse, the outbox and the Faust
table, on a fake monotonic clock; what it sends to the re-key topic comes back in the next batch. Then a
second processor starts on the same changelog table and is given the last 400 messages again: every state
read back, each event a replay. Apart from that, ``decode_message`` of 3,000 mutated events.

The outputs: every row inserted (per table), every message sent (dead letters, forwarded events, response
candidates, alerts), the changelog table, the counters published, and the decoded corpus. Values of the
wall clock are replaced: ``ingested_ms`` and ``failed_at`` by 0, row versions by their rank; record
generations are counted from 1.

    ENGAGEMENT_COMPILED=off python tests/compiled_probe.py > source.json
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import account_state, compiled, metrics
from pipeline.decode import decode_message
from pipeline.events import REKEY_TOPIC, TOPIC_TYPES
from pipeline.generate import TrafficModel, lines
from pipeline.ingest import ingest_lines
from pipeline.partitioning import account_partitioner
from pipeline.poison import poison_stream
from pipeline.processor import BatchProcessor, Message, StagedStore
from pipeline.settings import Settings
from pipeline.sink import WarehouseWriter
from pipeline.state_records import Generations
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
    crafted(settings, collector.sent)
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


def crafted(settings: Settings, sent: list[tuple[str, int, bytes]]) -> None:
    """Events the generated traffic lacks, put into ``sent`` (as ingest sent them) mid-stream: a response
    read before the conversation it answers (pending, then matched), and an account whose follower count
    passes 2**53 (its engagement rate divides integers no double holds exactly)."""
    owner = account_partitioner(PARTITIONS)
    middle = len(sent) // 2
    events, _ = decode_message(sent[middle][2], None)
    ts = events[0].ts_ms
    answering, asker, big = "acct-00005", "user-asker", "acct-big"

    def put(at: int, kind: str, account: str, event: dict[str, Any]) -> None:
        event = {"ts": ts, "account_id": account, **event}
        sent.insert(middle + at, (settings.topic(kind), owner(account), orjson.dumps([event])))

    put(0, "replies", asker, {"event_id": "answer-1", "type": "reply", "actor_id": answering, "in_reply_to": "ask-1"})
    put(30, "mentions", answering, {"event_id": "ask-1", "type": "mention", "actor_id": asker, "ts": ts + 1_000})
    put(1, "follows", big, {"event_id": "big-0", "type": "followers", "followers": 9_007_199_254_740_991})
    put(2, "follows", big, {"event_id": "big-1", "type": "follow", "actor_id": "user-f1", "ts": ts + 1})
    put(3, "follows", big, {"event_id": "big-2", "type": "follow", "actor_id": "user-f2", "ts": ts + 2})
    put(40, "likes", big, {"event_id": "big-3", "type": "like", "actor_id": "user-l1", "ts": ts + 5_000})


def decode_corpus() -> list[Any]:
    """``decode_message`` of 3,000 seeded mutations of valid events (each field in turn given a value of
    another type, a bound's neighbour, or removed; fields added), as source and as re-key input: every
    event and rejection, for the digest."""
    rnd = random.Random(5)
    odd: list[Any] = [True, False, None, 0, -1, 1.5, -0.0, 2**53 + 1, 2**63, 2**64, 10**30, 1e308, "", " ", "x" * 300]
    odd += ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "2026-01-01T00:00:00.123456789+14:00", "1767225600000"]
    odd += [[], {}, [1], {"a": 1}, "ñandú", "\u0000", "acct\nid"]
    base = {"event_id": "e1", "type": "reply", "ts": 1_767_225_600_000, "actor_id": "u1", "account_id": "a1"}
    out = []
    for n in range(3000):
        event: dict[str, Any] = dict(base, type=rnd.choice(["like", "reply", "mention", "follow", "followers"]))
        event["in_reply_to" if rnd.random() < 0.5 else "followers"] = rnd.choice([*odd, "e0", 7])
        for _ in range(rnd.randint(1, 3)):
            field = rnd.choice([*event, "extra"])
            if rnd.random() < 0.15:
                event.pop(field, None)
            else:
                event[field] = rnd.choice(odd)
        payload = json.dumps([event] if n % 3 else event).encode()
        for kind in (None, "replies"):
            events, rejections = decode_message(payload, kind)
            out.append(
                [[list(e) for e in events], [[r.reason.value, r.detail, r.index, r.payload.hex()] for r in rejections]]
            )
    return out


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

    def started() -> BatchProcessor:
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
        # record generations (in changelog keys and main records) counted from 1, not read off the clock
        processor.aggregator.generations = Generations(lambda: 0)
        return processor

    rekey_topic = settings.topic(REKEY_TOPIC)
    rekey_offsets = [0] * PARTITIONS
    looked = [0]

    async def feed(processor: BatchProcessor, stream: list[Message], sizes: list[int], then: int) -> None:
        for size in [*sizes, *[then] * (len(stream) // then + 1)]:  # batches of several sizes
            # What the processor sent to the re-key topic (forwarded events, response candidates, watermarks)
            # comes back in the next batch, as a consumer of that topic would read it.
            batch = stream[:size]
            del stream[:size]
            for topic, _key, value, partition in outbox.sent[looked[0] :]:
                if topic == rekey_topic:
                    assert partition is not None
                    batch.append(Message(topic, partition, rekey_offsets[partition], value))
                    rekey_offsets[partition] += 1
            looked[0] = len(outbox.sent)
            if batch:
                await processor.process(batch)
        await processor.flush()
        processor.writer.close()

    # Conversations in segment records from 12 on (4,000 in production): segments written, read back, pruned.
    account_state.SEGMENT_FROM, account_state.SEGMENT_SIZE = 12, 5
    source = messages(settings)
    await feed(started(), [*source, *late_messages(settings)], [1, 7, 50], 20)
    # A restart: a new processor on the same changelog table, given the last 400 source messages again (as
    # after a crash before their offsets were committed): every state read back, each event a replay.
    await feed(started(), source[-400:], [], 300)
    outputs = normalized(warehouse, outbox)
    counts = {  # the counters the processor published (its own metrics registry: this process's), but times
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for family in metrics.REGISTRY.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and not sample.name.endswith("_seconds_total")
    }
    return {
        "compiled": compiled.STATUS.active,
        "rows": {
            table: sum(len(next(iter(b.values()))) for b in blocks) for table, blocks in outputs["tables"].items()
        },
        "sent": {topic: sum(1 for s in outputs["sent"] if s[0] == topic) for topic in {s[0] for s in outputs["sent"]}},
        "counts": counts,
        "big_account_rates": sorted(  # the engagement rates of acct-big's rows with its like (see crafted)
            {
                rate.hex()
                for block in outputs["tables"]["engagement_windows"]
                for account, likes, rate in zip(
                    block["account_id"], block["likes"], block["engagement_rate"], strict=True
                )
                if account == "acct-big" and likes
            }
        ),
        "digests": {
            **{f"table {name}": digest(blocks) for name, blocks in outputs["tables"].items()},
            "sent": digest(outputs["sent"]),
            "changelog": digest(sorted([k.hex(), v.hex()] for k, v in table.items())),
            "decode corpus": digest(decode_corpus()),
        },
    }


if __name__ == "__main__":
    print(orjson.dumps(asyncio.run(run()), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode())
