"""Scale-out: three workers of one consumer group over 8 partitions give exactly the reference's results.

A generated stream (duplicates, disorder, stray partitions that the workers re-key to each other, drops)
is published while three worker processes share its partitions; every window, raw event, dead letter
and drop alert in ClickHouse then equals :mod:`pipeline.reference` (the oracle a single worker is held
to as well, by every other live test). Twice: on the ClickHouse 18.16 server, and on the two-shard
cluster of :mod:`tests.integration.test_cluster_live` (plain mode), where each worker writes through the
Distributed tables and every account's rows must land on one shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.settings import Settings
from tests.chaos.harness import (
    ClickHouseServer,
    Cluster,
    Stream,
    as_messages,
    assert_exact,
    chaos_settings,
    generated_events,
)
from tests.integration.test_cluster_live import CLUSTER, node, shards

pytestmark = pytest.mark.integration

__all__ = ["shards"]  # the two-shard ClickHouse cluster fixture, used here too

# ~11 minutes of event time in 10-second windows (as the fault tests), so that drop alerts fire and resolve
# before the comparison's cutoff (the allowed lateness and 5 windows before the end)
EVENTS = 50_000
EVENTS_PER_SECOND = 75
PARTITIONS = 8
WORKERS = ("a", "b", "c")


@pytest.fixture(params=["one_server", "two_shards"])
def warehouse_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The ClickHouse 18.16 server of the session, or the two-shard cluster (its first node)."""
    if request.param == "one_server":
        chosen: Settings = request.getfixturevalue("server_settings")
        return chosen
    servers: list[ClickHouseServer] = request.getfixturevalue("shards")
    return Settings.from_env(
        {},
        warehouse="server",
        clickhouse_host=servers[0].host,
        clickhouse_port=servers[0].port,
        clickhouse_database="scale_out",
        clickhouse_cluster=CLUSTER,
        clickhouse_cluster_engines="plain",
        data_dir=tmp_path / "data",
    )


@pytest.fixture()
def workers(broker: EmbeddedBroker, warehouse_settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    settings = replace(chaos_settings(warehouse_settings, broker.bootstrap_servers), partitions=PARTITIONS)
    running = Cluster(settings, tmp_path)
    try:
        yield running
    finally:
        running.shutdown()


def test_three_workers_over_eight_partitions_equal_the_reference(
    workers: Cluster, request: pytest.FixtureRequest
) -> None:
    stream = Stream.of(
        as_messages(generated_events(EVENTS, events_per_second=EVENTS_PER_SECOND), workers.settings), workers.settings
    )
    for name in WORKERS:
        workers.start(name)
    publishing = workers.publish(stream.messages, seconds=15)
    for name in WORKERS:
        workers.wait_consuming(name)  # each worker owns partitions and processes events
    consumed = {name: workers.consumed(name) for name in WORKERS}
    publishing.join()
    for name in WORKERS:  # /query reads on a read-only connection of its own, through the cluster too
        assert workers.query(name, "SELECT count() FROM engagement_events")[0][0] > 0
    workers.finish()
    assert all(consumed.values()), consumed
    assert_exact(workers.settings, stream)
    if workers.settings.clickhouse_cluster:
        servers: list[ClickHouseServer] = request.getfixturevalue("shards")
        placed = []
        for server in servers:
            local = node(workers.settings, server)
            try:
                rows = local.query("SELECT DISTINCT account_id FROM engagement_events_local").rows
                placed.append({str(r[0]) for r in rows})
            finally:
                local.close()
        assert all(placed) and not placed[0] & placed[1]  # both shards written, each account on one
