"""ClickHouse cluster mode: the DDL of ``schemas/`` rendered for a sharded (and replicated) cluster.

Set ``ENGAGEMENT_CLICKHOUSE_CLUSTER`` to the name of a cluster of the servers' ``remote_servers``; empty
(the default) keeps the single-node DDL, byte for byte. :func:`cluster_statements` turns each rendered
single-node statement into its cluster form:

- ``CREATE TABLE t (...) ENGINE = XMergeTree[(args)] ...`` becomes a local table ``t_local`` on every
  node, ``ENGINE = ReplicatedXMergeTree('/clickhouse/tables/{shard}/<database>/t', '{replica}'[, args])``
  (the ``{shard}``/``{replica}`` macros of each server's config; ReplacingMergeTree keeps its version
  column, AggregatingMergeTree its merges), and a ``Distributed`` table under the original name ``t``
  that spreads inserts over the shards by :data:`SHARDING_KEYS` and reads all of them.
- ``CREATE MATERIALIZED VIEW v TO r AS SELECT ... FROM s`` reads the local raw table ``s_local`` and writes
  the local rollup ``r_local``: a view fires on the shard (on the replica) where the insert lands.
- ``INSERT INTO r SELECT ... FROM s`` (the backfill of 004) is kept: it reads through the Distributed raw
  table and writes through the Distributed rollup, once, from the node ``engagement migrate`` talks to.
- Every DDL statement names its tables with the database and carries ``ON CLUSTER '<name>'``.

Workers and queries keep using the original names, so every write goes through a Distributed table and
every read reads all shards; :mod:`pipeline.warehouse.server` sends ``insert_distributed_sync = 1`` (an
insert returns once every shard has its rows, so a Kafka offset is committed only after its rows are
durable on the shards; a retried block splits into the same per-shard blocks, which Replicated tables
drop as duplicates, and ReplacingMergeTree absorbs what gets past that) and
``distributed_product_mode = 'global'`` (an ``IN``/``JOIN`` subquery over a Distributed table inside a
query over one runs once over the whole cluster, as on one node).

``ENGAGEMENT_CLICKHOUSE_CLUSTER_ENGINES=plain`` renders the same layout with plain MergeTree engines and
without ``ON CLUSTER``: a cluster of unreplicated shards without ZooKeeper/Keeper, where
``engagement migrate`` applies each DDL statement on every node of the cluster in turn (the tests run
it on two local 18.16 servers).

FINAL stays exact on a cluster because FINAL merges within one shard, and every copy of a row has the same
sharding key, so all of them are on one shard: see :data:`SHARDING_KEYS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.settings import Settings
from pipeline.warehouse.params import identifier

LOCAL_SUFFIX = "_local"
ZOOKEEPER_PATH = "/clickhouse/tables/{shard}/%(database)s/%(table)s"

# Where each table's rows go. Every copy (retries, replays, re-upserts) of a row must reach the shard that
# holds the others, so that ReplacingMergeTree's merges and FINAL, which work within one shard, see them
# together: the key is a function of the table's ORDER BY (its deduplication key), never rand().
SHARDING_KEYS: dict[str, str] = {
    # ORDER BY (account_id, ts_ms, event_id): every copy of an event has its account_id. All events of an
    # account on one shard, so the report's reads of one account (FINAL) stay on one shard.
    "engagement_events": "cityHash64(account_id)",
    # ORDER BY (account_id, window_start), the highest version wins: every version of a window row has the
    # same account_id, so FINAL picks the highest version within the shard that holds them all.
    "engagement_windows": "cityHash64(account_id)",
    # ORDER BY dead_letter_id (topic/partition/offset/element): a re-dead-lettered input has the same id.
    "engagement_dead_letters": "cityHash64(dead_letter_id)",
    # ORDER BY (account_id, window_start, state): a replayed alert has the same account.
    "engagement_alerts": "cityHash64(account_id)",
    # The rollups are written by the materialized views on the shard of the raw event (its account), not
    # through these keys; the keys place only the rows of 004's backfill, inserted through the Distributed
    # tables. engagement_outbound (ReplacingMergeTree by (actor_id, ts_ms, event_id)) follows its raw
    # event's account, so the view's copy and the backfill's copy of an event meet on one shard; and its
    # readers use only min, uniqExact and DISTINCT, which are exact over copies on several shards anyway.
    "engagement_outbound": "cityHash64(account_id)",
    # AggregatingMergeTree of uniqExact/count states: an actor's minutes and totals are split over the
    # shards of the accounts it engaged (the views fire where those events land). Readers merge the states
    # with GROUP BY over the Distributed table (uniqExactMerge is a set union, countMerge a sum of upper
    # bounds), so where a state lies never changes an answer; the key only spreads the backfill.
    "engagement_account_hours": "cityHash64(account_id)",
    "engagement_actor_minutes": "cityHash64(actor_id)",
    "engagement_actor_totals": "cityHash64(actor_id)",
}

_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)(\s*\n\()", re.S)
_ENGINE = re.compile(r"\bENGINE = (\w*)MergeTree(?:\(([^()]*)\))?")
_CREATE_VIEW = re.compile(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+) AS(\s.*)$", re.S)
_INSERT = re.compile(r"^INSERT INTO (\w+)(\s.*)$", re.S)
_FROM = re.compile(r"\bFROM (\w+)\b")


@dataclass(frozen=True)
class ClusterLayout:
    """How to render DDL for cluster ``name``: tables in ``database``, Replicated engines or plain ones."""

    name: str
    database: str
    replicated: bool = True

    @classmethod
    def of(cls, settings: Settings) -> ClusterLayout | None:
        """The layout ``settings`` ask for; None on a single node (``ENGAGEMENT_CLICKHOUSE_CLUSTER`` empty)."""
        if not settings.clickhouse_cluster:
            return None
        return cls(
            settings.clickhouse_cluster,
            settings.clickhouse_database,
            settings.clickhouse_cluster_engines == "replicated",
        )

    @property
    def on_cluster(self) -> str:
        """`` ON CLUSTER '<name>'`` in replicated mode; empty in plain mode (DDL runs on each node)."""
        return f" ON CLUSTER '{self.name}'" if self.replicated else ""

    def qualified(self, table: str) -> str:
        """``table`` in the cluster's database, quoted."""
        return f"{identifier(self.database)}.{table}"

    def engine(self, table: str, family: str, args: str | None) -> str:
        """The local table's engine: ``Replicated<family>MergeTree(path, '{replica}'[, args])`` or, in plain
        mode, the engine unchanged."""
        if not self.replicated:
            return f"ENGINE = {family}MergeTree" + (f"({args})" if args is not None else "")
        path = ZOOKEEPER_PATH % {"database": self.database, "table": table}
        extra = f", {args}" if args else ""
        return f"ENGINE = Replicated{family}MergeTree('{path}', '{{replica}}'{extra})"


