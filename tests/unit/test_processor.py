"""The batch data path with fakes for Kafka, the table and ClickHouse: no network."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import metrics
from pipeline.account_state import input_position
from pipeline.aggregator import NO_FRONTIER
from pipeline.brake import DeadLetterBrake, DeadLetterBrakeTripped
from pipeline.partitioning import account_partitioner
from pipeline.processor import (
    HIGHWATER_MAX_AGE_MS,
    BatchFailed,
    BatchProcessor,
    Message,
    StagedStore,
    _chunks,
    element_positions,
)
from pipeline.settings import Settings
from pipeline.sink import WarehouseWriter
from pipeline.warehouse import QueryResult, WarehouseUnavailable

T0 = 1_767_225_600_000


class FakeTable(dict[bytes, bytes]):
    pass


class FakeOutbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, int | None]] = []

    async def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.sent.append((topic, key, value, partition))

    def on(self, topic: str) -> list[Any]:
        return [orjson.loads(v) for t, _, v, _ in self.sent if t == topic]


class FakeWarehouse:
    kind = "fake"
    database = "engagement"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.inserts: list[tuple[str, dict[str, list[Any]]]] = []

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        if self.failures:
            self.failures -= 1
            raise WarehouseUnavailable("connection refused")
        self.inserts.append((table, {k: list(v) for k, v in columns.items()}))

    def rows(self, table: str) -> list[dict[str, Any]]:
        out = []
        for name, columns in self.inserts:
            if name == table:
                keys = list(columns)
                out.extend(dict(zip(keys, values, strict=True)) for values in zip(*columns.values(), strict=True))
        return out

    def execute(self, sql: str, params: Any = None) -> None: ...

    def query(self, sql: str, params: Any = None) -> QueryResult:
        return QueryResult([], [])

    def server_version(self) -> tuple[int, int]:
        return (26, 9)

    def close(self) -> None: ...


def make(  # type: ignore[no-untyped-def]
    partitions: int = 2,
    failures: int = 0,
    highwaters: dict[tuple[str, int], int] | None = None,
    table: FakeTable | None = None,
    fetched_at: dict[tuple[str, int], int] | None = None,
    clock: list[float] | None = None,
):
    """A processor owning every partition, with its fakes; ``table``: a Faust table to resume from;
    ``clock``: the processor's monotonic time (``clock[0]``; fixed unless a test moves it, so no persist
    slice comes due by itself)."""
    now = [0.0] if clock is None else clock
    settings = Settings.from_env({}, partitions=partitions, window_seconds=60, allowed_lateness_seconds=60)
    warehouse = FakeWarehouse(failures)
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    writer = WarehouseWriter(lambda: warehouse, sleep=no_sleep)  # type: ignore[arg-type,return-value]
    outbox = FakeOutbox()
    table = FakeTable() if table is None else table
    marks = highwaters if highwaters is not None else {}
    processor = BatchProcessor(
        settings,
        StagedStore(table),
        writer,
        outbox,
        account_partitioner(partitions),
        lambda topic, p: marks.get((topic, p), 0),
        fetched_at=lambda topic, p: (fetched_at or {}).get((topic, p)),
        monotonic=lambda: now[0],
    )
    processor.on_assignment(set(range(partitions)))
    return processor, outbox, warehouse, table, slept


def owned_by(partition: int, partitions: int = 2, prefix: str = "acct") -> str:
    owner = account_partitioner(partitions)
    return next(f"{prefix}{i}" for i in range(1000) if owner(f"{prefix}{i}") == partition)


def like(eid: str, account: str, sec: int = 0, actor: str = "u1") -> dict[str, Any]:
    return {"event_id": eid, "type": "like", "ts": T0 + sec * 1000, "actor_id": actor, "account_id": account}


def test_bad_input_becomes_dead_letters_with_source_and_good_siblings_count() -> None:
    processor, outbox, warehouse, _, _ = make()
    account = owned_by(0)
    payload = orjson.dumps([like("e1", account), {"type": "like"}, like("e2", account, actor="u2")])
    asyncio.run(
        processor.process(
            [
                Message("likes", 0, 7, payload),
                Message("likes", 0, 8, b"\xff\xfe"),
                Message("likes", 0, 9, b"x" * (1024 * 1024 + 1)),
            ]
        )
    )
    letters = outbox.on("engagement-dead-letters")
    assert [(d["reason"], d["source_offset"], d["element_index"]) for d in letters] == [
        ("missing_field", 7, 1),
        ("invalid_utf8", 8, -1),
        ("too_large", 9, -1),
    ]
    assert letters[2]["truncated"] == 1 and len(letters[2]["payload"]) == 4096
    assert sorted(r["event_id"] for r in warehouse.rows("engagement_events")) == ["e1", "e2"]
    assert warehouse.rows("engagement_windows")[0]["engagers"] == 2


def test_event_on_the_wrong_partition_is_rekeyed_then_counted_where_it_belongs() -> None:
    processor, outbox, warehouse, _, _ = make()
    account = owned_by(1)
    asyncio.run(processor.process([Message("likes", 0, 3, orjson.dumps(like("e1", account)))]))
    assert warehouse.rows("engagement_events") == []
    (_topic, key, value, partition), *_ = [s for s in outbox.sent if s[0] == "engagement-rekeyed" and s[1]]
    assert key == account.encode() and partition is None
    asyncio.run(processor.process([Message("engagement-rekeyed", 1, 0, value)]))
    (row,) = warehouse.rows("engagement_events")
    assert (row["event_id"], row["source_topic"], row["source_partition"], row["source_offset"]) == (
        "e1",
        "likes",
        0,
        3,
    )


def reply_from_responder(account: str) -> dict[str, Any]:
    """A reply by ``responder`` to the post ``q`` of ``account``: re-keyed to the responder's partition."""
    return {
        "event_id": "r",
        "type": "reply",
        "ts": T0,
        "actor_id": "responder",
        "account_id": account,
        "in_reply_to": "q",
    }


def test_replies_are_forwarded_to_the_responder_and_announced_after() -> None:
    processor, outbox, _, _, _ = make()
    account = owned_by(0)
    reply = reply_from_responder(account)
    asyncio.run(processor.process([Message("replies", 0, 0, orjson.dumps(reply))]))
    rekeyed = [(k, orjson.loads(v), p) for t, k, v, p in outbox.sent if t == "engagement-rekeyed"]
    kinds = [m["k"] for _, m, _ in rekeyed]
    assert kinds[0] == "rs" and rekeyed[0][1]["c"] == [["r", "responder", "q", T0]]
    assert rekeyed[0][2] == account_partitioner(2)("responder")  # on the responder's partition
    assert set(kinds[1:]) == {"w"} and sorted(p for _, _, p in rekeyed[1:]) == [0, 1]  # to every partition


