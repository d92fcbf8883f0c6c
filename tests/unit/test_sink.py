"""WarehouseWriter while ClickHouse is down: an insert is retried until it is durable, never given up, with
exponential backoff capped at ``max_backoff`` (the worker passes ``ENGAGEMENT_INSERT_RETRY_MAX_SECONDS``),
and every failed attempt is counted on ``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, cast

from pipeline import metrics
from pipeline.sink import WarehouseWriter
from pipeline.warehouse import Warehouse, WarehouseUnavailable


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
