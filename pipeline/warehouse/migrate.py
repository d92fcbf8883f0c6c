"""Apply the numbered DDL files of ``schemas/`` in order, recording each in a migrations table.

Contract: :func:`migrate` is idempotent (re-running applies nothing new) and ordered (``NNN_name.sql`` by
number). A file is recorded only after all its statements succeeded; every statement is written to be
re-runnable (``IF NOT EXISTS``), so a file interrupted half-way is simply applied again.
Newer-only extras are template slots (``{{TTL_EVENTS}}``...) rendered empty on servers that lack them.

On a cluster (``ENGAGEMENT_CLICKHOUSE_CLUSTER``, :mod:`pipeline.warehouse.cluster`) each file is rendered
for the cluster, statement by statement in the same order. Replicated mode: DDL carries ON CLUSTER (each
statement returns once every node ran it) and the migrations table is one replicated table with every
node a replica, so a file recorded on one node is recorded everywhere. Plain mode: each DDL statement is
run on every node of ``system.clusters`` in turn, and the file is recorded on every node; it counts as
applied only when every node has it. Backfill inserts run once, through the Distributed tables.
Concurrent migrates are not locked out: run one at a time (a Job, a one-shot service; workers migrate at
start). Two at once are harmless but wasteful: every statement is ``IF NOT EXISTS``, a backfill run twice
only adds copies that the rollups' readers absorb, and a version recorded twice is read as one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.settings import Settings
from pipeline.warehouse.base import QueryError, Warehouse
from pipeline.warehouse.cluster import ClusterLayout, ClusterStatement, cluster_statements
from pipeline.warehouse.params import identifier

SCHEMAS_DIR = Path(__file__).resolve().parent.parent.parent / "schemas"
MIGRATIONS_TABLE = "engagement_schema_migrations"
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

TTL_MIN_VERSION = (19, 6)
CODEC_MIN_VERSION = (20, 1)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def discover(directory: Path = SCHEMAS_DIR) -> list[Migration]:
    """The migrations in ``directory``, ordered by number; a duplicated number is an error, and so is none
    at all (FileNotFoundError): an installation without its ``schemas`` would otherwise start a worker on
    a database with no tables, retrying its inserts forever."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version:03d}: {found[version].path.name}, {path.name}")
        found[version] = Migration(version, match.group(2), path)
    if not found:
        raise FileNotFoundError(f"no migrations (NNN_name.sql) in {directory}: is the schemas directory installed?")
    return [found[v] for v in sorted(found)]


def render(text: str, settings: Settings, server: tuple[int, int]) -> str:
    """Fill the template slots for this server version and these settings.

    ``{{TTL_EVENTS}}`` (raw events' retention, on ``ts``) and ``{{TTL_DEAD_LETTERS}}`` (on ``failed_at``)
    take another time column as ``{{TTL_EVENTS:hour}}``; ``{{CODEC_ZSTD}}`` is a column codec.
    """
    ttl_ok = server >= TTL_MIN_VERSION

    def ttl(days: int, column: str) -> str:
        return f"TTL {column} + INTERVAL {days} DAY" if ttl_ok and days > 0 else ""

    def slot(match: re.Match[str]) -> str:
        name, column = match.group(1), match.group(2)
        if name == "TTL_EVENTS":
            return ttl(settings.events_ttl_days, column or "ts")
        if name == "TTL_DEAD_LETTERS":
            return ttl(settings.dead_letters_ttl_days, column or "failed_at")
        if name == "CODEC_ZSTD":
            return "CODEC(ZSTD(1))" if server >= CODEC_MIN_VERSION else ""
        raise ValueError(f"unknown template slot {match.group(0)}")

    return re.sub(r"\{\{(\w+)(?::(\w+))?\}\}", slot, text)


def statements(text: str) -> list[str]:
    """Split a file into statements at ``;`` ending a line; ``--`` comment lines are dropped."""
    out: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            out.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    tail = "\n".join(current).strip()
    if tail:
        out.append(tail)
    return [s for s in out if s.strip()]


_MIGRATIONS_COLUMNS = "(version UInt32, name String, checksum String, applied_at DateTime('UTC') DEFAULT now())"
# Replicated mode: one ZooKeeper path for the whole cluster (no {shard}), every node a replica of it.
_MIGRATIONS_REPLICATED = (
    "ReplicatedMergeTree('/clickhouse/tables/cluster/%(database)s/" + MIGRATIONS_TABLE + "', '{shard}-{replica}')"
)


def migrations_table_ddl(database: str, layout: ClusterLayout | None) -> str:
    """The DDL of the migrations table: MergeTree on one node and on every node of a plain cluster; on a
    replicated cluster ON CLUSTER and one replicated table for the whole cluster."""
    on_cluster = layout.on_cluster if layout else ""
    engine = "MergeTree"
    if layout is not None and layout.replicated:
        engine = _MIGRATIONS_REPLICATED % {"database": database}
    return (
        f"CREATE TABLE IF NOT EXISTS {identifier(database)}.{MIGRATIONS_TABLE}{on_cluster} "
        f"{_MIGRATIONS_COLUMNS} ENGINE = {engine} ORDER BY version"
    )