def test_a_stray_reply_sends_its_response_candidate_from_the_source_not_after_the_re_key_hop() -> None:
    """A reply read on a partition that does not own its account is re-keyed to the owner; its response
    candidate must leave with the source's own output, before the source announces its frontier: sent
    from the owner after the hop, it could reach the responder once its window is final."""
    processor, outbox, _, _, _ = make()
    account = owned_by(1)
    reply = {"event_id": "r", "type": "reply", "ts": T0, "actor_id": "me", "account_id": account, "in_reply_to": "q"}
    asyncio.run(processor.process([Message("replies", 0, 0, orjson.dumps(reply))]))
    rekeyed = [(k, orjson.loads(v)) for t, k, v, _ in outbox.sent if t == "engagement-rekeyed"]
    assert [(k, m["k"]) for k, m in rekeyed if m["k"] != "w"] == [(b"", "rs"), (account.encode(), "e")]
    kinds = [m["k"] for _, m in rekeyed]
    assert kinds.index("w") > kinds.index("rs")  # announced after the candidate was sent
    forward = next(orjson.dumps(m) for _, m in rekeyed if m["k"] == "e")
    outbox.sent.clear()
    asyncio.run(processor.process([Message("engagement-rekeyed", 1, 0, forward)]))  # the owner counts it
    assert "rs" not in [orjson.loads(v)["k"] for t, _, v, _ in outbox.sent if t == "engagement-rekeyed"]  # once


def test_frontier_waits_for_every_upstream_partition() -> None:
    processor, _, _, _, _ = make(highwaters={("likes", 0): 5, ("likes", 1): 5})
    acc0, acc1 = owned_by(0), owned_by(1)
    messages = [Message("likes", 0, i, orjson.dumps(like(f"a{i}", acc0, sec=i * 100))) for i in range(5)]
    asyncio.run(processor.process(messages))
    assert processor.frontier(0) == NO_FRONTIER  # partition 1 has not announced anything yet
    marker = orjson.dumps({"k": "w", "q": 1, "t": T0 + 50_000})
    own = orjson.dumps({"k": "w", "q": 0, "t": T0 + 400_000})
    asyncio.run(
        processor.process([Message("engagement-rekeyed", 0, 0, marker), Message("engagement-rekeyed", 0, 1, own)])
    )
    assert processor.frontier(0) == T0 + 50_000
    asyncio.run(processor.process([Message("likes", 1, i, orjson.dumps(like(f"b{i}", acc1, sec=i))) for i in range(5)]))
    assert processor.source_frontier(1) == T0 + 4_000  # caught up: the highest watermark


def test_a_topic_whose_highwater_is_stale_holds_time_back() -> None:
    """Offsets say "caught up" only as of the last fetch: messages published since are unread. A topic
    whose highwater is older than HIGHWATER_MAX_AGE_MS holds time back at its own watermark."""
    now_ms = int(time.time() * 1000)
    fetched = {("likes", 0): now_ms, ("replies", 0): now_ms}
    processor, _, _, _, _ = make(partitions=1, highwaters={("likes", 0): 3, ("replies", 0): 1}, fetched_at=fetched)
    account = owned_by(0, partitions=1)
    reply = {**like("r0", account, sec=10), "type": "reply"}
    messages = [Message("likes", 0, i, orjson.dumps(like(f"a{i}", account, sec=i * 100))) for i in range(3)]
    asyncio.run(processor.process([*messages, Message("replies", 0, 0, orjson.dumps(reply))]))
    assert processor.source_frontier(0) == T0 + 200_000  # both caught up, fresh: the highest watermark
    fetched[("replies", 0)] = now_ms - HIGHWATER_MAX_AGE_MS - 1_000
    assert processor.source_frontier(0) == T0 + 10_000  # replies may have unread messages: wait for them
    fetched[("replies", 0)] = int(time.time() * 1000)
    assert processor.source_frontier(0) == T0 + 200_000


def test_clickhouse_outage_is_retried_and_state_waits_for_durability() -> None:
    processor, _, warehouse, table, slept = make(failures=3)
    account = owned_by(0)
    asyncio.run(processor.process([Message("likes", 0, 0, orjson.dumps(like("e1", account)))]))
    # The events and the windows blocks fail (and back off) each on their own; the events block twice.
    assert slept == [0.2, 0.4, 0.2]
    assert [r["event_id"] for r in warehouse.rows("engagement_events")] == ["e1"]
    assert account.encode() in table


@contextlib.contextmanager
def nothing_left_unobserved(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails if a coroutine was never awaited or a future's exception never retrieved in the block (both
    surface only when the object is collected, as a warning or an asyncio log line)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.unfreeze()  # what the processor's chunks froze (pipeline.collector) is collected too
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
    assert [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()] == []


def test_state_is_not_committed_when_the_write_never_happens(caplog: pytest.LogCaptureFixture) -> None:
    processor, _, warehouse, table, _ = make(failures=10**9)
    account = owned_by(0)

    async def run() -> None:
        task = asyncio.ensure_future(processor.process([Message("likes", 0, 0, orjson.dumps(like("e", account)))]))
        await asyncio.sleep(0.5)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with nothing_left_unobserved(caplog):  # the windows block, never awaited, was abandoned
        asyncio.run(run())
    assert warehouse.inserts == [] and len(table) == 0


def test_a_failed_batch_abandons_the_chunk_in_flight(caplog: pytest.LogCaptureFixture) -> None:
    processor, outbox, warehouse, table, _ = make()
    processor.settings = replace(processor.settings, batch_max_events=20)  # a chunk per valid message
    processor.brake = DeadLetterBrake(share=0.5, window=4)
    account = owned_by(0)
    good = [Message("likes", 0, m, orjson.dumps([like(f"e{m}-{i}", account) for i in range(50)])) for m in range(2)]
    bad = [Message("likes", 0, 2 + m, b"{not json") for m in range(3)]

    with nothing_left_unobserved(caplog), pytest.raises(DeadLetterBrakeTripped):
        # the first chunk is in flight (its delivery not awaited) when the third trips the brake
        asyncio.run(processor.process([good[0], bad[0], good[1], *bad[1:]]))
    # nothing of the batch is stored or acknowledged, and the in-flight chunk's dead letter was not sent
    assert len(table) == 0 and outbox.on("engagement-dead-letters") == []
    assert [name for name, _ in warehouse.inserts][:1] == ["engagement_events"]  # the first chunk's had started
    # The aggregator holds the first chunks of the batch: a persist (say, a timer that was waiting for the
    # lock) must not store them; nor may anything else be written or announced.
    for call in (processor.persist, processor.flush, processor.write_deferred, processor.announce_watermarks):
        with pytest.raises(BatchFailed, match="DeadLetterBrakeTripped"):
            asyncio.run(call())
    with pytest.raises(BatchFailed):
        asyncio.run(processor.process(good))
    assert len(table) == 0


def test_an_abandoned_processor_drops_its_delivery_in_flight_and_refuses_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    processor, outbox, _, table, _ = make()
    account = owned_by(0)
    batch = [Message("likes", 0, 0, orjson.dumps([like("e0", account)])), Message("likes", 0, 1, b"{not json")]

    async def stop_with_a_delivery_in_flight() -> None:
        await processor.process(batch, persist=False)  # its chunk's delivery is left in flight
        processor.abandon()  # the worker stops

    with nothing_left_unobserved(caplog):
        asyncio.run(stop_with_a_delivery_in_flight())
    # the chunk's dead letter was never sent, and no state was stored: the batch is replayed by the next owner
    assert outbox.on("engagement-dead-letters") == [] and len(table) == 0
    for call in (processor.persist, processor.flush, processor.write_deferred, processor.announce_watermarks):
        with pytest.raises(BatchFailed, match="the worker stopped"):
            asyncio.run(call())
    with pytest.raises(BatchFailed):
        asyncio.run(processor.process(batch))
    processor.abandon()  # again: nothing in flight, nothing raised


