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

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Every insert lifts ClickHouse's bound on the partitions (months: the tables are partitioned by
# toYYYYMM) one block may touch (19.x and later: 100): a block of valid events spanning more months, a
# backfill sorted by account, was refused, and retried forever. 18.16 has no such bound (nor setting).
PARTITIONS_SETTING = "max_partitions_per_insert_block"
# ... and does not collapse a block's rows of one key as it writes them (20.x and later; 18.16 never
# does): the Replacing and Aggregating tables collapse them when they merge parts, as they do the copies
# of a replayed block in parts of their own, which every reader already absorbs. Collapsing at insert cost
# ~15 % of chDB's CPU per raw event and ~25 % of the insert's duration (bench/RESULTS.md).
INSERT_SETTINGS: dict[str, int] = {PARTITIONS_SETTING: 0, "optimize_on_insert": 0}


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


class RowBlock(Mapping[str, Sequence[Any]]):
    """The rows of one insert as the pipeline holds them, read as columns (name -> values) only when asked.

    ``rows`` are tuples whose fields are ``names``, in order. ``run_names`` are columns given in runs
    instead: each of ``runs`` is ``(values, count)``, the values of those columns for the next ``count``
    rows (a value shared by consecutive rows, such as a raw event's source message, is held once; the
    counts add up to the rows). ``constants`` are columns with one value for every row (the block's
    ingestion time). ``seconds`` names fields given in epoch ms (never negative) whose columns hold
    seconds (``DateTime``). The columns are ``names``, then ``run_names``, then the constants. As a
    mapping it is the same columns a plain dict would give, transposed on the first read (on the warehouse
    thread, not the caller's) and kept. A backend that can take rows whole
    (:class:`~pipeline.warehouse.embedded.EmbeddedWarehouse`, through Arrow) reads ``rows`` (and
    :meth:`run_columns`) instead and never transposes. Not safe to read from two threads at once.
    """

    __slots__ = ("_columns", "constants", "names", "rows", "run_names", "runs", "seconds")

    def __init__(
        self,
        names: Sequence[str],
        rows: Sequence[Sequence[Any]],
        constants: Mapping[str, Any] | None = None,
        seconds: Collection[str] = (),
        run_names: Sequence[str] = (),
        runs: Sequence[tuple[Sequence[Any], int]] = (),
    ) -> None:
        self.names = tuple(names)
        self.rows = rows
        self.constants: Mapping[str, Any] = constants or {}
        self.seconds = tuple(seconds)
        self.run_names = tuple(run_names)
        self.runs = runs
        self._columns: dict[str, list[Any]] | None = None

    def columns(self) -> dict[str, list[Any]]:
        """The block as columns; raises ``ValueError`` if a row's length is not ``len(names)``, or a run's
        not ``len(run_names)``, or the runs do not cover the rows exactly."""
        if self._columns is None:
            if self.rows:
                transposed = zip(*self.rows, strict=True)
                columns = {name: list(values) for name, values in zip(self.names, transposed, strict=True)}
            else:
                columns = {name: [] for name in self.names}
            for name in self.seconds:
                columns[name] = [ms // 1000 for ms in columns[name]]
            columns.update(zip(self.run_names, self.run_columns(), strict=True))
            for name, value in self.constants.items():
                columns[name] = [value] * len(self.rows)
            self._columns = columns
        return self._columns

    def run_columns(self) -> list[list[Any]]:
        """The columns of ``run_names``, one value per row; raises ``ValueError`` as :meth:`columns`."""
        if not self.run_names:
            return []
        expanded: list[list[Any]] = [[] for _ in self.run_names]
        covered = 0
        for values, count in self.runs:
            covered += count
            for column, value in zip(expanded, values, strict=True):
                column += [value] * count
        if covered != len(self.rows):
            raise ValueError(f"the runs cover {covered} rows of {len(self.rows)}")
        return expanded

    def __getitem__(self, name: str) -> list[Any]:
        return self.columns()[name]

    def __iter__(self) -> Iterator[str]:
        yield from self.names
        yield from self.run_names
        yield from self.constants

    def __len__(self) -> int:
        return len(self.names) + len(self.run_names) + len(self.constants)


def row_count(columns: Mapping[str, Sequence[Any]]) -> int:
    """How many rows a block holds, without transposing a :class:`RowBlock` (its callers are on the event
    loop's thread, which must not pay for the transposition a backend may never need)."""
    if isinstance(columns, RowBlock):
        return len(columns.rows)
    return len(next(iter(columns.values()), ()))


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
        """Insert rows given as columns (name -> values, all of one length) in one block. A
        :class:`RowBlock` is such a mapping; a backend may read its rows directly instead."""
        ...

    def server_version(self) -> tuple[int, int]:
        """ClickHouse's (major, minor) version, to gate newer-only DDL."""
        ...

    def close(self) -> None: ...
