"""The blocks the worker inserts: rows kept as they are and read as columns only when a backend asks
(``RowBlock``), and the Arrow types chDB is given for them (``arrow_type``)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.aggregator import WindowRow
from pipeline.events import Event
from pipeline.sink import EVENT_COLUMNS, SourcedEvents, event_columns, window_columns
from pipeline.warehouse.base import RowBlock, row_count
from pipeline.warehouse.embedded import arrow_type


def test_columns_are_the_rows_transposed_with_constants_and_seconds() -> None:
    block = RowBlock(("a", "start", "b"), [("x", 61_999, None), ("y", 120_000, 2)], {"at": 5}, seconds=("start",))
    assert list(block) == ["a", "start", "b", "at"]
    assert len(block) == 4
    assert dict(block) == {"a": ["x", "y"], "start": [61, 120], "b": [None, 2], "at": [5, 5]}
    assert block["a"] is block["a"]  # transposed once, kept


def test_no_rows_are_empty_columns() -> None:
    block = RowBlock(("a", "b"), [], {"at": 5})
    assert dict(block) == {"a": [], "b": [], "at": []}


def test_row_count_reads_a_row_block_without_transposing_it() -> None:
    block = RowBlock(("a", "b"), [(1, 2), (3, 4), (5, 6)], {"c": 0})
    assert row_count(block) == 3
    assert block._columns is None  # still rows: the count came from them
    assert row_count(RowBlock(("a",), [])) == 0
    assert row_count({"a": [1, 2]}) == 2 and row_count({"a": []}) == 0 and row_count({}) == 0


def test_a_row_of_another_length_is_refused_when_read() -> None:
    block = RowBlock(("a", "b"), [("x", 1), ("y",)])
    with pytest.raises(ValueError):
        block.columns()


def test_run_columns_hold_a_value_once_for_consecutive_rows() -> None:
    block = RowBlock(("a",), [("x",), ("y",), ("z",)], {"at": 5}, (), ("t", "o"), [(("t1", 7), 2), (("t2", 9), 1)])
    assert list(block) == ["a", "t", "o", "at"] and len(block) == 4
    assert block.run_columns() == [["t1", "t1", "t2"], [7, 7, 9]]
    assert dict(block) == {"a": ["x", "y", "z"], "t": ["t1", "t1", "t2"], "o": [7, 7, 9], "at": [5, 5, 5]}
    assert row_count(block) == 3


@pytest.mark.parametrize(
    "runs",
    [
        [(("t1", 7), 2)],  # one row short
        [(("t1", 7), 4)],  # one row over
        [(("t1",), 3)],  # a value missing
    ],
)
def test_runs_not_covering_the_rows_exactly_are_refused(
    runs: list[tuple[tuple[object, ...], int]],
) -> None:
    block = RowBlock(("a",), [("x",), ("y",), ("z",)], None, (), ("t", "o"), runs)
    with pytest.raises(ValueError):
        block.columns()


def test_sourced_events_give_the_columns_of_event_columns() -> None:
    e1, e2, e3 = (Event(f"e{i}", "like", 1_000 + i, "u1", "a1") for i in range(3))
    raw = SourcedEvents()
    since = len(raw.events)
    raw.events += [e1, e2]  # as the hot path appends them
    raw.read_at(("likes", 0, 7), since)
    raw.read_at(("likes", 0, 8), len(raw.events))  # a message with no raw row: no run
    raw.add(e3, "replies", 1, 3)  # a re-keyed event, with its own source
    assert len(raw) == 3
    block = raw.block(99)
    assert block.rows is raw.events  # no copy, no transposition on the caller's thread
    sourced = [(*e1, "likes", 0, 7), (*e2, "likes", 0, 7), (*e3, "replies", 1, 3)]
    assert list(block) == list(event_columns(sourced, 99)) == [*EVENT_COLUMNS, "ingested_ms"]
    assert dict(block) == dict(event_columns(sourced, 99))


def test_the_worker_blocks_keep_their_rows_and_name_the_table_columns() -> None:
    sourced = [(*Event("e1", "like", 1_000, "u1", "a1"), "likes", 0, 7)]
    events = event_columns(sourced, 99)
    assert events.rows is sourced  # no copy, no transposition on the caller's thread
    assert list(events) == [*EVENT_COLUMNS, "ingested_ms"]
    assert events["source_offset"] == [7] and events["ingested_ms"] == [99]
    row = WindowRow("a1", 60_000, 120_000, 1, 0, 0, 1, 0, 0, 0, 0, 1, None, 0, 3)
    windows = window_columns([row])
    assert windows["window_start"] == [60] and windows["window_end"] == [120]  # DateTime: seconds
    assert windows["engagement_rate"] == [None] and windows["version"] == [3]


@pytest.mark.parametrize(
    ("clickhouse", "arrow"),
    [
        ("String", pa.string()),
        ("Nullable(String)", pa.string()),
        ("LowCardinality(Nullable(String))", pa.string()),
        ("Int32", pa.int64()),
        ("Nullable(Int64)", pa.int64()),
        ("UInt8", pa.uint64()),
        ("UInt64", pa.uint64()),
        ("Nullable(Float64)", pa.float64()),
        ("DateTime('UTC')", pa.int64()),
        ("DateTime", pa.int64()),
        ("DateTime64(3, 'UTC')", None),
        ("Array(String)", None),
        ("Decimal(9, 2)", None),
        ("AggregateFunction(uniqExact, String)", None),
    ],
)
def test_arrow_types_of_clickhouse_types(clickhouse: str, arrow: pa.DataType | None) -> None:
    assert arrow_type(pa, clickhouse) == arrow