def test_abandon_after_the_loop_closed_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    """As at a worker's stop: Faust's loop is closed when the processor abandons its delivery in flight,
    whose inserts may have landed meanwhile."""
    processor, outbox, warehouse, table, _ = make()
    batch = [Message("likes", 0, 0, orjson.dumps([like("e0", owned_by(0))]))]

    async def process_then_stop() -> None:
        await processor.process(batch, persist=False)
        for _ in range(200):  # the chunk's first insert lands on the warehouse thread
            if warehouse.inserts:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)

    with nothing_left_unobserved(caplog):
        asyncio.run(process_then_stop())
        assert warehouse.inserts  # the insert landed: its future is done, on a loop now closed
        processor.abandon()
    assert outbox.on("engagement-alerts") == [] and len(table) == 0


def test_late_event_is_dead_lettered(caplog: pytest.LogCaptureFixture) -> None:
    processor, outbox, _, _, _ = make(partitions=1, highwaters={("likes", 0): 3})
    account = owned_by(0, partitions=1)
    late_marker = orjson.dumps({"k": "w", "q": 0, "t": T0 + 10_000_000})
    asyncio.run(
        processor.process(
            [
                Message("engagement-rekeyed", 0, 0, late_marker),
                Message("likes", 0, 0, orjson.dumps(like("new", account, sec=10_000))),
                Message("likes", 0, 1, orjson.dumps(like("old", account, sec=0))),
            ]
        )
    )
    asyncio.run(processor.process([Message("likes", 0, 2, orjson.dumps(like("old2", account, sec=1)))]))
    reasons = [(d["reason"], d["source_offset"]) for d in outbox.on("engagement-dead-letters")]
    assert ("late", 2) in reasons
    # One log line (rate-limited) says what moved time past it, with each source topic's read position.
    explained = [r.getMessage() for r in caplog.records if r.getMessage().startswith("late event")]
    assert len(explained) == 1 and explained[0].startswith(f"late event old2 of {account} at {T0 + 1_000}")
    assert f"partition 0 frontier {T0 + 10_000_000}" in explained[0] and "likes:0 watermark=" in explained[0]


FORWARDED = {"k": "e", "v": like("fwd", "acct1"), "t": "likes", "p": 0, "o": 3, "i": 0}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "invalid_json"),
        (b"[]", "wrong_type"),
        (b"{}", "missing_field"),
        (b'{"k": "r"}', "missing_field"),
        (b'{"k": "rs", "c": [["e", "a"]]}', "wrong_type"),
        (b'{"k": "rs", "c": {"e": 1}}', "wrong_type"),
        (b'{"k": "e", "v": {"type": "like"}}', "missing_field"),
        (b'{"k": "w", "q": 0, "t": "five"}', "wrong_type"),
        (b'{"k": "w", "q": true, "t": 5}', "wrong_type"),
        (orjson.dumps({**FORWARDED, "o": 2**63}), "wrong_type"),  # beyond Int64: the raw insert would fail
        (orjson.dumps({**FORWARDED, "o": "five"}), "wrong_type"),
        (orjson.dumps({**FORWARDED, "p": -1}), "wrong_type"),
        (orjson.dumps({**FORWARDED, "i": 1.5}), "wrong_type"),
        (orjson.dumps({**FORWARDED, "o": 2**41}), "wrong_type"),  # its input position would not fit a state
        (orjson.dumps({**FORWARDED, "p": 2**31}), "wrong_type"),  # an Int32 column
        (orjson.dumps({**FORWARDED, "t": "x" * 250}), "wrong_type"),
        (b'{"k": "w", "q": 2, "t": 5}', "wrong_type"),  # partition 2 of 2: no such source
    ],
)
def test_corrupt_rekey_messages_are_dead_lettered_not_raised(value: bytes, reason: str) -> None:
    processor, outbox, warehouse, _, _ = make()
    asyncio.run(processor.process([Message("engagement-rekeyed", 0, 0, value)]))
    assert [d["reason"] for d in outbox.on("engagement-dead-letters")] == [reason]
    assert warehouse.rows("engagement_events") == []


def test_a_malformed_response_candidate_is_dead_lettered_alone_and_never_reaches_state() -> None:
    """A candidate with a list for an id used to wait in the account's pending responses and crash the
    worker at the next reply or mention it answered (an unhashable id), at every restart."""
    processor, outbox, warehouse, _, _ = make(partitions=1)
    me = owned_by(0, partitions=1)
    good = [f"r{i}" for i in range(2)]
    rows = [[good[0], me, "m1", T0], [["x"], me, "m1", T0], [good[1], me, "m1", T0 + 1.5], [good[1], me, "m1", T0]]
    asyncio.run(processor.process([Message("engagement-rekeyed", 0, 0, orjson.dumps({"k": "rs", "c": rows}))]))
    letters = [(d["reason"], d["element_index"]) for d in outbox.on("engagement-dead-letters")]
    assert letters == [("wrong_type", 1), ("wrong_type", 2)]  # a list for an id; a float time
    mention = {**like("m1", me, actor="u9"), "type": "mention"}
    asyncio.run(processor.process([Message("mentions", 0, 0, orjson.dumps(mention))]))
    asyncio.run(processor.flush())
    (window,) = [r for r in warehouse.rows("engagement_windows") if r["final"] == 1 and r["account_id"] == me]
    assert (window["mentions"], window["responses"]) == (1, 2)  # r0 and r1 (once)


def test_watermark_announcements_of_no_frontier_are_valid() -> None:
    processor, outbox, _, _, _ = make()
    announcement = orjson.dumps({"k": "w", "q": 1, "t": NO_FRONTIER})
    asyncio.run(processor.process([Message("engagement-rekeyed", 0, 0, announcement)]))
    assert outbox.on("engagement-dead-letters") == []


