"""WarehouseWriter while ClickHouse is down: an insert is retried until it is durable, never given up, with
exponential backoff capped at ``max_backoff`` (the worker passes ``ENGAGEMENT_INSERT_RETRY_MAX_SECONDS``),
and every failed attempt is counted on ``/metrics``. Reads with a reader do not queue behind inserts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any, cast

from pipeline import metrics
from pipeline.sink import WarehouseWriter
from pipeline.warehouse import QueryResult, Warehouse, WarehouseUnavailable
from pipeline.warehouse.base import RowBlock


class FlakyWarehouse:
    """Refuses the first ``failures`` inserts, as a server that is down does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.inserted: list[tuple[str, dict[str, list[Any]]]] = []

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        if self.failures:
            self.failures -= 1
            raise WarehouseUnavailable("ClickHouse server unreachable: Connection refused")
        self.inserted.append((table, {k: list(v) for k, v in columns.items()}))

    def close(self) -> None: ...


def insert_failures(table: str) -> float:
    return metrics.REGISTRY.get_sample_value("engagement_clickhouse_insert_failures_total", {"table": table}) or 0.0


def test_a_failed_insert_is_retried_until_durable_backing_off_up_to_the_cap() -> None:
    warehouse = FlakyWarehouse(failures=8)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    writer = WarehouseWriter(lambda: cast(Warehouse, warehouse), max_backoff=1.0, sleep=sleep)
    before = insert_failures("t_outage")
    asyncio.run(writer.write("t_outage", {"a": [1, 2]}))
    writer.close()
    assert slept == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert warehouse.inserted == [("t_outage", {"a": [1, 2]})]
    assert insert_failures("t_outage") - before == 8


class WatchedBlock(RowBlock):
    """A row block that notes the thread of each transposition."""

    __slots__ = ("threads",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[str] = []

    def columns(self) -> dict[str, list[Any]]:
        self.threads.append(threading.current_thread().name)
        return super().columns()


def rows_written(table: str) -> float:
    return metrics.REGISTRY.get_sample_value("engagement_rows_written_total", {"table": table}) or 0.0


def test_a_row_block_is_transposed_on_the_warehouse_thread_never_the_callers() -> None:
    warehouse = FlakyWarehouse(failures=0)  # reads the block as columns, as the server backend does
    block = WatchedBlock(("a", "b"), [(1, "x"), (2, "y")], {"c": 7})
    before = rows_written("t_rowblock")

    writer = WarehouseWriter(lambda: cast(Warehouse, warehouse))
    asyncio.run(writer.write("t_rowblock", block))  # the event loop runs on this (the main) thread
    writer.close()
    assert block.threads and threading.main_thread().name not in block.threads
    assert warehouse.inserted == [("t_rowblock", {"a": [1, 2], "b": ["x", "y"], "c": [7, 7]})]
    assert rows_written("t_rowblock") - before == 2


class SlowWarehouse:
    """Inserts wait for ``release``; queries answer at once (as chDB's session, which takes concurrent
    calls)."""

    kind = "embedded"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.closed = 0

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        assert self.release.wait(10), "the insert was never released"

    def query(self, sql: str, params: Any = None) -> QueryResult:
        return QueryResult(["sql"], [(sql,)])

    def close(self) -> None:
        self.closed += 1


def test_a_read_does_not_wait_behind_queued_inserts_when_there_is_a_reader() -> None:
    warehouse = SlowWarehouse()

    async def run(writer: WarehouseWriter) -> tuple[bool, QueryResult]:
        inserting = writer.write_soon("t", {"a": [1]})
        result = await asyncio.wait_for(writer.query("SELECT 1"), timeout=5)  # the insert is still blocked
        pending = not warehouse.release.is_set()
        warehouse.release.set()
        await inserting
        return pending, result

    writer = WarehouseWriter(lambda: cast(Warehouse, warehouse), open_reader=lambda: cast(Warehouse, warehouse))
    pending, result = asyncio.run(run(writer))
    writer.close()
    assert pending and result.rows == [("SELECT 1",)]
    assert warehouse.closed == 1  # the shared warehouse is closed once

    warehouse = SlowWarehouse()
    in_turn = WarehouseWriter(lambda: cast(Warehouse, warehouse))  # no reader: the read waits its turn

    async def queued() -> bool:
        inserting = in_turn.write_soon("t", {"a": [1]})
        read = asyncio.ensure_future(in_turn.query("SELECT 1"))
        await asyncio.sleep(0.2)
        waited = not read.done()
        warehouse.release.set()
        await inserting
        await read
        return waited

    assert asyncio.run(queued())
    in_turn.close()


def test_a_reader_of_its_own_is_closed_with_the_writer() -> None:
    warehouse, reader = SlowWarehouse(), SlowWarehouse()
    warehouse.release.set()
    writer = WarehouseWriter(lambda: cast(Warehouse, warehouse), open_reader=lambda: cast(Warehouse, reader))

    async def run() -> None:
        await writer.write("t", {"a": [1]})
        await writer.query("SELECT 1")

    asyncio.run(run())
    writer.close()
    assert (warehouse.closed, reader.closed) == (1, 1)
