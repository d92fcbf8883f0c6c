"""The embedded backend: chDB (ClickHouse in this process), persistent under a directory.

chDB lets one process open a path at a time; while the worker holds it, other processes query through
the worker's ``/query`` endpoint (see :mod:`pipeline.embedded_query`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from pipeline.extras import require_embedded
from pipeline.warehouse.base import INSERT_SETTINGS, Params, QueryError, QueryResult, RowBlock
from pipeline.warehouse.params import bind, identifier

NEEDED_BY = "the embedded warehouse (ENGAGEMENT_WAREHOUSE=embedded)"
_INSERT_SETTINGS = ", ".join(f"{name} = {value}" for name, value in INSERT_SETTINGS.items())


class EmbeddedWarehouse:
    """chDB session on ``path``, with ``database`` as the current database once it exists. Raises
    :class:`pipeline.extras.MissingExtra` if chDB or pyarrow is not installed (the ``embedded`` extra)."""

    kind = "embedded"

    def __init__(self, path: Path, database: str = "engagement") -> None:
        session = require_embedded("chdb.session", NEEDED_BY)
        self._pyarrow = require_embedded("pyarrow", NEEDED_BY)
        self._arrow_compute = require_embedded("pyarrow.compute", NEEDED_BY)
        self._row_types: dict[tuple[str, tuple[str, ...]], Any] = {}
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.database = database
        self._session: Any = session.Session(str(path))
        self._session.query("SET output_format_json_quote_64bit_integers = 0")
        self._session.query("SET session_timezone = 'UTC'")
        self._use_database()

    def _use_database(self) -> None:
        if self.database:
            exists = self._raw("SELECT count() FROM system.databases WHERE name = %(d)s", {"d": self.database})
            if exists.rows and exists.rows[0][0]:
                self._session.query(f"USE {identifier(self.database)}")

    def _raw(self, sql: str, params: Params = None) -> QueryResult:
        try:
            result = self._session.query(bind(sql, params), "JSONCompact")
        except Exception as exc:  # chDB raises its own error type for every ClickHouse exception
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise QueryError(message, _code(message)) from exc
        raw = result.bytes()
        if not raw:
            return QueryResult([], [])
        data = orjson.loads(raw)
        return QueryResult([m["name"] for m in data["meta"]], [tuple(r) for r in data["data"]])

    def execute(self, sql: str, params: Params = None) -> None:
        self._raw(sql, params)
        if sql.lstrip().upper().startswith("CREATE DATABASE"):
            self._use_database()

    def query(self, sql: str, params: Params = None) -> QueryResult:
        return self._raw(sql, params)

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        names = ", ".join(identifier(name) for name in columns)
        statement = f"INSERT INTO {table} ({names}) SETTINGS {_INSERT_SETTINGS} SELECT * FROM Python(block)"
        try:  # building the block is in it: a value Arrow cannot hold is the block's fault too
            block = self._block(table, columns)  # noqa: F841 (chDB reads it by name)
            self._session.query(statement)
        except Exception as exc:
            raise QueryError(str(exc).strip().splitlines()[0], _code(str(exc))) from exc

    def _block(self, table: str, columns: Mapping[str, Sequence[Any]]) -> Any:
        """The Arrow table chDB reads. A :class:`RowBlock` whose columns all have types Arrow can be told
        (:func:`arrow_type`) is converted from its rows in one pass (and each run column from its runs), with
        those types; anything else
        (and a row block Arrow refuses with them) is transposed and converted with inferred types."""
        pa = self._pyarrow
        if isinstance(columns, RowBlock) and columns.rows:
            row_type = self._row_type(table, columns.names + columns.run_names)
            if row_type is not None:
                try:
                    fields = list(row_type)
                    split = len(columns.names)
                    rows_type = pa.struct(fields[:split]) if columns.run_names else row_type
                    block = pa.Table.from_struct_array(pa.array(columns.rows, type=rows_type))
                    for field, values in zip(fields[split:], columns.run_columns(), strict=True):
                        block = block.append_column(field, pa.array(values, type=field.type))
                except (pa.ArrowException, TypeError, ValueError, OverflowError):
                    block = None  # the general path below gives the precise error, if any
                if block is not None:
                    for name in columns.seconds:  # ms to s: truncation is the floor for the ms >= 0 here
                        at = block.schema.get_field_index(name)
                        block = block.set_column(at, name, self._arrow_compute.divide(block[name], 1000))
                    for name, value in columns.constants.items():
                        block = block.append_column(name, pa.repeat(value, len(columns.rows)))
                    return block
        return pa.table({name: list(values) for name, values in columns.items()})

    def _row_type(self, table: str, names: tuple[str, ...]) -> Any:
        """The Arrow struct of ``names`` in ``table`` (asked of ClickHouse once per table and names), or
        None if a column is unknown or of a type :func:`arrow_type` does not map."""
        key = (table, names)
        if key not in self._row_types:
            described = self._raw(
                "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = %(t)s",
                {"t": table},
            )
            types = {str(name): arrow_type(self._pyarrow, str(kind)) for name, kind in described.rows}
            fields = [(name, types.get(name)) for name in names]
            known = all(kind is not None for _, kind in fields)
            self._row_types[key] = self._pyarrow.struct(fields) if known else None
        return self._row_types[key]

    def server_version(self) -> tuple[int, int]:
        version = str(self.query("SELECT version()").rows[0][0])
        major, minor = version.split(".")[:2]
        return int(major), int(minor)

    def close(self) -> None:
        self._session.close()


def _code(message: str) -> int | None:
    marker = "Code: "
    if marker in message:
        digits = message.split(marker, 1)[1].split(".", 1)[0]
        if digits.isdigit():
            return int(digits)
    return None


_ARROW_TYPES = {
    "String": "string",
    "Int8": "int64",
    "Int16": "int64",
    "Int32": "int64",
    "Int64": "int64",
    "UInt8": "uint64",
    "UInt16": "uint64",
    "UInt32": "uint64",
    "UInt64": "uint64",
    "Float32": "float64",
    "Float64": "float64",
    "DateTime": "int64",  # epoch seconds, as the general path's inferred int64 columns give them
}


def arrow_type(pa: Any, clickhouse_type: str) -> Any:
    """The Arrow type whose values chDB casts to ``clickhouse_type`` as the general path's inferred types
    do (Python str to string, int to 64-bit integers, float to float64, epoch seconds to ``DateTime``),
    ``Nullable``, ``LowCardinality`` and a ``DateTime``'s zone seen through; None for any other type."""
    kind = clickhouse_type
    while kind.endswith(")") and kind.startswith(("Nullable(", "LowCardinality(")):
        kind = kind[kind.index("(") + 1 : -1]
    if kind.startswith("DateTime(") and not kind.startswith("DateTime64"):
        kind = "DateTime"
    name = _ARROW_TYPES.get(kind)
    return getattr(pa, name)() if name is not None else None