def test_response_candidates_travel_several_per_message_and_each_counts_once() -> None:
    """A chunk's replies leave as one re-key message per responder partition (at most
    CANDIDATES_PER_MESSAGE each), not one send per reply; the responder counts each answer once, and a
    message of the earlier one-candidate form is still read."""
    from pipeline import processor as processor_module

    processor, outbox, warehouse, _, _ = make()
    me = owned_by(0)
    asked = [
        {"event_id": f"q{i}", "type": "mention", "ts": T0, "actor_id": f"fan{i}", "account_id": me} for i in range(5)
    ]
    asyncio.run(processor.process([Message("mentions", 0, 0, orjson.dumps(asked))]))
    replies = [
        {
            "event_id": f"r{i}",
            "type": "reply",
            "ts": T0 + 1000,
            "actor_id": me,
            "account_id": f"fan{i}",
            "in_reply_to": f"q{i}",
        }
        for i in range(4)
    ]
    outbox.sent.clear()
    processor_module.CANDIDATES_PER_MESSAGE, before = 3, processor_module.CANDIDATES_PER_MESSAGE
    try:
        asyncio.run(processor.process([Message("replies", 1, 0, orjson.dumps(replies))]))
    finally:
        processor_module.CANDIDATES_PER_MESSAGE = before
    batches = [(p, orjson.loads(v)) for t, _, v, p in outbox.sent if t == "engagement-rekeyed" and b'"rs"' in v]
    assert [(p, len(m["c"])) for p, m in batches] == [(0, 3), (0, 1)]  # to my partition, in order, capped
    assert [c[0] for _, m in batches for c in m["c"]] == ["r0", "r1", "r2", "r3"]
    single = orjson.dumps({"k": "r", "e": "r4", "a": me, "i": "q4", "t": T0 + 1000})
    messages = [Message("engagement-rekeyed", 0, i, orjson.dumps(m)) for i, (_, m) in enumerate(batches)]
    messages.append(Message("engagement-rekeyed", 0, 2, single))
    messages.append(Message("engagement-rekeyed", 0, 3, orjson.dumps(batches[0][1])))  # delivered twice
    asyncio.run(processor.process(messages))
    asyncio.run(processor.flush())
    (window,) = [r for r in warehouse.rows("engagement_windows") if r["final"] == 1 and r["account_id"] == me]
    assert window["responses"] == 5


def test_large_batches_are_written_in_chunks_and_count_the_same() -> None:
    processor, _, warehouse, _, _ = make()
    processor.settings = replace(processor.settings, batch_max_events=50)
    account = owned_by(0)
    payloads = [orjson.dumps([like(f"e{m}-{i}", account, actor=f"u{i}") for i in range(40)]) for m in range(5)]
    asyncio.run(processor.process([Message("likes", 0, m, p) for m, p in enumerate(payloads)]))
    writes = [name for name, _ in warehouse.inserts if name == "engagement_events"]
    assert len(writes) > 1  # more than one chunk
    assert len(warehouse.rows("engagement_events")) == 200
    asyncio.run(processor.flush())
    final = [r for r in warehouse.rows("engagement_windows") if r["final"] == 1]
    assert [(r["likes"], r["engagers"]) for r in final] == [(200, 40)]


