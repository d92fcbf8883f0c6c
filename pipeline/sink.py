"""Rows to ClickHouse: column layouts of the three tables and a writer that retries until durable.

Contract of :class:`WarehouseWriter`: ``await write(...)`` returns only once ClickHouse acknowledged the
block. While ClickHouse is unreachable it retries with capped exponential backoff and never gives up, so
the caller (the agent) stops consuming — offsets are not committed for rows that are not durable.
A :class:`~pipeline.warehouse.QueryError` (ClickHouse refused the block itself) is retried the same way
and logged loudly: dropping rows silently is never an option. All warehouse calls run on one dedicated
thread, so the event loop (heartbeats, web server) keeps running during inserts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pipeline import metrics
from pipeline.aggregator import WindowRow
from pipeline.deadletter import DeadLetter
from pipeline.events import Event
from pipeline.warehouse import QueryResult, Warehouse, WarehouseError
from pipeline.warehouse.base import Params

log = logging.getLogger(__name__)
T = TypeVar("T")

EVENTS_TABLE = "engagement_events"
WINDOWS_TABLE = "engagement_windows"
DEAD_LETTERS_TABLE = "engagement_dead_letters"

# (event, source topic, partition, offset)
SourcedEvent = tuple[Event, str, int, int]


def event_columns(events: Sequence[SourcedEvent], ingested_ms: int) -> dict[str, list[Any]]:
    return {
        "event_id": [e.event_id for e, _, _, _ in events],
        "type": [e.type for e, _, _, _ in events],
        "ts_ms": [e.ts_ms for e, _, _, _ in events],
        "actor_id": [e.actor_id for e, _, _, _ in events],
        "account_id": [e.account_id for e, _, _, _ in events],
        "post_id": [e.post_id for e, _, _, _ in events],
        "in_reply_to": [e.in_reply_to for e, _, _, _ in events],
        "followers": [e.followers for e, _, _, _ in events],
        "source_topic": [t for _, t, _, _ in events],
        "source_partition": [p for _, _, p, _ in events],
        "source_offset": [o for _, _, _, o in events],
        "ingested_ms": [ingested_ms] * len(events),
    }


def window_columns(rows: Sequence[WindowRow]) -> dict[str, list[Any]]:
    return {
        "account_id": [r.account_id for r in rows],
        "window_start": [r.window_start // 1000 for r in rows],
        "window_end": [r.window_end // 1000 for r in rows],
        "likes": [r.likes for r in rows],
        "replies": [r.replies for r in rows],
        "mentions": [r.mentions for r in rows],
        "engagers": [r.engagers for r in rows],
        "follows": [r.follows for r in rows],
        "unfollows": [r.unfollows for r in rows],
        "followers": [r.followers for r in rows],
        "responses": [r.responses for r in rows],
        "score": [r.score for r in rows],
        "engagement_rate": [r.engagement_rate for r in rows],
        "final": [r.final for r in rows],
        "version": [r.version for r in rows],
    }


def dead_letter_columns(letters: Sequence[DeadLetter]) -> dict[str, list[Any]]:
    return {name: [getattr(d, name) for d in letters] for name in DeadLetter.__slots__}


class WarehouseWriter:
    """Async front of a :class:`~pipeline.warehouse.Warehouse` on one dedicated thread."""

    def __init__(
        self,
        open_warehouse: Callable[[], Warehouse],
        max_backoff: float = 30.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._open = open_warehouse
        self._warehouse: Warehouse | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warehouse")
        self._max_backoff = max_backoff
        self._sleep = sleep

    def _on_thread(self, fn: Callable[[Warehouse], T]) -> T:
        if self._warehouse is None:
            self._warehouse = self._open()
        return fn(self._warehouse)

    async def call(self, fn: Callable[[Warehouse], T]) -> T:
        """Run ``fn(warehouse)`` on the warehouse thread once; exceptions propagate."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._on_thread, fn)

    async def write(self, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        """Insert one block; returns when durable. Retries forever (see the module docstring)."""
        rows = len(next(iter(columns.values()), ()))
        if rows == 0:
            return
        backoff = 0.2
        while True:
            started = time.perf_counter()
            try:
                await self.call(lambda w: w.insert(table, columns))
            except WarehouseError as exc:
                metrics.INSERT_FAILURES.labels(table).inc()
                log.warning("insert of %d rows into %s failed (%s); retrying in %.1fs", rows, table, exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            metrics.INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
            metrics.ROWS_WRITTEN.labels(table).inc(rows)
            return

    async def query(self, sql: str, params: Params = None) -> QueryResult:
        """Run one read query on the warehouse thread (no retry: the caller reports the error)."""
        return await self.call(lambda w: w.query(sql, params))

    def close(self, timeout: float = 30.0) -> None:
        """Close the warehouse on its thread; gives up (logged) after ``timeout`` s, e.g. behind a stuck
        insert. Never raises."""
        warehouse, self._warehouse = self._warehouse, None
        if warehouse is not None:
            try:
                self._executor.submit(warehouse.close).result(timeout=timeout)
            except Exception as exc:
                log.warning("closing the warehouse failed: %r", exc)
        self._executor.shutdown(wait=False, cancel_futures=True)