def applied_versions(warehouse: Warehouse) -> set[int]:
    result = warehouse.query(f"SELECT version FROM {MIGRATIONS_TABLE}")
    return {int(row[0]) for row in result.rows}


def migrate(warehouse: Warehouse, settings: Settings, directory: Path = SCHEMAS_DIR) -> list[Migration]:
    """Create the database and apply every pending migration; returns those applied now.

    On a cluster in plain mode, also connects to every node of the cluster (``system.clusters``, with the
    credentials of ``settings``) and closes those connections before returning.

    When the migrations table is readable and records every migration (on a single node; on a replicated
    cluster, where that table is replicated; in plain mode on every node), nothing is executed: a user
    without DDL rights (the ingest user on servers with SQL access control) can run it at worker start once
    an administrator applied the migrations. Any other error reading that table (access denied...) is
    raised, not taken for "nothing applied yet".
    """
    layout = ClusterLayout.of(settings)
    if layout is None or layout.replicated:
        if _nothing_pending(warehouse, directory):
            return []
        return _migrate(warehouse, [warehouse], settings, directory, layout)
    if _nothing_pending(warehouse, directory):
        with every_node(warehouse, settings, layout, create_database=False) as nodes:
            if all(_nothing_pending(node, directory) for node in nodes):
                return []
    with every_node(warehouse, settings, layout) as nodes:
        return _migrate(warehouse, nodes, settings, directory, layout)


# What reading the migrations table raises before the first migrate: no such table, no such database
_NOT_YET_CREATED = frozenset({60, 81})


def _nothing_pending(warehouse: Warehouse, directory: Path) -> bool:
    """Whether the migrations table is readable and records every migration of ``directory``; False when
    it or its database does not exist yet. Other errors (access denied, ...) are raised."""
    try:
        done = applied_versions(warehouse)
    except QueryError as exc:
        if exc.code in _NOT_YET_CREATED:
            return False
        raise
    return all(m.version in done for m in discover(directory))


def _migrate(
    warehouse: Warehouse,
    nodes: list[Warehouse],
    settings: Settings,
    directory: Path,
    layout: ClusterLayout | None,
) -> list[Migration]:
    """Apply the pending migrations: statements for every node on each of ``nodes`` (one on a single node
    or with ON CLUSTER), the others on ``warehouse``; recorded on every one of ``nodes``."""
    database = warehouse.database
    for node in nodes:
        node.execute(f"CREATE DATABASE IF NOT EXISTS {identifier(database)}{layout.on_cluster if layout else ''}")
        node.execute(migrations_table_ddl(database, layout))
    done = set.intersection(*(applied_versions(node) for node in nodes))
    server = warehouse.server_version()
    applied: list[Migration] = []
    for migration in discover(directory):
        if migration.version in done:
            continue
        rendered = statements(render(migration.text, settings, server))
        plan = cluster_statements(rendered, layout) if layout else [ClusterStatement(s, True) for s in rendered]
        for statement in plan:
            for node in nodes if statement.on_every_node else [warehouse]:
                node.execute(statement.sql)
        for node in nodes:
            node.insert(
                f"{identifier(database)}.{MIGRATIONS_TABLE}",
                {"version": [migration.version], "name": [migration.name], "checksum": [migration.checksum]},
            )
        applied.append(migration)
    return applied


@contextmanager
def every_node(
    warehouse: Warehouse, settings: Settings, layout: ClusterLayout, create_database: bool = True
) -> Iterator[list[Warehouse]]:
    """A connection to each node of the cluster (one per shard in plain mode), closed on exit.

    ``create_database``: first create the session's database on ``warehouse`` (the node list is read in
    it); without it, the database must exist."""
    from pipeline.warehouse.server import ServerWarehouse

    if create_database:
        warehouse.execute(f"CREATE DATABASE IF NOT EXISTS {identifier(warehouse.database)}")
    found = warehouse.query(
        "SELECT host_address, port, replica_num FROM system.clusters WHERE cluster = %(cluster)s"
        " ORDER BY shard_num, replica_num",
        {"cluster": layout.name},
    ).rows
    if not found:
        raise QueryError(f"cluster {layout.name!r} is not in system.clusters (the servers' remote_servers)")
    if any(int(replica) > 1 for _, _, replica in found):
        raise QueryError(f"cluster {layout.name!r} has replicas: plain mode takes one node per shard")
    with ExitStack() as stack:
        nodes: list[Warehouse] = []
        for host, port, _ in found:
            node = ServerWarehouse(replace(settings, clickhouse_host=str(host), clickhouse_port=int(port)))
            stack.callback(node.close)
            nodes.append(node)
        yield nodes