def test_the_time_a_batch_waits_for_its_deliveries_is_counted() -> None:
    """Inserts that take 0.2 s each on the warehouse thread: the batch's waits for them (for the chunk
    ahead's, and for the last chunk's before its states are persisted) are counted in
    ``engagement_delivery_wait_seconds_total``, within the batch's own time."""
    processor, _, warehouse, _, _ = make()
    insert = warehouse.insert

    def slow_insert(table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        time.sleep(0.2)
        insert(table, columns)

    warehouse.insert = slow_insert  # type: ignore[method-assign]
    account = owned_by(0)
    payloads = [orjson.dumps([like(f"e{m}-{i}", account, actor=f"u{i}") for i in range(40)]) for m in range(3)]
    processor.settings = replace(processor.settings, batch_max_events=len(payloads[0]) // 200)  # a chunk each

    def sample(name: str) -> float:
        return metrics.REGISTRY.get_sample_value(name) or 0.0

    waited, busy = sample("engagement_delivery_wait_seconds_total"), sample("engagement_batch_seconds_sum")
    asyncio.run(processor.process([Message("likes", 0, m, p) for m, p in enumerate(payloads)]))
    waited = sample("engagement_delivery_wait_seconds_total") - waited
    busy = sample("engagement_batch_seconds_sum") - busy
    assert len([name for name, _ in warehouse.inserts if name == "engagement_events"]) == 3
    # Four inserts of 0.2 s (three chunks' events, the first chunk's windows) while the chunks take
    # milliseconds to aggregate: the batch waited for most of them.
    assert 0.4 <= waited <= busy


def test_a_large_batch_is_cut_into_chunks_of_about_the_same_size() -> None:
    """Seven messages of the same size, at most three per chunk: three chunks of about 7/3 messages each
    (2, 3, 2), not 3, 3 and a short 1."""
    processor, _, warehouse, _, _ = make()
    account = owned_by(0)
    payloads = [orjson.dumps([like(f"e{m}-{i}", account, actor=f"u{i}") for i in range(40)]) for m in range(7)]
    per_message = len(payloads[0]) // 200  # the processor's estimate of a message's events
    assert all(len(p) // 200 == per_message for p in payloads)
    processor.settings = replace(processor.settings, batch_max_events=3 * per_message)
    asyncio.run(processor.process([Message("likes", 0, m, p) for m, p in enumerate(payloads)]))
    chunks = [len(block["event_id"]) for name, block in warehouse.inserts if name == "engagement_events"]
    assert chunks == [80, 120, 80]
    assert len(warehouse.rows("engagement_events")) == 280


@given(st.lists(st.integers(min_value=1, max_value=3000), max_size=60), st.integers(min_value=1, max_value=5000))
def test_chunks_keep_every_message_in_order_and_cut_evenly(events: list[int], limit: int) -> None:
    # messages carrying those events (the estimate: a JSON array's bytes / 200)
    messages = [Message("likes", 0, offset, b"[" + b" " * (200 * n - 1)) for offset, n in enumerate(events)]
    chunks = _chunks(messages, limit)
    assert [m for chunk in chunks for m in chunk] == messages and all(chunks)
    total = sum(events)
    count = -(-total // limit)  # the fewest chunks of at most ``limit``
    assert len(chunks) <= count
    if events and max(events) <= total / count:  # no message larger than a chunk's share: that many chunks
        assert len(chunks) == count
    for chunk in chunks:  # a share at most, and the halves of its first and last messages
        sizes = [len(m.value or b"") // 200 for m in chunk]
        assert sum(sizes) - max(sizes) <= total / count <= limit


def test_states_of_several_batches_are_persisted_together_and_survive_a_reassignment() -> None:
    processor, _, warehouse, table, _ = make()
    account = owned_by(0)

    async def run() -> None:
        await processor.process([Message("likes", 0, 0, orjson.dumps(like("e1", account)))], persist=False)
        await processor.process([Message("likes", 0, 1, orjson.dumps(like("e2", account, actor="u2")))], persist=False)
        assert len(warehouse.rows("engagement_events")) >= 1  # the first batch's rows have landed...
        assert account.encode() not in table  # ...states wait for persist()
        processor.on_assignment({0})  # a rebalance in between keeps what is not persisted yet
        await processor.process([Message("likes", 0, 2, orjson.dumps(like("e2", account, actor="u2")))], persist=False)
        await (await processor.persist())
        assert account.encode() in table
        assert len(warehouse.rows("engagement_events")) == 2  # ...the last one's were in flight until persist()
        await processor.flush()

    asyncio.run(run())
    final = [r for r in warehouse.rows("engagement_windows") if r["final"] == 1]
    assert [(r["likes"], r["engagers"]) for r in final] == [(2, 2)]  # e2 again was a duplicate


def test_unpersisted_changes_of_revoked_partitions_are_dropped_not_written() -> None:
    processor, _, _, table, _ = make()
    kept, revoked = owned_by(0), owned_by(1)

    async def run() -> None:
        await processor.process(
            [
                Message("likes", 0, 0, orjson.dumps(like("e1", kept))),
                Message("likes", 1, 0, orjson.dumps(like("e2", revoked))),
            ],
            persist=False,
        )
        processor.on_assignment({0})  # partition 1 moved to another worker before our persist
        await (await processor.persist())

    asyncio.run(run())
    assert kept.encode() in table and revoked.encode() not in table


def test_a_replay_of_what_the_stored_states_hold_is_skipped_even_where_windows_are_final() -> None:
    """A crash after the states are stored but before the offsets are committed: the next worker reads
    the same messages again. Their events must neither count twice nor be dead-lettered as late."""
    account, elsewhere = owned_by(0), owned_by(1)
    frontier = orjson.dumps({"k": "w", "q": 0, "t": T0 + 200_000})  # finalizes the first window
    first_run = [
        Message("likes", 0, 0, orjson.dumps([like("a", account), like("b", account, actor="u2")])),
        Message("likes", 0, 1, orjson.dumps(like("c", account, sec=190))),
        Message("likes", 0, 2, orjson.dumps(like("d", elsewhere, sec=190))),  # forwarded to partition 1
    ]
    processor, outbox, warehouse, table, _ = make(partitions=2, highwaters={("likes", 0): 3})
    markers = [Message("engagement-rekeyed", 0, i, frontier.replace(b'"q":0', b'"q":%d' % i)) for i in range(2)]
    asyncio.run(processor.process(markers + first_run))
    (forward,) = [value for topic, key, value, _ in outbox.sent if topic == "engagement-rekeyed" and key]
    asyncio.run(processor.process([Message("engagement-rekeyed", 1, 0, forward)]))
    assert [(r["likes"], r["final"]) for r in warehouse.rows("engagement_windows") if r["final"]] == [(2, 1)]

    # The restart: the same table, offsets never committed; the forward arrives again at a new offset.
    again, outbox_again, warehouse_again, _, _ = make(partitions=2, highwaters={("likes", 0): 4}, table=table)
    asyncio.run(
        again.process(markers + first_run + [Message("likes", 0, 3, orjson.dumps(like("e", account, sec=191)))])
    )
    asyncio.run(again.process([Message("engagement-rekeyed", 1, 5, forward)]))
    assert outbox_again.on("engagement-dead-letters") == []  # nothing "late"
    assert [r["event_id"] for r in warehouse_again.rows("engagement_events")] == ["e"]  # the rest is durable
    asyncio.run(again.flush())
    windows = {(r["account_id"], r["window_start"]): r["likes"] for r in warehouse_again.rows("engagement_windows")}
    assert windows == {(account, (T0 + 180_000) // 1000): 2, (elsewhere, (T0 + 180_000) // 1000): 1}  # c, e; d once


def test_an_event_far_ahead_of_the_clock_is_dead_lettered_and_moves_no_time() -> None:
    processor, outbox, warehouse, _, _ = make(partitions=1)
    account = owned_by(0, partitions=1)
    ahead = int(time.time() * 1000) + 2 * 86_400_000  # a producer's clock two days fast
    mixed = [like("now", account), {**like("f1", account), "ts": ahead}, {**like("f2", account), "ts": ahead + 1}]
    asyncio.run(processor.process([Message("likes", 0, 0, orjson.dumps(mixed))]))
    # then an on-time event: had the future ones moved event time, it would be late
    asyncio.run(processor.process([Message("likes", 0, 1, orjson.dumps(like("next", account, sec=1, actor="u2")))]))
    letters = outbox.on("engagement-dead-letters")
    assert [(d["reason"], d["dead_letter_id"], d["element_index"]) for d in letters] == [
        ("future_ts", "likes/0/0/1/future_ts/f1", 1),
        ("future_ts", "likes/0/0/2/future_ts/f2", 2),
    ]
    assert "ENGAGEMENT_MAX_FUTURE_SECONDS" in letters[0]["detail"]
    assert sorted(r["event_id"] for r in warehouse.rows("engagement_events")) == ["next", "now"]


def test_the_future_bound_can_be_lifted() -> None:
    processor, outbox, warehouse, _, _ = make(partitions=1)
    processor.settings = replace(processor.settings, max_future_seconds=0)
    account = owned_by(0, partitions=1)
    ahead = {**like("f", account), "ts": int(time.time() * 1000) + 2 * 86_400_000}
    asyncio.run(processor.process([Message("likes", 0, 0, orjson.dumps(ahead))]))
    assert outbox.on("engagement-dead-letters") == []
    assert [r["event_id"] for r in warehouse.rows("engagement_events")] == ["f"]


def test_a_followers_snapshot_naming_the_account_as_actor_still_counts() -> None:
    processor, _, warehouse, _, _ = make(partitions=1)
    account = owned_by(0, partitions=1)
    snapshot = {"event_id": "s", "type": "followers", "ts": T0, "account_id": account, "actor_id": account}
    asyncio.run(processor.process([Message("follows", 0, 0, orjson.dumps({**snapshot, "followers": 40}))]))
    asyncio.run(processor.process([Message("likes", 0, 0, orjson.dumps(like("e", account, sec=1)))]))
    asyncio.run(processor.flush())
    (window,) = [r for r in warehouse.rows("engagement_windows") if r["final"] == 1]
    assert (window["followers"], window["engagers"]) == (40, 1)


def test_a_generation_gone_by_unseen_keeps_nothing_unpersisted_and_reads_the_states_again() -> None:
    """Partition 0 went to another worker and came back while this one was busy (it saw generation 1,
    then 3): the other worker replayed what this one had not persisted, went on, and stored its states.
    Keeping ours (and persisting them later) would overwrite the other's newer state."""
    processor, _, warehouse, table, _ = make()
    account = owned_by(0)
    second = Message("likes", 0, 1, orjson.dumps(like("e2", account, actor="u2")))
    third = Message("likes", 0, 2, orjson.dumps(like("e3", account, actor="u3")))

    async def run() -> None:
        processor.on_assignment({0, 1}, generation=1)
        await processor.process([Message("likes", 0, 0, orjson.dumps(like("e1", account)))])
        await processor.process([second], persist=False)
        other, _, _, _, _ = make(table=table)  # generation 2: the other worker, from the committed offset 1
        await other.process([second, third])
        processor.on_assignment({0, 1}, generation=3)
        await processor.flush()

    asyncio.run(run())
    final = [r for r in warehouse.rows("engagement_windows") if r["final"] == 1]
    assert [(r["likes"], r["engagers"]) for r in final] == [(3, 3)]


def test_an_assignment_seen_late_is_ignored_and_the_next_generation_keeps_unpersisted_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    processor, _, _, table, _ = make()
    account = owned_by(0)

    async def run() -> None:
        processor.on_assignment({0, 1}, generation=4)
        await processor.process([Message("likes", 0, 0, orjson.dumps(like("e1", account)))], persist=False)
        processor.on_assignment({0}, generation=3)  # an observation older than the one applied: ignored
        assert processor.owned == {0, 1}
        processor.on_assignment({0}, generation=5)  # the next generation: partition 0 was kept throughout
        await (await processor.persist())

    asyncio.run(run())
    assert account.encode() in table
    joining, _, _, _, _ = make()
    joining.on_assignment(set(), generation=0)  # before its group took it in
    with caplog.at_level(logging.WARNING, logger="pipeline.processor"):
        joining.on_assignment({1}, generation=57)  # a group well past its first generation
    assert not caplog.records and joining.owned == {1}


def slow_inserts(warehouse: FakeWarehouse, seconds: float = 0.2) -> None:
    """Make every insert take ``seconds`` (on the warehouse thread): a batch's delivery is still in
    flight when the next one starts."""
    insert = warehouse.insert

    def slow_insert(table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        time.sleep(seconds)
        insert(table, columns)

    warehouse.insert = slow_insert  # type: ignore[method-assign]


def stored_likes(table: Mapping[bytes, bytes], account: str) -> int | None:
    """The likes of the account's stored state (its one open window), None if not stored."""
    raw = table.get(account.encode())
    return None if raw is None else sum(w[1] for w in orjson.loads(raw)[0])


def test_under_load_states_are_persisted_in_slices_each_after_the_rows_it_holds_are_durable() -> None:
    """Every persist interval / PERSIST_SLICES a batch ends by staging the oldest touched states, as it
    left them, once its own rows are on their way to ClickHouse (staged before its chunks, the slice held
    them back), and the slice is committed after the next batch's first chunk, which awaits those rows.
    A batch is covered once every state it touched is stored."""
    clock = [0.0]
    processor, _, warehouse, table, _ = make(partitions=1, clock=clock)
    accounts = [f"acct{i}" for i in range(10)]
    rows_seen_by_commits: list[int] = []
    commit = processor.store.commit

    async def watched_commit() -> Any:
        rows_seen_by_commits.append(len(warehouse.rows("engagement_events")))
        return await commit()

    processor.store.commit = watched_commit  # type: ignore[method-assign]
    rows_handed_over = [0]  # raw event rows handed to the warehouse writer so far
    write_soon = processor.writer.write_soon

    def counted_write_soon(table_name: str, columns: Mapping[str, Sequence[Any]]) -> Any:
        if table_name == "engagement_events":
            rows_handed_over[0] += len(next(iter(columns.values())))
        return write_soon(table_name, columns)

    processor.writer.write_soon = counted_write_soon  # type: ignore[method-assign]
    rows_handed_over_by_slices: list[int] = []
    stage_slice = processor._stage_slice

    def watched_stage_slice() -> bool:
        staged = stage_slice()
        if staged:
            rows_handed_over_by_slices.append(rows_handed_over[0])
        return staged

    processor._stage_slice = watched_stage_slice  # type: ignore[method-assign]
    slow_inserts(warehouse)  # a batch's rows are still in flight when the next batch starts
    first = [Message("likes", 0, i, orjson.dumps(like(f"e{i}", a))) for i, a in enumerate(accounts)]
    second = [Message("likes", 0, 10, orjson.dumps(like("e10", accounts[0], actor="u2")))]

    def other(offset: int) -> list[Message]:
        return [Message("likes", 0, offset, orjson.dumps(like(f"e{offset}", f"other{offset}")))]

    async def run() -> list[int]:
        positions = []
        await processor.process(first, persist=False)
        positions.append(processor.aggregator.touch_position)
        clock[0] = 1.0  # interval 5 s / 5 slices: the second batch ends by staging a slice
        await processor.process(second, persist=False)
        positions.append(processor.aggregator.touch_position)
        assert rows_handed_over_by_slices == [11]  # staged once the second batch's rows were handed over
        assert processor.slices_committed() == (None, 0)  # staged, not committed: its rows are in flight
        assert not table  # nothing stored yet
        clock[0] = 1.5
        await processor.process(other(11), persist=False)  # its first chunk lands the second batch's rows
        durable, covered = processor.slices_committed()
        assert durable is not None
        await durable
        assert len(rows_seen_by_commits) == 1 and rows_seen_by_commits[0] >= 11  # both batches' rows durable
        assert covered == 2 and positions == [10, 10]  # the two oldest touches (accounts[0]'s is one)
        assert [stored_likes(table, a) for a in accounts[:3]] == [2, 1, None]  # as the second batch left them
        clock[0] = 6.0  # the first two batches ended an interval ago: everything they touched is due
        await processor.process(other(12), persist=False)
        assert rows_handed_over_by_slices == [11, 13]
        await processor.process(other(13), persist=False)  # commits that slice
        durable, covered = processor.slices_committed()
        assert durable is not None
        await durable
        await (await processor.persist())  # the last batch's delivery lands: nothing left in flight
        return [covered, *positions]

    covered, *positions = asyncio.run(run())
    assert covered >= max(positions)  # both batches may be acknowledged
    assert [stored_likes(table, a) for a in accounts] == [2] + [1] * 9


def test_a_crash_between_slices_replays_exactly() -> None:
    """The worker acknowledges no batch a slice does not cover; after a crash the next worker reads those
    batches again over the stored states, some of which (the slices) already hold part of them."""
    clock = [0.0]
    processor, _, _, table, _ = make(partitions=1, clock=clock)
    accounts = [f"acct{i}" for i in range(6)]
    batches = [
        [
            Message("likes", 0, 6 * b + i, orjson.dumps(like(f"e{b}-{i}", a, sec=b, actor=f"u{b}")))
            for i, a in enumerate(accounts)
        ]
        for b in range(3)
    ]

    async def crash_after_slices() -> None:
        for b, batch in enumerate(batches):
            clock[0] = float(b)
            await processor.process(batch, persist=False)
        durable, covered = processor.slices_committed()
        assert durable is not None and 0 < covered < processor.aggregator.touch_position
        await durable  # then the worker dies, every batch unacknowledged
        processor.abandon()  # the last batch's delivery dies with it

    asyncio.run(crash_after_slices())
    held = sum(stored_likes(table, a) or 0 for a in accounts)
    assert 0 < held < 18  # the slices stored part of the input
    again, _, warehouse, _, _ = make(partitions=1, table=FakeTable(table))
    replayed_before = outcomes("replayed")

    async def replay() -> None:
        for batch in batches:
            await again.process(batch)
        await again.flush()

    asyncio.run(replay())
    final = {r["account_id"]: (r["likes"], r["engagers"]) for r in warehouse.rows("engagement_windows") if r["final"]}
    assert final == {a: (3, 3) for a in accounts}
    assert outcomes("replayed") - replayed_before == held  # skipped by the positions the states hold


def outcomes(outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value("engagement_event_outcomes_total", {"outcome": outcome}) or 0.0


def test_a_flush_takes_the_assignment_over_only_once_the_delivery_in_flight_is_through() -> None:
    """A change of assignment stages the kept states; a slice commit would store them, so it must not
    happen while a batch awaits the delivery of the one before (the flush page runs beside the batches)."""
    clock = [0.0]
    processor, _, warehouse, _, _ = make(partitions=2, clock=clock)
    account = owned_by(0)
    slow_inserts(warehouse)
    seen: list[tuple[bool, int]] = []  # at each commit: whether the staged state holds e1, e1's raw rows
    commit = processor.store.commit

    async def watched_commit() -> Any:
        staged = processor.store.staged.get(account)
        holds_e1 = bool(staged) and orjson.loads(staged)[7].get("likes:0", -1) >= input_position(1, 0)
        seen.append((holds_e1, sum(1 for r in warehouse.rows("engagement_events") if r["event_id"] == "e1")))
        return await commit()

    processor.store.commit = watched_commit  # type: ignore[method-assign]

    async def run() -> None:
        await processor.process([Message("likes", 0, 0, orjson.dumps(like("e0", account)))], persist=False)
        clock[0] = 1.0

        async def flush_page() -> None:
            await asyncio.sleep(0.05)  # while the batch below awaits the delivery of the one before
            await processor.flush({0})  # a rebalance took partition 1

        second = [Message("likes", 0, 1, orjson.dumps(like("e1", account, actor="u2")))]
        await asyncio.gather(processor.process(second, persist=False), flush_page())

    asyncio.run(run())
    assert any(holds for holds, _ in seen)  # the flush stored e1's state...
    assert all(raw == 1 for holds, raw in seen if holds)  # ...never before e1's row was durable


def test_a_change_of_assignment_between_batches_lands_the_delivery_in_flight_first() -> None:
    processor, _, warehouse, _, _ = make()
    account = owned_by(0)
    slow_inserts(warehouse)
    rows_when_assigned: list[int] = []  # e0's raw rows when each assignment was taken over
    on_assignment = processor.on_assignment

    def watched(partitions: set[int], generation: int | None = None) -> None:
        rows_when_assigned.append(len(warehouse.rows("engagement_events")))
        on_assignment(partitions, generation)

    processor.on_assignment = watched  # type: ignore[method-assign]

    async def run() -> bool:
        await processor.process([Message("likes", 0, 0, orjson.dumps(like("e0", account)))], persist=False)
        await processor.take_assignment({0, 1})  # unchanged: the delivery goes on beside the next batch
        kept_in_flight = processor._in_flight is not None
        await processor.take_assignment({0})  # partition 1 moved: its kept states are staged after it
        return kept_in_flight

    assert asyncio.run(run()) is True
    assert rows_when_assigned == [0, 1]  # the change waited for e0's row; no change, no wait


def test_the_timer_announces_beside_the_delivery_in_flight_but_not_its_partitions() -> None:
    """The announcing timer runs between batches: it must not hold the next batch back until the last
    one's inserts land. It announces the partitions the delivery in flight did not touch; that delivery
    announces its own once its re-keyed messages are acknowledged."""
    processor, outbox, warehouse, _, _ = make()
    account = owned_by(0)
    reply = reply_from_responder(account)
    slow_inserts(warehouse)

    def sent() -> list[tuple[str, int | None]]:
        """The re-key topic's messages so far: (kind, the partition a watermark is of)."""
        return [(m["k"], m.get("q")) for m in outbox.on("engagement-rekeyed")]

    async def run() -> tuple[list[tuple[str, int | None]], bool, int]:
        await processor.process([Message("replies", 0, 0, orjson.dumps(reply))], persist=False)
        await processor.announce_watermarks({0, 1})  # the assignment unchanged
        during = sent()
        still_in_flight = processor._in_flight is not None
        await processor.persist()  # lands the delivery
        return during, still_in_flight, len(warehouse.rows("engagement_events"))  # once landed

    during, still_in_flight, rows_landed = asyncio.run(run())
    assert still_in_flight and rows_landed == 1
    assert during == [("w", 1), ("w", 1)]  # partition 1's frontier, to both re-key partitions; not 0's
    after = sent()[len(during) :]
    assert after[0] == ("rs", None) and after[1:] == [("w", 0), ("w", 0)]  # 0's after its re-keyed candidate


def test_deferred_upserts_wait_for_the_next_batch_while_a_delivery_is_in_flight() -> None:
    """The timer's deferred upserts do not wait for the delivery in flight (the next batch takes them
    with its own rows); once the input pauses and the worker persists, the next call writes them."""
    processor, _, warehouse, _, _ = make()
    processor.aggregator.upsert_interval_s = 0.5
    account = owned_by(0)
    slow_inserts(warehouse, 0.05)

    def window_likes() -> list[int]:
        return [r["likes"] for r in warehouse.rows("engagement_windows") if r["account_id"] == account]

    async def run() -> tuple[int, int, list[int]]:
        await processor.process([Message("likes", 0, 0, orjson.dumps(like("e0", account)))], persist=False)
        await processor.process([Message("likes", 0, 1, orjson.dumps(like("e1", account, actor="u2")))], persist=False)
        assert processor.aggregator.has_deferred_upserts  # e1's change waits for the upsert interval
        await asyncio.sleep(0.6)  # the interval is over
        in_flight = await processor.write_deferred()
        await processor.persist()  # the input paused: the worker persists, which lands the delivery
        written = await processor.write_deferred()
        return in_flight, written, window_likes()

    in_flight, written, likes = asyncio.run(run())
    assert in_flight == 0 and written == 1
    assert likes == [1, 2]


class FailingDeadLetters(FakeOutbox):
    async def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        if topic == "engagement-dead-letters":
            raise RuntimeError("the broker refused the dead letter")
        await super().send(topic, key, value, partition)


def test_a_delivery_that_fails_outside_a_batch_stops_the_processor() -> None:
    """Landed by a flush (or a timer), a failed delivery leaves the aggregator holding effects whose sends
    were lost: nothing more may be persisted or acknowledged."""
    clock = [0.0]
    processor, _, _, table, _ = make(partitions=1, clock=clock)
    processor.outbox = FailingDeadLetters()
    account = owned_by(0, partitions=1)
    batch = [Message("likes", 0, 0, orjson.dumps(like("e0", account))), Message("likes", 0, 1, b"{not json")]

    async def run() -> None:
        await processor.process(batch, persist=False)
        with pytest.raises(RuntimeError, match="refused the dead letter"):
            await processor.flush()
        clock[0] = 1.0  # a slice would be due
        with pytest.raises(BatchFailed):
            await processor.process([Message("likes", 0, 2, orjson.dumps(like("e2", account)))], persist=False)
        with pytest.raises(BatchFailed):
            await processor.persist()

    asyncio.run(run())
    assert account.encode() not in table


def test_a_changelog_write_that_fails_in_a_flush_stops_the_processor() -> None:
    processor, _, _, _, _ = make()
    account = owned_by(0)

    async def failing_commit() -> Any:
        failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        failed.set_exception(RuntimeError("the changelog write failed"))
        return failed

    processor.store.commit = failing_commit  # type: ignore[method-assign]

    async def run() -> None:
        await processor.process([Message("likes", 0, 0, orjson.dumps(like("e0", account)))], persist=False)
        with pytest.raises(RuntimeError, match="changelog write failed"):
            await processor.flush()
        with pytest.raises(BatchFailed):  # the worker's next batch exits it, acknowledging nothing
            await processor.process([Message("likes", 0, 1, orjson.dumps(like("e1", account)))], persist=False)

    asyncio.run(run())


def test_a_changelog_write_that_cannot_start_in_a_persist_stops_the_processor() -> None:
    processor, _, _, _, _ = make()
    account = owned_by(0)

    async def broken_commit() -> Any:
        raise RuntimeError("the changelog producer is gone")

    processor.store.commit = broken_commit  # type: ignore[method-assign]

    async def run() -> None:
        await processor.process([Message("likes", 0, 0, orjson.dumps(like("e0", account)))], persist=False)
        with pytest.raises(RuntimeError, match="producer is gone"):
            await processor.persist()  # the timer's settle: its states were taken from the aggregator
        with pytest.raises(BatchFailed):
            await processor.write_deferred()

    asyncio.run(run())


def test_element_positions_skip_the_rejected_elements_and_a_single_object_has_none() -> None:
    from pipeline.decode import decode_message

    account = owned_by(0, partitions=1)
    array = orjson.dumps([{"type": "like"}, like("a", account), like("b", account), "x", like("c", account)])
    events, rejections = decode_message(b" \n\t" + array, "likes")
    assert element_positions(b" \n\t" + array, events, rejections) == [1, 2, 4]  # JSON's whitespace first
    single = orjson.dumps(like("a", account))
    assert element_positions(single, *decode_message(single, "likes")) == [-1]
    assert element_positions(None, [], []) == []
    whole = orjson.dumps([like("a", account), like("b", account)])
    assert element_positions(whole, *decode_message(whole, "likes")) == [0, 1]  # nothing rejected


def test_late_and_future_events_in_an_array_point_at_their_elements_also_when_forwarded() -> None:
    """A dead letter of an element names its index in the message's array (before, -1: the whole
    message), also for an event the owner of its account dead-letters after a forward ("x")."""
    processor, outbox, _, _, _ = make(partitions=2, highwaters={("likes", 0): 3})
    account, elsewhere = owned_by(0), owned_by(1)
    marker = orjson.dumps({"k": "w", "q": 0, "t": T0 + 10_000_000})  # both partitions' time moves far ahead
    markers = [
        Message("engagement-rekeyed", q, q, marker.replace(b'"q":0', b'"q":%d' % i)) for q in range(2) for i in range(2)
    ]
    ahead = int(time.time() * 1000) + 2 * 86_400_000
    batch = [
        {"type": "like"},  # invalid: element 0
        like("old", account),  # late: element 1
        like("away", elsewhere),  # forwarded, then late at its owner: element 2
        {**like("soon", account), "ts": ahead},  # future: element 3
    ]
    new = Message("likes", 0, 0, orjson.dumps(like("new", account, sec=10_000)))  # moves partition 0's own time
    asyncio.run(processor.process([*markers, new]))  # time moves at the end of a chunk
    asyncio.run(processor.process([Message("likes", 0, 1, orjson.dumps(batch))]))
    (forward,) = [v for t, k, v, _ in outbox.sent if t == "engagement-rekeyed" and k]
    assert orjson.loads(forward)["x"] == 2 and orjson.loads(forward)["i"] == 1  # "i": among the valid events
    asyncio.run(processor.process([Message("engagement-rekeyed", 1, 9, forward)]))
    letters = sorted(
        (d["element_index"], d["reason"], d["dead_letter_id"]) for d in outbox.on("engagement-dead-letters")
    )
    assert letters == [
        (0, "missing_field", "likes/0/1/0"),
        (1, "late", "likes/0/1/1/late/old"),
        (2, "late", "likes/0/1/2/late/away"),
        (3, "future_ts", "likes/0/1/3/future_ts/soon"),
    ]


@pytest.mark.parametrize("element", ["2", -2, 2**31, True, 1.5])
def test_a_forward_with_a_malformed_element_index_is_dead_lettered(element: Any) -> None:
    processor, outbox, warehouse, _, _ = make(partitions=1)
    account = owned_by(0, partitions=1)
    forward = {"k": "e", "v": like("a", account), "t": "likes", "p": 0, "o": 0, "i": 0, "x": element}
    asyncio.run(processor.process([Message("engagement-rekeyed", 0, 0, orjson.dumps(forward))]))
    assert [d["reason"] for d in outbox.on("engagement-dead-letters")] == ["wrong_type"]
    assert warehouse.rows("engagement_events") == []


def test_a_forward_without_an_element_index_counts_and_points_at_the_whole_message() -> None:
    """Forwards written before the element index ("x") existed, or of a message of one object."""
    processor, outbox, warehouse, _, _ = make(partitions=1, highwaters={("likes", 0): 3})
    account = owned_by(0, partitions=1)
    forward = {"k": "e", "v": like("a", account), "t": "likes", "p": 0, "o": 0, "i": 0}
    asyncio.run(processor.process([Message("engagement-rekeyed", 0, 0, orjson.dumps(forward))]))
    assert [r["event_id"] for r in warehouse.rows("engagement_events")] == ["a"]
    late = {**forward, "v": like("b", account), "o": 2, "x": -1}
    marker = orjson.dumps({"k": "w", "q": 0, "t": T0 + 10_000_000})
    new = Message("likes", 0, 1, orjson.dumps(like("new", account, sec=10_000)))  # moves partition 0's own time
    asyncio.run(processor.process([Message("engagement-rekeyed", 0, 1, marker), new]))  # time moves after a chunk
    asyncio.run(processor.process([Message("engagement-rekeyed", 0, 2, orjson.dumps(late))]))
    assert [(d["reason"], d["element_index"]) for d in outbox.on("engagement-dead-letters")] == [("late", -1)]


def test_a_future_element_before_them_shifts_no_other_elements_index() -> None:
    """The future_ts rejections are not the decoder's: they must not count as elements skipped."""
    processor, outbox, _, _, _ = make(partitions=2, highwaters={("likes", 0): 3})
    account, elsewhere = owned_by(0), owned_by(1)
    marker = orjson.dumps({"k": "w", "q": 0, "t": T0 + 10_000_000})
    markers = [
        Message("engagement-rekeyed", q, q, marker.replace(b'"q":0', b'"q":%d' % i)) for q in range(2) for i in range(2)
    ]
    asyncio.run(processor.process([*markers, Message("likes", 0, 0, orjson.dumps(like("new", account, sec=10_000)))]))
    ahead = int(time.time() * 1000) + 2 * 86_400_000
    batch = [{**like("soon", account), "ts": ahead}, like("old", account), like("away", elsewhere)]
    asyncio.run(processor.process([Message("likes", 0, 1, orjson.dumps(batch))]))
    (forward,) = [v for t, k, v, _ in outbox.sent if t == "engagement-rekeyed" and k]
    assert orjson.loads(forward)["x"] == 2
    letters = sorted((d["element_index"], d["reason"]) for d in outbox.on("engagement-dead-letters"))
    assert letters == [(0, "future_ts"), (1, "late")]
