"""A state larger than a record may be is stored in chunks named by its main record: written chunks first,
main record next, old chunks deleted last, so a write cut short anywhere leaves the old state or the new
one whole; what it leaves unnamed is swept; and processing with chunked states counts exactly the same."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
import pytest

from pipeline import account_state
from pipeline.processor import Message, StagedStore
from pipeline.state_records import (
    SEGMENT_INDEX,
    Generations,
    Record,
    StateCorrupted,
    is_chunk_key,
    layout,
    parse_chunk_key,
    reference,
)
from tests.unit.test_processor import T0, FakeTable, make

CHUNK = 10


def commit(store: StagedStore, states: dict[str, bytes]) -> list[Record]:
    """Stage and commit ``states``; returns the records the changelog received, in order."""
    return [record for phase in commit_phases(store, states) for record in phase]


def commit_phases(store: StagedStore, states: dict[str, bytes]) -> list[list[Record]]:
    """Stage and commit ``states``; returns the phases the changelog received."""
    received: list[list[Record]] = []
    table = store.table

    async def changelog(phases: list[list[Record]]) -> Any:
        received.extend(phases)
        for key, value, _ in (record for phase in phases for record in phase):
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        return asyncio.gather()

    store.changelog = changelog
    for account_id, value in states.items():
        store.put(account_id, value)

    async def run() -> None:
        await (await store.commit())

    asyncio.run(run())
    return received


def replayed(start: dict[bytes, bytes], records: list[Record]) -> FakeTable:
    """The table a recovery builds from ``start`` and then ``records`` (a value None deletes its key)."""
    table = FakeTable(start)
    for key, value, _ in records:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def test_a_small_state_is_one_record_as_before_and_a_large_one_is_chunked() -> None:
    table = FakeTable()
    store = StagedStore(table, chunk_bytes=CHUNK)
    phases = commit_phases(store, {"small": b"[1,2]", "big": b"[" + b"7" * 24 + b"]"})
    assert [[k for k, _, _ in phase] for phase in phases][1] == [b"small", b"big"]  # chunks, then main records
    records = [record for phase in phases for record in phase]
    assert [(k, v) for k, v, _ in records if k == b"small"] == [(b"small", b"[1,2]")]
    chunks = [(k, v) for k, v, _ in records if is_chunk_key(k)]
    assert [v for _, v in chunks] == [b"[777777777", b"7777777777", b"77777]"]
    assert [parse_chunk_key(k)[1:] for k, _ in chunks] == [(0, b"big"), (1, b"big"), (2, b"big")]
    main = [i for i, (k, _, _) in enumerate(records) if k == b"big"]
    assert main and main[0] > max(i for i, (k, _, _) in enumerate(records) if is_chunk_key(k))  # chunks first
    assert reference(table[b"big"]) is not None and len(table[b"big"]) < 60
    assert store.get("big") == b"[" + b"7" * 24 + b"]"
    assert store.get("small") == b"[1,2]"
    assert sorted(store.accounts()) == ["big", "small"]  # chunk keys are no accounts


def test_a_rewrite_takes_a_new_generation_and_deletes_the_old_chunks_after_its_main_record() -> None:
    table = FakeTable()
    store = StagedStore(table, chunk_bytes=CHUNK)
    commit(store, {"big": b"a" * 25})
    old = {k for k in table if is_chunk_key(k)}
    records = commit(store, {"big": b"b" * 31})
    deleted = [i for i, (k, v, _) in enumerate(records) if v is None]
    main = next(i for i, (k, _, _) in enumerate(records) if k == b"big")
    assert {records[i][0] for i in deleted} == old and min(deleted) > main  # deleted after the main record
    assert {k for k in table if is_chunk_key(k)}.isdisjoint(old)
    assert store.get("big") == b"b" * 31
    commit(store, {"big": b"[small]"})  # back under the limit: one record, no chunk left
    assert dict(table) == {b"big": b"[small]"}


@pytest.mark.parametrize(
    ("before", "after"),
    [(None, b"n" * 25), (b"o" * 25, b"n" * 42), (b"o" * 25, b"[n]"), (b"[o]", b"n" * 25), (b"o" * 42, b"n" * 12)],
)
def test_a_write_cut_short_anywhere_leaves_the_old_state_or_the_new_one_and_its_orphans_are_swept(
    before: bytes | None, after: bytes
) -> None:
    table = FakeTable()
    store = StagedStore(table, chunk_bytes=CHUNK)
    if before is not None:
        commit(store, {"acct": before, "other": b"o" * 15})
    start = dict(table)
    records = commit(StagedStore(FakeTable(start), chunk_bytes=CHUNK), {"acct": after, "other": b"[x]"})
    for cut in range(len(records) + 1):  # the changelog got the first `cut` records, then the worker died
        survived = replayed(start, records[:cut])
        recovered = StagedStore(survived, chunk_bytes=CHUNK)
        assert recovered.get("acct") in (before, after), cut
        state = recovered.get("acct")
        recovered.sweep({0})
        swept = sum(1 for _, value, _ in commit(recovered, {}) if value is None)  # the next write deletes orphans
        named = {
            chunk
            for account in (b"acct", b"other")
            if (chunks := reference(survived.get(account))) is not None
            for chunk in chunks.keys(account)
        }
        assert {k for k in survived if is_chunk_key(k)} == named, cut  # only named chunks are left
        assert swept == 0 or cut < len(records)
        assert recovered.get("acct") == state  # the sweep deleted nothing the state needs


def test_a_missing_chunk_is_an_error_naming_the_account_not_a_partial_state() -> None:
    table = FakeTable()
    store = StagedStore(table, chunk_bytes=CHUNK)
    commit(store, {"big": b"z" * 25})
    del table[next(k for k in table if is_chunk_key(k))]
    with pytest.raises(StateCorrupted, match="'big'"):
        store.get("big")


def test_generations_increase_and_pass_the_one_replaced() -> None:
    generations = Generations(now_ns=lambda: 100)
    assert [generations.next(), generations.next(), generations.next(above=500), generations.next()] == [
        100,
        101,
        501,
        502,
    ]
    phases = layout([(b"a", b"q" * 25, 3)], {}, Generations(now_ns=lambda: 7), chunk_bytes=CHUNK)
    assert {p for phase in phases for _, _, p in phase} == {3}  # every record of an account in its partition


def test_orphans_are_looked_for_only_in_a_settled_table_and_only_in_the_partitions_swept() -> None:
    """In the middle of a recovery a write's chunks may be in the table before the record naming them:
    they are taken for orphans only once the table is settled."""
    owner = {"mine": 0, "theirs": 1}
    table = FakeTable()
    writer = StagedStore(table, partition_of=owner.__getitem__, chunk_bytes=CHUNK)
    commit(writer, {"mine": b"m" * 25, "theirs": b"t" * 25})
    for account in (b"mine", b"theirs"):
        del table[account]  # as if cut short before the main records: every chunk an orphan
    settled = False
    store = StagedStore(table, partition_of=owner.__getitem__, chunk_bytes=CHUNK, settled=lambda: settled)
    store.sweep({0})
    assert not [r for r in commit(store, {}) if r[1] is None]  # recovering: nothing taken for an orphan
    settled = True
    deleted = [key for key, value, _ in commit(store, {}) if value is None]
    assert {parse_chunk_key(k)[2] for k in deleted} == {b"mine"} and len(deleted) == 3
    assert not [r for r in commit(store, {}) if r[1] is None]  # once per sweep
    assert {parse_chunk_key(k)[2] for k in table if is_chunk_key(k)} == {b"theirs"}  # their owner sweeps those


def run_stream(chunk_bytes: int | None) -> tuple[list[tuple[Any, ...]], bool]:
    """Mentions, replies (answering them) and likes of one account over several batches, with a
    restart in the middle (a new processor on the same table, replaying the last batch). Returns the
    final window rows and whether any state was chunked."""
    me, pad = "star", "x" * 60
    mentions = [
        {
            "event_id": f"q{i:04d}-{pad}",
            "type": "mention",
            "ts": T0 + i * 100,
            "actor_id": f"fan{i}",
            "account_id": me,
        }
        for i in range(1200)
    ]
    replies = [
        {
            "event_id": f"r{i}",
            "type": "reply",
            "ts": T0 + 200_000 + i * 1000,
            "actor_id": me,
            "account_id": f"fan{i}",
            "in_reply_to": mentions[i * 37]["event_id"],
        }
        for i in range(30)
    ]
    likes = [
        {"event_id": f"l{i}", "type": "like", "ts": T0 + 400_000 + i, "actor_id": f"u{i % 9}", "account_id": me}
        for i in range(50)
    ]
    batches = [mentions[:600], mentions[600:], replies[:15], replies[15:], likes]
    offsets = itertools.count()
    chunked = False

    def processor_on(table: FakeTable | None) -> tuple[Any, Any, Any, FakeTable]:
        processor, outbox, warehouse, table, _ = make(partitions=1, table=table)
        if chunk_bytes is not None:
            processor.store.chunk_bytes = chunk_bytes
        return processor, outbox, warehouse, table

    processor, outbox, warehouse, table = processor_on(None)
    rows: list[dict[str, Any]] = []
    for number, batch in enumerate(batches):
        if number == 3:  # restart: the new worker reads the last batch again, then goes on
            rows += warehouse.rows("engagement_windows")
            processor, outbox, warehouse, table = processor_on(table)
            batch = batches[2] + batch
        topic = {"mention": "mentions", "reply": "replies", "like": "likes"}[batch[-1]["type"]]
        outbox.sent.clear()
        asyncio.run(processor.process([Message(topic, 0, next(offsets), orjson.dumps(batch))]))
        rekeyed = [v for t, _, v, _ in outbox.sent if t == "engagement-rekeyed"]
        asyncio.run(processor.process([Message("engagement-rekeyed", 0, next(offsets), v) for v in rekeyed]))
        chunked = chunked or any(is_chunk_key(k) and parse_chunk_key(k)[1] != SEGMENT_INDEX for k in table)
    asyncio.run(processor.flush())
    rows += warehouse.rows("engagement_windows")
    final = sorted(tuple(v for k, v in r.items() if k != "version") for r in rows if r["final"] == 1)
    return final, chunked


def test_chunked_states_count_exactly_as_whole_ones_across_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """States whole in their main records (no window, segment or journal records), so that a small chunk
    size chunks them."""
    monkeypatch.setattr(account_state, "WINDOW_RECORD_IDS", 10**9)
    monkeypatch.setattr(account_state, "JOURNAL_FROM", 10**9)
    monkeypatch.setattr(account_state, "SEGMENT_FROM", 10**9)
    whole, chunked_whole = run_stream(None)
    chunked, was_chunked = run_stream(2048)
    assert was_chunked and not chunked_whole
    assert chunked == whole
    assert sum(r[10] for r in whole) == 30  # every reply answered an earlier mention: 30 responses
