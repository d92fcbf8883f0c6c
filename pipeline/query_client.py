"""Run read-only SQL on the configured warehouse from any process (the ``engagement sql`` path).

Embedded store: while a worker holds it (its lock file names a live process), the query goes to that
worker's ``/query`` endpoint; otherwise this process opens chDB itself. Server: clickhouse-driver.
"""

from __future__ import annotations

import csv
import io
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from pipeline.readonly_sql import check_read_only
from pipeline.settings import Settings
from pipeline.warehouse import QueryError, QueryResult, WarehouseUnavailable, open_warehouse

LOCK_FILE = "worker.json"


def _live_worker(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / LOCK_FILE
    try:
        info: dict[str, Any] = orjson.loads(path.read_bytes())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, orjson.JSONDecodeError):
        return None
    return info


def run_query(settings: Settings, sql: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> QueryResult:
    """Run one read-only statement (ReadOnlyViolation otherwise). QueryError: ClickHouse refused it."""
    check_read_only(sql, params)
    with reading(settings, timeout) as run:
        return run(sql, params)


Reader = Callable[[str, Mapping[str, Any] | None], QueryResult]


@contextmanager
def reading(settings: Settings, timeout: float = 60.0) -> Iterator[Reader]:
    """A function that runs read-only statements as :func:`run_query` does, on one connection for the block:
    the worker's ``/query`` endpoint if a worker holds the embedded store (checked on entry), else a
    warehouse opened on entry and closed on exit (opening chDB costs more than a small query)."""
    if settings.warehouse == "embedded":
        worker = _live_worker(settings.data_dir)
        if worker is not None:

            def via_worker(sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
                check_read_only(sql, params)
                return _via_worker(worker, sql, dict(params or {}), timeout)

            yield via_worker
            return
    warehouse = open_warehouse(settings, read_only=True)
    try:

        def direct(sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
            check_read_only(sql, params)
            return warehouse.query(sql, params)

        yield direct
    finally:
        warehouse.close()


def _via_worker(worker: dict[str, Any], sql: str, params: dict[str, Any] | None, timeout: float) -> QueryResult:
    url = f"http://{worker['web_host']}:{worker['web_port']}/query"
    request = urllib.request.Request(
        url, data=orjson.dumps({"sql": sql, "params": params or {}}), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = orjson.loads(exc.read() or b"{}").get("error", str(exc))
        raise QueryError(str(detail)) from exc
    except (urllib.error.URLError, TimeoutError) as exc:
        raise WarehouseUnavailable(f"the worker holding the embedded store did not answer: {exc}") from exc
    return QueryResult(body["columns"], [tuple(r) for r in body["rows"]])


def format_result(result: QueryResult, fmt: str) -> str:
    """Render a result as ``table`` (aligned text), ``csv`` or ``json`` (one object per row, a JSON array)."""
    if fmt == "json":
        return orjson.dumps(result.as_dicts(), option=orjson.OPT_INDENT_2).decode()
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(["" if v is None else v for v in row] for row in result.rows)
        return buffer.getvalue().rstrip("\n")
    cells = [[_cell(v) for v in row] for row in result.rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(result.columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(result.columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    lines.append(f"({len(cells)} row{'s' if len(cells) != 1 else ''})")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
