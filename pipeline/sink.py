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
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pipeline import metrics
from pipeline.aggregator import WindowRow
from pipeline.deadletter import DeadLetter
from pipeline.drops import Alert
from pipeline.events import Event
from pipeline.warehouse import QueryResult, Warehouse, WarehouseError
from pipeline.warehouse.base import Params, RowBlock, row_count

log = logging.getLogger(__name__)
T = TypeVar("T")

EVENTS_TABLE = "engagement_events"
WINDOWS_TABLE = "engagement_windows"
DEAD_LETTERS_TABLE = "engagement_dead_letters"
ALERTS_TABLE = "engagement_alerts"

# An event's fields (see :class:`~pipeline.events.Event`) followed by its source topic, partition, offset:
# ``event + (topic, partition, offset)``.
SourcedEvent = tuple[Any, ...]
EVENT_COLUMNS = (*Event._fields, "source_topic", "source_partition", "source_offset")


_SOURCE_COLUMNS = EVENT_COLUMNS[len(Event._fields) :]


class SourcedEvents:
    """The raw events of a chunk, in order, and where each was read (its source topic, partition and
    offset), held by source message rather than per event: ``events`` takes the events of one message as
    they come (the hot path appends to it, :meth:`~pipeline.aggregator.Aggregator.apply_message`), then
    :meth:`read_at` names their source; :meth:`add` takes one event with its own source."""

    __slots__ = ("events", "sources")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.sources: list[tuple[tuple[str, int, int], int]] = []  # (topic, partition, offset), how many

    def read_at(self, source: tuple[str, int, int], since: int) -> None:
        """The events appended to ``events`` since it held ``since`` were read at ``source``."""
        count = len(self.events) - since
        if count:
            self.sources.append((source, count))

    def add(self, event: Event, topic: str, partition: int, offset: int) -> None:
        self.events.append(event)
        self.sources.append(((topic, partition, offset), 1))

    def __len__(self) -> int:
        return len(self.events)

    def block(self, ingested_ms: int) -> RowBlock:
        """The ``engagement_events`` block of these events (the columns of :func:`event_columns`): the
        events as they are, their sources in runs, nothing copied or transposed here (the main thread)."""
        return RowBlock(Event._fields, self.events, {"ingested_ms": ingested_ms}, (), _SOURCE_COLUMNS, self.sources)


def event_columns(events: Sequence[SourcedEvent], ingested_ms: int) -> RowBlock:
    """The ``engagement_events`` block of sourced events: the rows as they are (no transposition here, on
    the main thread), with ``ingested_ms`` as a constant column."""
    return RowBlock(EVENT_COLUMNS, events, {"ingested_ms": ingested_ms})


def window_columns(rows: Sequence[WindowRow]) -> RowBlock:
    """The ``engagement_windows`` block of window rows (window bounds from ms to seconds)."""
    return RowBlock(WindowRow._fields, rows, seconds=_WINDOW_BOUNDS)


def alert_columns(alerts: Sequence[Alert]) -> RowBlock:
    """The ``engagement_alerts`` block of alerts (window bounds from ms to seconds)."""
    return RowBlock(Alert._fields, alerts, seconds=_WINDOW_BOUNDS)


_WINDOW_BOUNDS = ("window_start", "window_end")


def dead_letter_columns(letters: Sequence[DeadLetter]) -> dict[str, list[Any]]:
    return {name: [getattr(d, name) for d in letters] for name in DeadLetter.__slots__}


class PendingWrite:
    """An insert started on the warehouse thread (see :meth:`WarehouseWriter.write_soon`).

    Await it (once) to wait until the block is durable: it retries until ClickHouse acknowledges, so
    awaiting blocks while ClickHouse is down, and raises only if the awaiting task is cancelled. Or
    :meth:`abandon` it when nobody will await it (its batch failed and will be replayed): the insert
    already handed to the warehouse thread may still land (rows are idempotent), its outcome is
    ignored, and nothing is left to warn that it was never awaited.
    """

    def __init__(self, settle: Coroutine[Any, Any, None] | None, first: asyncio.Future[None] | None) -> None:
        self._settle = settle
        self._first = first

    def __await__(self) -> Generator[Any, None, None]:
        if self._settle is None:
            return None
        return (yield from self._settle.__await__())

    def abandon(self) -> None:
        """Give the write up without awaiting it (or without awaiting the rest of it). Never raises."""
        if self._settle is not None:
            self._settle.close()
        first = self._first
        if first is not None:
            if first.done():  # seen now: a callback would need the loop, which may be closed (a worker's stop)
                _ignore_outcome(first)
            else:
                first.add_done_callback(_ignore_outcome)


