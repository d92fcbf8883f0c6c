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
from pipeline.warehouse.base import UNBOUNDED_PARTITIONS, Params, QueryError, QueryResult
from pipeline.warehouse.params import bind, identifier

NEEDED_BY = "the embedded warehouse (ENGAGEMENT_WAREHOUSE=embedded)"


class EmbeddedWarehouse:
    """chDB session on ``path``, with ``database`` as the current database once it exists. Raises
    :class:`pipeline.extras.MissingExtra` if chDB or pyarrow is not installed (the ``embedded`` extra)."""

    kind = "embedded"

    def __init__(self, path: Path, database: str = "engagement") -> None:
        session = require_embedded("chdb.session", NEEDED_BY)
        self._pyarrow = require_embedded("pyarrow", NEEDED_BY)
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
        statement = f"INSERT INTO {table} ({names}) SETTINGS {UNBOUNDED_PARTITIONS} SELECT * FROM Python(block)"
        try:  # building the block is in it: a value Arrow cannot hold is the block's fault too
            block = self._pyarrow.table({name: list(values) for name, values in columns.items()})  # noqa: F841 (chDB reads it by name)
            self._session.query(statement)
        except Exception as exc:
            raise QueryError(str(exc).strip().splitlines()[0], _code(str(exc))) from exc

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
