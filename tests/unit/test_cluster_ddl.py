"""The DDL rendered for a ClickHouse cluster (pipeline.warehouse.cluster): a snapshot and its structure.

The snapshot ``tests/golden/cluster_ddl.sql`` is every statement ``engagement migrate`` sends to a
replicated cluster ``engagement_cluster`` (database ``engagement``, a current server), in order. After a
deliberate change of the schema or of the renderer, regenerate it and review the diff:

    ENGAGEMENT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/unit/test_cluster_ddl.py

The structural tests hold whatever the snapshot says: ON CLUSTER on every DDL statement, Replicated engines
with the {shard}/{replica} macros (engine arguments kept), a Distributed table over an existing local
table for every table, sharding keys that keep every copy of a row on one shard, views from local to
local, backfills through the Distributed tables; and the single-node DDL unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.settings import Settings, SettingsError
from pipeline.warehouse.base import Params, QueryResult
from pipeline.warehouse.cluster import (
    LOCAL_SUFFIX,
    SHARDING_KEYS,
    ClusterLayout,
    ClusterStatement,
    cluster_statements,
)
from pipeline.warehouse.migrate import MIGRATIONS_TABLE, discover, migrate, migrations_table_ddl, render, statements

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "cluster_ddl.sql"
CLUSTER = "engagement_cluster"
SERVER = (24, 8)  # a current ClickHouse: TTL and codecs rendered


def cluster_settings(**overrides: Any) -> Settings:
    return Settings.from_env({}, warehouse="server", clickhouse_cluster=CLUSTER, **overrides)


def plan(settings: Settings) -> list[ClusterStatement]:
    """Every statement of every migration for the cluster of ``settings``, in order."""
    layout = ClusterLayout.of(settings)
    assert layout is not None
    out: list[ClusterStatement] = []
    for migration in discover():
        out += cluster_statements(statements(render(migration.text, settings, SERVER)), layout)
    return out


def snapshot(settings: Settings) -> str:
    layout = ClusterLayout.of(settings)
    head = [f"CREATE DATABASE IF NOT EXISTS `{settings.clickhouse_database}`{layout.on_cluster if layout else ''}"]
    head.append(migrations_table_ddl(settings.clickhouse_database, layout))
    body = [("" if s.on_every_node else "-- once, from one node:\n") + s.sql for s in plan(settings)]
    return ";\n\n".join(head + body) + ";\n"


def test_rendered_cluster_ddl_equals_the_snapshot() -> None:
    rendered = snapshot(cluster_settings())
    if os.environ.get("ENGAGEMENT_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(rendered, encoding="utf-8")
    assert rendered == GOLDEN.read_text(encoding="utf-8"), f"regenerate {GOLDEN} (see this file's docstring)"


def created(sql: str) -> str:
    match = re.match(r"CREATE (?:TABLE|MATERIALIZED VIEW) IF NOT EXISTS `engagement`\.(\w+)", sql)
    assert match, sql
    return match.group(1)


def single_node_tables() -> dict[str, str]:
    """Each table of the single-node DDL and its ORDER BY."""
    tables: dict[str, str] = {}
    for migration in discover():
        for sql in (s.strip() for s in statements(render(migration.text, Settings(), SERVER))):
            if match := re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", sql):
                order = re.search(r"ORDER BY \(?([\w, ]+)\)?", sql)
                assert order, sql
                tables[match.group(1)] = order.group(1)
    return tables


def test_every_ddl_statement_is_on_the_cluster_and_every_engine_replicated() -> None:
    statements_ = plan(cluster_settings())
    ddl = [s for s in statements_ if s.sql.startswith("CREATE")]
    assert ddl and all(s.on_every_node for s in ddl)
    assert all(f" ON CLUSTER '{CLUSTER}'" in s.sql.splitlines()[0] for s in ddl)
    engines = [re.search(r"ENGINE = (\w+)\(([^\n]*)\)", s.sql) for s in ddl if "MATERIALIZED VIEW" not in s.sql]
    assert all(engines)
    for statement in ddl:
        if "MergeTree" not in statement.sql:
            continue
        table = created(statement.sql)
        assert table.endswith(LOCAL_SUFFIX)
        logical = table.removesuffix(LOCAL_SUFFIX)
        match = re.search(r"ENGINE = Replicated(\w*)MergeTree\('([^']*)', '([^']*)'(.*)\)\n", statement.sql)
        assert match, statement.sql
        assert match.group(2) == "/clickhouse/tables/{shard}/engagement/" + logical
        assert match.group(3) == "{replica}"
        if logical == "engagement_windows":  # ReplacingMergeTree(version): the highest version still wins
            assert (match.group(1), match.group(4)) == ("Replacing", ", version")
    families = {re.search(r"Replicated(\w*)MergeTree", s.sql).group(1) for s in ddl if "Replicated" in s.sql}  # type: ignore[union-attr]
    assert families == {"Replacing", "Aggregating"}
    head = migrations_table_ddl("engagement", ClusterLayout.of(cluster_settings()))
    assert f"{MIGRATIONS_TABLE} ON CLUSTER '{CLUSTER}'" in head
    assert "ReplicatedMergeTree('/clickhouse/tables/cluster/engagement/engagement_schema_migrations'" in head
    assert "'{shard}-{replica}'" in head  # one replicated table for the whole cluster: unique replica names


def test_every_table_is_distributed_over_an_existing_local_table_by_its_deduplication_key() -> None:
    tables = single_node_tables()
    assert set(tables) == set(SHARDING_KEYS)
    seen_local: set[str] = set()
    distributed: dict[str, tuple[str, str]] = {}
    for statement in plan(cluster_settings()):
        if not statement.sql.startswith("CREATE TABLE"):
            continue
        name = created(statement.sql)
        match = re.search(r"ENGINE = Distributed\('(\w+)', '(\w+)', '(\w+)', (.+)\)$", statement.sql)
        if match is None:
            seen_local.add(name)
            continue
        assert match.group(1, 2) == (CLUSTER, "engagement")
        assert match.group(3) == name + LOCAL_SUFFIX and match.group(3) in seen_local  # created before it
        assert f" AS `engagement`.{name}{LOCAL_SUFFIX}\n" in statement.sql
        distributed[name] = (match.group(3), match.group(4))
    assert set(distributed) == set(tables)
    for table, (_, key) in distributed.items():
        assert key == SHARDING_KEYS[table]
        column = re.fullmatch(r"cityHash64\((\w+)\)", key)
        assert column, key
        # a column of the deduplication key, so every copy and version of a row goes to the same shard; where
        # that key holds event_id, every copy of the row is the same event, so any column of it will do
        dedup = tables[table].replace(" ", "").split(",")
        assert column.group(1) in dedup or "event_id" in dedup, (table, key, tables[table])
    # as designed: events, windows and alerts follow the account; dead letters their id
    assert (
        SHARDING_KEYS.items()
        >= {
            "engagement_events": "cityHash64(account_id)",
            "engagement_windows": "cityHash64(account_id)",
            "engagement_alerts": "cityHash64(account_id)",
            "engagement_outbound": "cityHash64(account_id)",
        }.items()
    )
    assert SHARDING_KEYS["engagement_dead_letters"] == "cityHash64(dead_letter_id)"


def test_views_fire_on_each_shard_and_backfills_go_through_the_distributed_tables() -> None:
    statements_ = plan(cluster_settings())
    views = [s.sql for s in statements_ if s.sql.startswith("CREATE MATERIALIZED VIEW")]
    assert len(views) == 4
    for sql in views:
        target = re.search(r" TO `engagement`\.(\w+) AS", sql)
        sources = re.findall(r"\bFROM `engagement`\.(\w+)", sql)
        assert target and target.group(1).endswith(LOCAL_SUFFIX)
        assert sources == ["engagement_events" + LOCAL_SUFFIX]
    inserts = [s for s in statements_ if s.sql.startswith("INSERT")]
    assert len(inserts) == 4 and not any(s.on_every_node for s in inserts)
    for statement in inserts:
        assert LOCAL_SUFFIX not in statement.sql  # Distributed in, Distributed out: placed by the sharding keys
        assert "ON CLUSTER" not in statement.sql
        assert re.findall(r"\bFROM `engagement`\.(\w+)", statement.sql) == ["engagement_events"]


def test_plain_mode_keeps_the_layout_without_replication() -> None:
    replicated = plan(cluster_settings())
    plain = plan(cluster_settings(clickhouse_cluster_engines="plain"))
    assert [created(s.sql) for s in plain if s.sql.startswith("CREATE")] == [
        created(s.sql) for s in replicated if s.sql.startswith("CREATE")
    ]
    assert not any("ON CLUSTER" in s.sql or "Replicated" in s.sql or "{shard}" in s.sql for s in plain)
    assert any("ENGINE = ReplacingMergeTree(version)" in s.sql for s in plain)
    assert [s.on_every_node for s in plain] == [s.on_every_node for s in replicated]


def test_statements_the_renderer_cannot_place_are_refused() -> None:
    layout = ClusterLayout(CLUSTER, "engagement")
    with pytest.raises(ValueError, match="cannot render"):
        cluster_statements(["ALTER TABLE engagement_events ADD COLUMN x UInt8"], layout)
    with pytest.raises(ValueError, match="no sharding key"):
        cluster_statements(
            ["CREATE TABLE IF NOT EXISTS new_table\n(\n    a String\n)\nENGINE = MergeTree ORDER BY a"], layout
        )
    with pytest.raises(ValueError, match="MergeTree-family"):
        cluster_statements(["CREATE TABLE IF NOT EXISTS engagement_events\n(\n    a String\n)\nENGINE = Log"], layout)


def test_the_cluster_setting() -> None:
    assert Settings().clickhouse_cluster == "" and ClusterLayout.of(Settings()) is None  # one node by default
    settings = Settings.from_env(
        {
            "ENGAGEMENT_WAREHOUSE": "server",
            "ENGAGEMENT_CLICKHOUSE_CLUSTER": "prod",
            "ENGAGEMENT_CLICKHOUSE_CLUSTER_ENGINES": "plain",
        }
    )
    assert ClusterLayout.of(settings) == ClusterLayout("prod", "engagement", replicated=False)
    with pytest.raises(SettingsError, match="ENGAGEMENT_WAREHOUSE=server"):
        Settings.from_env({"ENGAGEMENT_CLICKHOUSE_CLUSTER": "prod"})  # chDB is one process, never a cluster
    with pytest.raises(SettingsError, match="'replicated' or 'plain'"):
        Settings.from_env({}, warehouse="server", clickhouse_cluster="prod", clickhouse_cluster_engines="sharded")
    with pytest.raises(SettingsError, match="ENGAGEMENT_CLICKHOUSE_CLUSTER"):
        Settings.from_env({}, warehouse="server", clickhouse_cluster="prod'; DROP")


class RecordingWarehouse:
    """A warehouse that records what it is sent and answers the migrations table with ``applied``."""

    kind = "server"

    def __init__(self, database: str, applied: Sequence[int] = ()) -> None:
        self.database = database
        self.applied = list(applied)
        self.sent: list[str] = []
        self.inserted: list[tuple[str, dict[str, list[Any]]]] = []

    def execute(self, sql: str, params: Params = None) -> None:
        self.sent.append(sql)

    def query(self, sql: str, params: Params = None) -> QueryResult:
        assert sql == f"SELECT version FROM {MIGRATIONS_TABLE}", sql
        return QueryResult(["version"], [(v,) for v in self.applied])

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        self.inserted.append((table, {k: list(v) for k, v in columns.items()}))

    def server_version(self) -> tuple[int, int]:
        return SERVER

    def close(self) -> None:
        pass


def test_single_node_ddl_is_unchanged() -> None:
    """What migrate sends to one node: the statements of the files as rendered, and nothing else."""
    settings = Settings()
    warehouse = RecordingWarehouse("engagement")
    migrate(warehouse, settings)
    expected = [
        "CREATE DATABASE IF NOT EXISTS `engagement`",
        "CREATE TABLE IF NOT EXISTS `engagement`.engagement_schema_migrations (version UInt32, name String,"
        " checksum String, applied_at DateTime('UTC') DEFAULT now()) ENGINE = MergeTree ORDER BY version",
    ]
    for migration in discover():
        expected += statements(render(migration.text, settings, SERVER))
    assert warehouse.sent == expected
    assert [columns["version"] for _, columns in warehouse.inserted] == [[m.version] for m in discover()]


def test_migrate_on_a_replicated_cluster_sends_each_statement_once_and_records_once() -> None:
    settings = cluster_settings()
    warehouse = RecordingWarehouse("engagement", applied=[1, 2])
    applied = migrate(warehouse, settings)
    assert [m.version for m in applied] == [m.version for m in discover() if m.version > 2]
    pending = []
    for migration in discover():
        if migration.version > 2:
            pending += cluster_statements(
                statements(render(migration.text, settings, SERVER)), ClusterLayout(CLUSTER, "engagement")
            )
    assert warehouse.sent[:2] == [
        f"CREATE DATABASE IF NOT EXISTS `engagement` ON CLUSTER '{CLUSTER}'",
        migrations_table_ddl("engagement", ClusterLayout(CLUSTER, "engagement")),
    ]
    assert warehouse.sent[2:] == [s.sql for s in pending]
    assert [(t, c["version"]) for t, c in warehouse.inserted] == [
        (f"`engagement`.{MIGRATIONS_TABLE}", [m.version]) for m in applied
    ]


class ClusterNode(RecordingWarehouse):
    """A node of a plain cluster of ``nodes`` (host, port): answers ``system.clusters`` too."""

    def __init__(self, database: str, applied: Sequence[int], nodes: Sequence[tuple[str, int]]) -> None:
        super().__init__(database, applied)
        self.nodes = list(nodes)

    def query(self, sql: str, params: Params = None) -> QueryResult:
        if "system.clusters" in sql:
            return QueryResult(["host_address", "port", "replica_num"], [(h, p, 1) for h, p in self.nodes])
        return super().query(sql, params)


def test_migrate_on_a_cluster_runs_no_ddl_when_nothing_is_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker connecting as the ingest user (SELECT, INSERT only) migrates at start: on a cluster too,
    nothing may be sent when every migration is recorded (on every node, in plain mode)."""
    everything = [m.version for m in discover()]
    replicated = RecordingWarehouse("engagement", applied=everything)
    assert migrate(replicated, cluster_settings()) == [] and replicated.sent == []

    addresses = [("10.0.0.1", 9000), ("10.0.0.2", 9000)]
    nodes = {address: ClusterNode("engagement", everything, addresses) for address in addresses}
    import pipeline.warehouse.server as server

    monkeypatch.setattr(
        server, "ServerWarehouse", lambda settings: nodes[(settings.clickhouse_host, settings.clickhouse_port)]
    )
    plain = cluster_settings(clickhouse_cluster_engines="plain")
    first = ClusterNode("engagement", everything, addresses)
    assert migrate(first, plain) == []
    assert first.sent == [] and all(node.sent == [] for node in nodes.values())
    # one node behind: the pending migration is applied on every node that lacks it
    nodes[addresses[1]].applied = everything[:-1]
    assert [m.version for m in migrate(first, plain)] == everything[-1:]
    assert first.sent[0] == "CREATE DATABASE IF NOT EXISTS `engagement`"
    assert [c["version"] for _, c in nodes[addresses[1]].inserted] == [everything[-1:]]
