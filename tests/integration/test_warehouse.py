"""Both ClickHouse backends for real: chDB 26.x and the Debian ClickHouse 18.16 server."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pytest

from pipeline import queries
from pipeline.aggregator import WindowRow
from pipeline.drops import Alert
from pipeline.events import Event
from pipeline.processes import free_port
from pipeline.report import Weights, report_params
from pipeline.settings import Settings
from pipeline.sink import (
    ALERTS_TABLE,
    EVENTS_TABLE,
    WINDOWS_TABLE,
    SourcedEvents,
    alert_columns,
    event_columns,
    window_columns,
)
from pipeline.warehouse import QueryError, Warehouse, WarehouseUnavailable, open_warehouse
from pipeline.warehouse.base import RowBlock
from pipeline.warehouse.embedded import EmbeddedWarehouse
from pipeline.warehouse.migrate import MIGRATIONS_TABLE, discover, migrate

pytestmark = pytest.mark.integration

HOSTILE = ["o'brien", "back\\slash", "'; DROP TABLE engagement_events; --", "🙂 ünï", "tab\tnew\nline", "x" * 256]


@pytest.fixture(params=["embedded", "server"])
def warehouse(request: pytest.FixtureRequest) -> Warehouse:
    settings: Settings = request.getfixturevalue(f"{request.param}_settings")
    opened = open_warehouse(settings)
    migrate(opened, settings)
    request.addfinalizer(opened.close)
    opened.settings = settings  # type: ignore[attr-defined]
    return opened


def test_migrate_is_idempotent_and_recorded(warehouse: Warehouse) -> None:
    settings = warehouse.settings  # type: ignore[attr-defined]
    assert migrate(warehouse, settings) == []
    recorded = warehouse.query(f"SELECT version, name FROM {MIGRATIONS_TABLE} ORDER BY version").rows
    assert [(int(v), n) for v, n in recorded] == [(m.version, m.name) for m in discover()]


def _window_columns(accounts: list[str], version: int) -> dict[str, list[object]]:
    n = len(accounts)
    return {
        "account_id": accounts,
        "window_start": [60] * n,
        "window_end": [120] * n,
        "likes": [version] * n,
        "replies": [0] * n,
        "mentions": [0] * n,
        "engagers": [1] * n,
        "follows": [0] * n,
        "unfollows": [0] * n,
        "followers": [0] * n,
        "responses": [0] * n,
        "score": [version] * n,
        "engagement_rate": [None] * n,
        "final": [0] * n,
        "version": [version] * n,
    }


def test_hostile_ids_round_trip_and_bind_as_data(warehouse: Warehouse) -> None:
    warehouse.insert("engagement_windows", _window_columns(HOSTILE, 1))
    warehouse.insert("engagement_windows", _window_columns(HOSTILE, 2))  # a retried/upserted block
    for account in HOSTILE:
        rows = warehouse.query(
            "SELECT account_id, likes, engagement_rate FROM engagement_windows FINAL WHERE account_id = %(a)s",
            {"a": account},
        ).rows
        assert rows == [(account, 2, None)]
    assert warehouse.query("SELECT count() FROM engagement_events").rows == [(0,)]


def test_every_query_of_the_query_module_runs(warehouse: Warehouse) -> None:
    warehouse.insert("engagement_windows", _window_columns(["a", "b"], 1))
    params = {"since": 0, "until": 4_000_000_000, "limit": 10, "min_followers": 0}
    params |= report_params("a", as_of=4_000_000_000_000, days=28, burst_threshold=30, weights=Weights())
    for name in dir(queries):
        sql = getattr(queries, name)
        if name.isupper() and isinstance(sql, str):
            result = warehouse.query(sql, params)
            assert result.columns, name


def test_bad_sql_is_a_query_error(warehouse: Warehouse) -> None:
    with pytest.raises(QueryError):
        warehouse.query("SELECT * FROM no_such_table")


def test_server_unreachable_is_retryable(server_settings: Settings) -> None:
    dead = open_warehouse(replace(server_settings, clickhouse_port=free_port()))
    with pytest.raises(WarehouseUnavailable):
        dead.insert("engagement_windows", _window_columns(["a"], 1))


def test_newer_only_ddl_is_gated_by_version(embedded_settings: Settings, server_settings: Settings) -> None:
    for settings, expect_ttl in ((embedded_settings, True), (server_settings, False)):
        settings = replace(settings, events_ttl_days=30)
        warehouse = open_warehouse(settings)
        try:
            migrate(warehouse, settings)
            ddl = str(warehouse.query("SHOW CREATE TABLE engagement_events").rows[0][0])
            assert ("TTL" in ddl) is expect_ttl
        finally:
            warehouse.close()


def test_a_block_spanning_more_than_a_hundred_months_is_inserted(warehouse: Warehouse) -> None:
    """A backfill sorted by account: one block of valid events over 10 years (120 monthly partitions).
    ClickHouse 19.x and later refuse more than 100 partitions per block unless told otherwise."""
    month_ms = 31 * 86_400_000
    events = [
        Event(f"m{i}", "like", 946_684_800_000 + i * month_ms, "u1", "acct-backfill") for i in range(120)
    ]  # from 2000-01-01
    warehouse.insert("engagement_events", event_columns([(*e, "likes", 0, i) for i, e in enumerate(events)], 1))
    (count,) = warehouse.query("SELECT count() FROM engagement_events WHERE account_id = 'acct-backfill'").rows
    assert count == (120,)


def _blocks(prefix: str) -> dict[str, RowBlock]:
    """The worker's three row blocks, every id starting with ``prefix``: hostile and non-ASCII
    strings, NULLs, an integer follower count, window bounds in ms, a float rate and an integer one."""
    events = [
        Event(f"{prefix}e{i}", "like", 1_767_225_600_000 + i, "u1", prefix + account, f"p{i}")
        for i, account in enumerate(HOSTILE)
    ]
    events.append(Event(f"{prefix}r", "reply", 1_767_225_601_999, "u2", f"{prefix}a", None, f"{prefix}e0"))
    events.append(Event(f"{prefix}f", "followers", 1_767_225_602_500, "", f"{prefix}a", None, None, 12_345))
    windows = [
        WindowRow(prefix + account, 1_767_225_600_000, 1_767_225_900_000, 3, 1, 0, 2, 1, 0, 40, 1, 9, rate, 1, 7)
        for account, rate in zip(HOSTILE, [None, 0.25, 0, 1.0, None, 0.5], strict=True)
    ]
    alerts = [
        Alert(f"{prefix}x", f"{prefix}a", 1_767_225_600_000, 1_767_225_900_000, "firing", "drop", 1, 10.0, 90.0, 3)
    ]
    raw = SourcedEvents()  # as the worker holds them: by source message, three events per message here
    for offset in range(0, len(events), 3):
        since = len(raw.events)
        raw.events += events[offset : offset + 3]
        raw.read_at(("likes", 2, offset), since)
    return {
        EVENTS_TABLE: raw.block(1_767_225_700_123),
        WINDOWS_TABLE: window_columns(windows),
        ALERTS_TABLE: alert_columns(alerts),
    }


def _stored(warehouse: Warehouse, table: str, block: RowBlock, prefix: str) -> list[tuple[object, ...]]:
    names = [name for name in block]
    listed = ", ".join(f"toString({name})" for name in names)  # one text form for both backends' types
    rows = warehouse.query(
        f"SELECT {listed} FROM {table} WHERE substring(account_id, 1, {len(prefix)}) = %(p)s", {"p": prefix}
    ).rows
    return sorted(tuple(v[len(prefix) :] if v and v.startswith(prefix) else v for v in row) for row in rows)


def test_a_row_block_stores_what_its_columns_store(warehouse: Warehouse) -> None:
    """The worker hands its rows over as a ``RowBlock``; chDB converts them from rows with the table's
    own types, the server transposes them. Either way the table holds exactly what the same block given
    as plain columns stores, on both backends."""
    untransposed = {}
    for table, block in _blocks("r:").items():
        warehouse.insert(table, block)
        untransposed[table] = block._columns is None  # the general path reads the block as columns
    for table, block in _blocks("c:").items():
        warehouse.insert(table, {name: list(values) for name, values in block.items()})
    for table, block in _blocks("r:").items():
        stored = _stored(warehouse, table, block, "r:")
        assert len(stored) == len(block.rows)
        assert stored == _stored(warehouse, table, block, "c:")
    if isinstance(warehouse, EmbeddedWarehouse):  # and chDB took the rows whole, not the general path:
        for table, block in _blocks("r:").items():  # Arrow accepts them with the table's own types
            row_type = warehouse._row_type(table, block.names)
            assert row_type is not None, table
            assert len(pa.array(block.rows, type=row_type)) == len(block.rows)
        assert untransposed == dict.fromkeys(untransposed, True)  # what the insert itself did


def test_a_row_block_arrow_refuses_takes_the_general_path(embedded_settings: Settings) -> None:
    """A value of another type than its column's (an integer post id) makes Arrow refuse the rows with
    the table's types; the block is then inserted as plain columns would be, with the same outcome."""
    warehouse = open_warehouse(embedded_settings)
    try:
        migrate(warehouse, embedded_settings)
        outcomes = []
        for prefix in ("r:", "c:"):
            rows = [("e1", "like", 1_767_225_600_000, "u1", f"{prefix}a", 7, None, None, "likes", 0, 1)]
            block = event_columns(rows, 1)
            given = block if prefix == "r:" else {name: list(values) for name, values in block.items()}
            try:
                warehouse.insert(EVENTS_TABLE, given)
                outcomes.append(_stored(warehouse, EVENTS_TABLE, block, prefix))
            except QueryError as exc:
                outcomes.append([(str(exc).replace(prefix, ""),)])
        assert outcomes[0] == outcomes[1]
    finally:
        warehouse.close()


def test_a_block_keeps_its_copies_of_one_row_until_a_merge(warehouse: Warehouse) -> None:
    """Inserts do not collapse a block's rows of one key as they write them (``optimize_on_insert`` off
    where the server has it; 18.16 never does): the copies stay until the table merges its parts, as the
    copies of a replayed block do, and readers absorb them (FINAL here; uniqExact and DISTINCT in
    :mod:`pipeline.queries`, checked against the reference with duplicates in one block and across
    blocks in ``test_report_equals_reference.py``)."""
    event = Event("copy-1", "like", 1_767_225_600_000, "u1", "acct-copies")
    warehouse.insert("engagement_events", event_columns([(*event, "likes", 0, 1), (*event, "likes", 0, 1)], 1))
    where = "WHERE account_id = 'acct-copies'"
    assert warehouse.query(f"SELECT count() FROM engagement_events {where}").rows == [(2,)]
    assert warehouse.query(f"SELECT count() FROM engagement_events FINAL {where}").rows == [(1,)]
