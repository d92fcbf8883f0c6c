"""The warehouse seam: one small synchronous interface over ClickHouse servers and embedded chDB.

Contract of every implementation:
- ``execute``/``query``/``insert`` block until ClickHouse answered; none is safe to call from two threads
  at once (the worker calls them from one dedicated thread).
- :class:`WarehouseUnavailable` means "could not reach or talk to ClickHouse": the caller may retry the
  same call later, and an ``insert`` retried with the same rows is absorbed by the tables' deduplication.
- :class:`QueryError` means ClickHouse refused the statement itself: retrying it cannot help.
- Parameters are bound with ``%(name)s`` placeholders by :func:`pipeline.warehouse.params.bind`, the same
  way on every backend; values are never formatted into SQL by callers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Every insert lifts ClickHouse's bound on the partitions (months: the tables are partitioned by
# toYYYYMM) one block may touch (19.x and later: 100): a block of valid events spanning more months, a
# backfill sorted by account, was refused, and retried forever. 18.16 has no such bound (nor setting).
PARTITIONS_SETTING = "max_partitions_per_insert_block"
UNBOUNDED_PARTITIONS = f"{PARTITIONS_SETTING} = 0"


class WarehouseError(Exception):
    """Base of warehouse failures."""


class WarehouseUnavailable(WarehouseError):
    """ClickHouse could not be reached or the connection broke; the call may be retried."""


class QueryError(WarehouseError):
    """ClickHouse rejected the statement (syntax, unknown table, type error...). ``code`` is ClickHouse's."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class QueryResult:
    """Column names and rows; values are Python scalars (DateTime as ``YYYY-MM-DD hh:mm:ss`` text)."""

    columns: list[str]
    rows: list[tuple[Any, ...]]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


Params = Mapping[str, Any] | None


class Warehouse(Protocol):
    """A ClickHouse endpoint (see the module docstring for the contract)."""

    kind: str
    database: str

    def execute(self, sql: str, params: Params = None) -> None:
        """Run a statement that returns nothing (DDL, ``INSERT ... SELECT``)."""
        ...

    def query(self, sql: str, params: Params = None) -> QueryResult:
        """Run a ``SELECT`` and return all its rows."""
        ...

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        """Insert rows given as columns (name -> values, all of one length) in one block."""
        ...

    def server_version(self) -> tuple[int, int]:
        """ClickHouse's (major, minor) version, to gate newer-only DDL."""
        ...

    def close(self) -> None: ...
