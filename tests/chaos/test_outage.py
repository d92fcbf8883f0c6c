"""Fault test: the ClickHouse server goes down mid-stream (``kill -9``) for at least 20 s while the stream
goes on, then starts again on the same data directory and port. The worker must back off (its retries
show on ``/metrics``, never longer apart than ``ENGAGEMENT_INSERT_RETRY_MAX_SECONDS``), pause consumption
(no more events taken, no offsets committed), stay alive, resume once ClickHouse is back, and end with
every ClickHouse result equal to the reference.

The scenario runs on a ClickHouse server of its own: the session's server is shared with other tests.
"""

from __future__ import annotations

import random
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.settings import Settings
from tests.chaos.harness import (
    SEED,
    ClickHouseServer,
    Cluster,
    assert_exact,
    generated_stream,
    running_cluster,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

OUTAGE_SECONDS = 22.0  # ClickHouse is down at least this long
SETTLE_SECONDS = 4.0  # after the kill, time for the batch in progress to block and the last commits to land
RETRY_MAX_SECONDS = 3.0  # the backoff's cap in this test: reached well inside the outage


@pytest.fixture()
def clickhouse(tmp_path: Path) -> Iterator[ClickHouseServer]:
    if not Path("/usr/sbin/clickhouse-server").exists():
        pytest.fail("clickhouse-server is not installed: run `tests/services/clickhouse-server.sh install`")
    server = ClickHouseServer(tmp_path / "clickhouse")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def cluster(broker: EmbeddedBroker, clickhouse: ClickHouseServer, tmp_path: Path) -> Iterator[Cluster]:
    base = Settings.from_env(
        {},
        warehouse="server",
        clickhouse_host=clickhouse.host,
        clickhouse_port=clickhouse.port,
        clickhouse_database="outage",
        data_dir=tmp_path / "data",
        insert_retry_max_seconds=RETRY_MAX_SECONDS,
    )
    yield from running_cluster(base, broker, tmp_path)


@dataclass(frozen=True)
class Observed:
    """What a worker's ``/metrics`` and its group's committed offsets show at one moment."""

    consumed: float
    batches: float
    insert_failures: float
    committed: dict[tuple[str, int], int | None]

    @classmethod
    def of(cls, cluster: Cluster, name: str) -> Observed:
        return cls(
            cluster.consumed(name),
            cluster.metric(name, "engagement_batch_seconds_count"),
            cluster.metric(name, "engagement_clickhouse_insert_failures_total"),
            cluster.committed(),
        )


def test_clickhouse_down_for_twenty_seconds_mid_stream(cluster: Cluster, clickhouse: ClickHouseServer) -> None:
    print(f"ENGAGEMENT_CHAOS_SEED={SEED}")
    rnd = random.Random(SEED)
    stream = generated_stream(cluster)
    publishing = cluster.publish(stream.messages, seconds=40)
    cluster.start("a")
    cluster.wait_consuming("a")
    time.sleep(rnd.uniform(0.3, 2.5))  # the outage strikes anywhere in a batch's life: decode, insert, commit

    batches = cluster.metric("a", "engagement_batch_seconds_count")
    assert clickhouse.kill() == -signal.SIGKILL
    killed_at = time.monotonic()
    time.sleep(SETTLE_SECONDS)
    cluster.check_alive()
    paused = Observed.of(cluster, "a")
    while time.monotonic() - killed_at < OUTAGE_SECONDS:  # the stream goes on meanwhile
        cluster.check_alive()
        time.sleep(0.5)
    end = Observed.of(cluster, "a")
    assert publishing.is_alive(), "the stream ended during the outage: publish it more slowly"
    cluster.check_alive()
    # Consumption paused: at most the batches already taken went through, nothing more was consumed or
    # committed, and the inserts kept being retried all along.
    assert end.batches - batches <= 2, (batches, end)
    assert end.consumed == paused.consumed, (paused, end)
    assert end.committed == paused.committed
    assert 0 < paused.insert_failures < end.insert_failures, (paused, end)

    clickhouse.start()
    restarted_at = time.monotonic()
    while cluster.consumed("a") == end.consumed:
        cluster.check_alive()
        assert time.monotonic() - restarted_at < RETRY_MAX_SECONDS + 10, "consumption did not resume"
        time.sleep(0.1)
    resumed_after = time.monotonic() - restarted_at
    print(
        f"ClickHouse down {restarted_at - killed_at:.1f}s: {end.batches - batches:.0f} batches done meanwhile, "
        f"{end.insert_failures:.0f} failed inserts; consumption resumed {resumed_after:.1f}s after it was back"
    )

    publishing.join()
    cluster.finish()
    assert cluster.exits == [("a", 0)]  # never exited during the outage; a clean stop at the end
    # The backoff doubled up to its cap and never waited longer (the log line of every failed insert).
    waits = [float(s) for s in re.findall(r"retrying in ([0-9.]+)s", cluster.log("a").read_text())]
    assert waits and max(waits) == RETRY_MAX_SECONDS, waits
    assert_exact(cluster.settings, stream)