def _ignore_outcome(future: asyncio.Future[None]) -> None:
    """Mark an abandoned insert's outcome as seen (no "exception was never retrieved" at collection)."""
    if not future.cancelled():
        future.exception()


class WarehouseWriter:
    """Async front of a :class:`~pipeline.warehouse.Warehouse` on one dedicated thread.

    ``open_reader``: the warehouse that :meth:`query` reads on a thread of its own, so that a read does
    not wait behind the inserts queued on the warehouse thread (a live worker queues several; a row's
    visibility was measured behind them). It may return the writer's own warehouse when that one takes
    concurrent calls (chDB's session does), or open another connection (clickhouse-driver's does not).
    Without it, reads run on the warehouse thread in turn with the inserts.
    """

    def __init__(
        self,
        open_warehouse: Callable[[], Warehouse],
        max_backoff: float = 30.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
        open_reader: Callable[[], Warehouse] | None = None,
    ) -> None:
        self._open = open_warehouse
        self._warehouse: Warehouse | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warehouse")
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._open_reader = open_reader
        self._reader: Warehouse | None = None
        self._read_executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="warehouse-read") if open_reader else None
        )

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
        await self.write_soon(table, columns)

    def write_soon(self, table: str, columns: Mapping[str, Sequence[Any]]) -> PendingWrite:
        """Start inserting one block on the warehouse thread right away (before the caller yields to the
        event loop), and return what to await for it to be durable (retried as :meth:`write` does).

        The insert then runs while the caller goes on with other work: ClickHouse releases the GIL, so
        on two cores the next batch is decoded while this one is written. Blocks are inserted in the
        order of the calls. Must be called from the event loop's thread.
        """
        rows = row_count(columns)
        if rows == 0:
            return PendingWrite(None, None)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        first = loop.run_in_executor(self._executor, self._on_thread, lambda w: w.insert(table, columns))
        return PendingWrite(self._settle(table, columns, rows, first, started), first)

    async def _settle(
        self,
        table: str,
        columns: Mapping[str, Sequence[Any]],
        rows: int,
        attempt: Awaitable[None],
        started: float,
    ) -> None:
        backoff = 0.2
        while True:
            try:
                await attempt
            except WarehouseError as exc:
                metrics.INSERT_FAILURES.labels(table).inc()
                log.warning("insert of %d rows into %s failed (%s); retrying in %.1fs", rows, table, exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                started = time.perf_counter()
                attempt = self.call(lambda w: w.insert(table, columns))
                continue
            metrics.INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
            metrics.ROWS_WRITTEN.labels(table).inc(rows)
            return

    async def query(self, sql: str, params: Params = None) -> QueryResult:
        """Run one read query (no retry: the caller reports the error): on the reading thread when there
        is one, else on the warehouse thread after the inserts queued before it."""
        if self._read_executor is None:
            return await self.call(lambda w: w.query(sql, params))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_executor, self._read, sql, params)

    def _read(self, sql: str, params: Params) -> QueryResult:
        if self._reader is None:
            assert self._open_reader is not None
            self._reader = self._open_reader()
        return self._reader.query(sql, params)

    def close(self, timeout: float = 30.0) -> None:
        """Close the warehouse on its thread; gives up (logged) after ``timeout`` s, e.g. behind a stuck
        insert. Never raises."""
        warehouse, self._warehouse = self._warehouse, None
        reader, self._reader = self._reader, None
        if self._read_executor is not None:
            if reader is not None and reader is not warehouse:
                try:
                    self._read_executor.submit(reader.close).result(timeout=timeout)
                except Exception as exc:
                    log.warning("closing the warehouse reader failed: %r", exc)
            self._read_executor.shutdown(wait=False, cancel_futures=True)
        if warehouse is not None:
            try:
                self._executor.submit(warehouse.close).result(timeout=timeout)
            except Exception as exc:
                log.warning("closing the warehouse failed: %r", exc)
        self._executor.shutdown(wait=False, cancel_futures=True)
