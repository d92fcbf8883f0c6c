"""Cluster mode live on ClickHouse 18.16: two local servers, each one shard of the cluster ``two_shards``.

There is no ZooKeeper/Keeper here, so Replicated engines and ON CLUSTER cannot run; the plain mode
(``ENGAGEMENT_CLICKHOUSE_CLUSTER_ENGINES=plain``) renders the same layout with MergeTree engines and
``engagement migrate`` applies each DDL statement on both nodes. Everything else is real: local tables,
Distributed tables sharded by :data:`pipeline.warehouse.cluster.SHARDING_KEYS`, materialized views firing on
each shard, the backfill of 004 through the Distributed tables, writes through them with
``insert_distributed_sync``, and every statement of :mod:`pipeline.queries` read through them, compared
with the same data on one node. The replicated DDL is sent to 18.16 too, to prove that it parses: the
server refuses it only for the missing distributed-DDL configuration.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline import queries
from pipeline.deadletter import DeadLetter
from pipeline.events import Event
from pipeline.reference import reference_rows
from pipeline.report import Weights, report_params
from pipeline.report_data import SCENARIO_ACCOUNTS, report_as_of, report_events
from pipeline.report_model import DAY_MS
from pipeline.settings import Settings
from pipeline.sink import dead_letter_columns
from pipeline.warehouse import QueryError, Warehouse, open_warehouse
from pipeline.warehouse.cluster import LOCAL_SUFFIX, SHARDING_KEYS, ClusterLayout, cluster_statements
from pipeline.warehouse.migrate import MIGRATIONS_TABLE, discover, render, statements
from tests.chaos.harness import ClickHouseServer
from tests.integration.helpers import config_of, run_cli
from tests.integration.test_rollups import BLOCK, assert_rollups_equal_raw, insert, migrate_around_the_backfill

pytestmark = pytest.mark.integration

CLUSTER = "two_shards"
SYNTAX_ERROR = 62
NO_DISTRIBUTED_DDL = 49  # 18.16 without ZooKeeper: "DDL background thread is not initialized"


def cluster_config(ports: Sequence[int]) -> str:
    """``remote_servers`` with one shard per port (a ``config.d`` file that every node merges)."""
    shards = "".join(f"<shard><replica><host>127.0.0.1</host><port>{p}</port></replica></shard>" for p in ports)
    return f"<yandex><remote_servers><{CLUSTER}>{shards}</{CLUSTER}></remote_servers></yandex>\n"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ClickHouseServer]]:
    """Two private 18.16 servers, the two shards of ``two_shards``."""
    servers = [ClickHouseServer(tmp_path_factory.mktemp(f"shard{n}")) for n in (1, 2)]
    for server in servers:
        (server.directory / "config.d").mkdir()
        (server.directory / "config.d" / "cluster.xml").write_text(cluster_config([s.port for s in servers]))
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def settings_of(shards: list[ClickHouseServer], database: str, tmp_path: Path, cluster: str = CLUSTER) -> Settings:
    """Settings of the first node: the cluster in plain mode, or one node when ``cluster`` is empty."""
    return Settings.from_env(
        {},
        warehouse="server",
        clickhouse_host=shards[0].host,
        clickhouse_port=shards[0].port,
        clickhouse_database=database,
        clickhouse_cluster=cluster,
        clickhouse_cluster_engines="plain",
        data_dir=tmp_path / "data",
    )


def node(settings: Settings, server: ClickHouseServer) -> Warehouse:
    """A single-node connection to ``server`` (its local tables), in the database of ``settings``."""
    return open_warehouse(replace(settings, clickhouse_cluster="", clickhouse_port=server.port))


def test_migrate_applies_the_cluster_ddl_on_every_node_once(shards: list[ClickHouseServer], tmp_path: Path) -> None:
    settings = settings_of(shards, "cluster_migrate", tmp_path)
    first = run_cli(settings, "migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied {m.version:03d}_{m.name}" for m in discover()]
    again = run_cli(settings, "migrate")
    assert (again.returncode, again.stdout.strip()) == (0, "schema is up to date"), again.stderr
    for server in shards:
        local = node(settings, server)
        try:
            tables = {
                str(name): str(engine)
                for name, engine in local.query(
                    "SELECT name, engine FROM system.tables WHERE database = %(d)s", {"d": settings.clickhouse_database}
                ).rows
            }
            recorded = [int(r[0]) for r in local.query(f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version").rows]
        finally:
            local.close()
        assert recorded == [m.version for m in discover()]  # recorded on every node, once
        for table in SHARDING_KEYS:
            assert tables[table] == "Distributed"
            assert tables[table + LOCAL_SUFFIX].endswith("MergeTree")
        assert {name for name, engine in tables.items() if engine == "MaterializedView"} == {
            "engagement_account_hours_mv",
            "engagement_actor_minutes_mv",
            "engagement_actor_totals_mv",
            "engagement_outbound_mv",
        }


WINDOW_COLUMNS = [
    "account_id",
    "window_start",
    "window_end",
    "likes",
    "replies",
    "mentions",
    "engagers",
    "follows",
    "unfollows",
    "followers",
    "responses",
    "score",
    "engagement_rate",
    "final",
]


def insert_windows(warehouse: Warehouse, settings: Settings, events: Sequence[Event]) -> None:
    """The reference's final windows (version 2), after a stale open copy of each (version 1, no likes)."""
    rows = list(reference_rows(events, config_of(settings)).values())
    for version in (1, 2):
        columns: dict[str, list[Any]] = {name: [row[i] for row in rows] for i, name in enumerate(WINDOW_COLUMNS)}
        columns["window_start"] = [ms // 1000 for ms in columns["window_start"]]
        columns["window_end"] = [ms // 1000 for ms in columns["window_end"]]
        if version == 1:
            columns["likes"] = [0] * len(rows)
            columns["final"] = [0] * len(rows)
        columns["version"] = [version] * len(rows)
        warehouse.insert("engagement_windows", columns)


def insert_dead_letters_and_alerts(warehouse: Warehouse) -> None:
    letters = [
        DeadLetter(f"likes/{p}/{o}/0", reason, "bad", "likes", p, o, 0, "{", 1, 0, 1_700_000_000)
        for p in range(4)
        for o, reason in enumerate(["invalid_json", "missing_field", "late", "invalid_json"])
    ]
    for _ in range(2):  # every dead letter written twice: FINAL keeps one
        warehouse.insert("engagement_dead_letters", dead_letter_columns(letters))
    accounts = sorted(SCENARIO_ACCOUNTS)[:6]
    alerts: dict[str, list[Any]] = {
        "alert_id": [f"{a}/{s}" for a in accounts for s in ("firing", "resolved")],
        "account_id": [a for a in accounts for _ in range(2)],
        "window_start": [1_700_000_000 + 60 * n for n in range(2 * len(accounts))],
        "window_end": [1_700_000_060 + 60 * n for n in range(2 * len(accounts))],
        "state": ["firing", "resolved"] * len(accounts),
        "reason": ["drop", "recovered"] * len(accounts),
        "observed": [1.5, 9.0] * len(accounts),
        "baseline": [8.0, 8.5] * len(accounts),
        "drop_pct": [81.25, 0.0] * len(accounts),
        "windows_below": [3, 0] * len(accounts),
    }
    for _ in range(2):
        warehouse.insert("engagement_alerts", alerts)


def statements_to_compare(accounts: Sequence[str]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every statement of pipeline.queries with its parameters: (what, sql, params)."""
    as_of = report_as_of()
    start = as_of - 28 * DAY_MS
    board = {"as_of": as_of, "start": start, "limit": 1000, **queries.rollup_params(start, as_of)}
    totals = {"since": "2000-01-01 00:00:00", "until": "2100-01-01 00:00:00", "limit": 1000, "min_followers": 1}
    out: list[tuple[str, str, dict[str, Any] | None]] = [
        ("TOP_BY_FOLLOWERS", queries.TOP_BY_FOLLOWERS, totals),
        ("TOP_BY_ENGAGEMENT_RATE", queries.TOP_BY_ENGAGEMENT_RATE, totals),
        ("EVENT_TIME_RANGE", queries.EVENT_TIME_RANGE, None),
        ("FINAL_WINDOWS", queries.FINAL_WINDOWS, None),
        ("COUNT_TABLE_ROWS", queries.COUNT_TABLE_ROWS, None),
        ("DEAD_LETTERS_BY_REASON", queries.DEAD_LETTERS_BY_REASON, None),
        ("REPORT_DEFAULT_AS_OF", queries.REPORT_DEFAULT_AS_OF, None),
    ]
    out += [(f"LEADERBOARD_BY[{by}]", sql, board) for by, sql in queries.LEADERBOARD_BY.items()]
    for account in accounts:
        out.append((f"ACCOUNT_ALERTS {account}", queries.ACCOUNT_ALERTS, {"account": account}))
        for days in (28, 3):
            params = report_params(account, as_of, days, 30, Weights(1, 2, 3))
            for name in ("REPORT_DAILY", "REPORT_INBOUND", "REPORT_RESPONSES", "REPORT_OUTBOUND"):
                out.append((f"{name} {account} {days}d", getattr(queries, name), params))
    return out


def fill(warehouse: Warehouse, settings: Settings, events: Sequence[Event], tmp_path: Path) -> None:
    """Tables before the rollups, the first half of the events, then 004 on (the backfill), then the rest
    (through the views), retried blocks, then windows, dead letters and alerts: the same on one node and
    on the cluster."""
    half = migrate_around_the_backfill(warehouse, settings, events, tmp_path / settings.clickhouse_database)
    insert(warehouse, events[half - BLOCK // 2 : half + BLOCK // 2])  # retried blocks, across the seam
    insert_windows(warehouse, settings, events)
    insert_dead_letters_and_alerts(warehouse)


def test_queries_through_distributed_tables_equal_one_node(shards: list[ClickHouseServer], tmp_path: Path) -> None:
    events = report_events(seed=11, bulk_events=12_000)
    single = settings_of(shards, "single_node", tmp_path, cluster="")
    sharded = settings_of(shards, "sharded", tmp_path)
    one, many = open_warehouse(single), open_warehouse(sharded)
    try:
        fill(one, single, events, tmp_path)
        fill(many, sharded, events, tmp_path)
        assert_rollups_equal_raw(many, events)  # backfill + views, per shard, read through Distributed

        # the rows are spread over both shards, and every account's rows are on one of them
        placed = []
        for server in shards:
            local = node(sharded, server)
            try:
                placed.append(
                    {str(r[0]) for r in local.query("SELECT DISTINCT account_id FROM engagement_events_local").rows}
                )
                windows = local.query("SELECT DISTINCT account_id FROM engagement_windows_local").rows
                assert {str(r[0]) for r in windows} <= placed[-1]
            finally:
                local.close()
        assert all(len(accounts) > 10 for accounts in placed)
        assert not placed[0] & placed[1]

        busiest = sorted(SCENARIO_ACCOUNTS)[:8]
        compared = statements_to_compare(busiest)
        for what, sql, params in compared:
            expected, got = one.query(sql, params), many.query(sql, params)
            assert got.columns == expected.columns, what
            assert got.rows == expected.rows, what
        assert sum(len(one.query(sql, params).rows) for _, sql, params in compared) > 1000  # not all empty
    finally:
        one.close()
        many.close()


def test_replicated_cluster_ddl_parses_on_18_16(shards: list[ClickHouseServer], tmp_path: Path) -> None:
    """Each replicated statement reaches ClickHouse's ON CLUSTER check: refused for the missing
    distributed-DDL (ZooKeeper) configuration, never as a syntax error."""
    settings = replace(settings_of(shards, "replicated_syntax", tmp_path), clickhouse_cluster_engines="replicated")
    layout = ClusterLayout.of(settings)
    assert layout is not None and layout.replicated
    warehouse = open_warehouse(settings)
    try:
        warehouse.execute(f"CREATE DATABASE IF NOT EXISTS `{settings.clickhouse_database}`")
        refused: set[int | None] = set()
        ddl = 0
        for migration in discover():
            rendered = statements(render(migration.text, settings, warehouse.server_version()))
            for statement in cluster_statements(rendered, layout):
                if not statement.on_every_node:
                    continue  # the backfill inserts have no ON CLUSTER
                ddl += 1
                with pytest.raises(QueryError) as refusal:
                    warehouse.execute(statement.sql)
                assert "ON CLUSTER" in statement.sql
                assert "DDL background thread is not initialized" in str(refusal.value)
                refused.add(refusal.value.code)
        assert ddl >= 20
        assert SYNTAX_ERROR not in refused
        assert refused == {NO_DISTRIBUTED_DDL}, refused
        with pytest.raises(QueryError) as broken:  # what a statement that does not parse gets instead
            warehouse.execute(statement.sql.replace(" AS ", " AS AS ", 1))
        assert broken.value.code == SYNTAX_ERROR
    finally:
        warehouse.close()