@dataclass(frozen=True)
class ClusterStatement:
    """One statement for a cluster. ``on_every_node``: DDL that a plain cluster needs on each node (in
    replicated mode it carries ON CLUSTER and is sent once); otherwise run once, on one node."""

    sql: str
    on_every_node: bool


def cluster_statements(statements: list[str], layout: ClusterLayout) -> list[ClusterStatement]:
    """The cluster form of rendered single-node ``statements`` (see the module docstring), in order.

    Raises ValueError on a statement of another shape, or a MergeTree table without a sharding key: a new
    schema file must be readable by this renderer (and its table given a key) to run on a cluster.
    """
    out: list[ClusterStatement] = []
    for statement in statements:
        text = statement.strip()
        if match := _CREATE_TABLE.match(text):
            out.extend(_table(text, match, layout))
        elif match := _CREATE_VIEW.match(text):
            view, target, body = match.groups()
            body = _FROM.sub(lambda m: "FROM " + _local(m.group(1), layout), body)
            sql = (
                f"CREATE MATERIALIZED VIEW IF NOT EXISTS {layout.qualified(view)}{layout.on_cluster}"
                f" TO {_local(target, layout)} AS{body}"
            )
            out.append(ClusterStatement(sql, True))
        elif match := _INSERT.match(text):
            target, body = match.groups()
            body = _FROM.sub(lambda m: "FROM " + layout.qualified(m.group(1)), body)
            out.append(ClusterStatement(f"INSERT INTO {layout.qualified(target)}{body}", False))
        else:
            raise ValueError(f"cluster mode cannot render this statement: {text[:80]!r}")
    return out


def _local(table: str, layout: ClusterLayout) -> str:
    return layout.qualified(table + LOCAL_SUFFIX)


def _table(text: str, match: re.Match[str], layout: ClusterLayout) -> list[ClusterStatement]:
    table = match.group(1)
    engine = _ENGINE.search(text)
    if engine is None:
        raise ValueError(f"cluster mode renders MergeTree-family tables only: {table}")
    if table not in SHARDING_KEYS:
        raise ValueError(f"table {table} has no sharding key in pipeline.warehouse.cluster.SHARDING_KEYS")
    local = (
        f"CREATE TABLE IF NOT EXISTS {_local(table, layout)}{layout.on_cluster}{match.group(2)}"
        + text[match.end() : engine.start()]
        + layout.engine(table, engine.group(1), engine.group(2))
        + text[engine.end() :]
    )
    distributed = (
        f"CREATE TABLE IF NOT EXISTS {layout.qualified(table)}{layout.on_cluster} AS {_local(table, layout)}\n"
        f"ENGINE = Distributed('{layout.name}', '{layout.database}', '{table}{LOCAL_SUFFIX}', "
        f"{SHARDING_KEYS[table]})"
    )
    return [ClusterStatement(local, True), ClusterStatement(distributed, True)]
