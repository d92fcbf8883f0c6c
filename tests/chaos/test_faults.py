"""Fault tests (``make chaos``; also part of ``make test``): each publishes a generated stream of
``ENGAGEMENT_CHAOS_EVENTS`` (100,000) events while real workers process it on the embedded broker and the
ClickHouse 18.16 server, injects its fault, and ends with every ClickHouse result equal to the reference.
The random moments come from ``ENGAGEMENT_CHAOS_SEED`` (printed on failure)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.settings import Settings
from tests.chaos.harness import (
    SEED,
    Cluster,
    Stream,
    as_messages,
    assert_exact,
    chaos_settings,
    generated_events,
    random_pauses,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@pytest.fixture()
def cluster(broker: EmbeddedBroker, server_settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(chaos_settings(server_settings, broker.bootstrap_servers), tmp_path)
    try:
        yield running
    finally:
        running.shutdown()


def test_kill_minus_nine_three_times_mid_stream(cluster: Cluster) -> None:
    print(f"ENGAGEMENT_CHAOS_SEED={SEED}")
    rnd = random.Random(SEED)
    stream = Stream.of(as_messages(generated_events(), cluster.settings), cluster.settings)
    publishing = cluster.publish(stream.messages, seconds=50)
    cluster.start("a")
    cluster.wait_consuming("a")  # the first kill strikes mid-batch; the others anywhere in a worker's life
    for pause in [rnd.uniform(0.2, 3.0), *random_pauses(rnd, 2, 1.0, 15.0)]:
        time.sleep(pause)
        assert publishing.is_alive(), "the stream ended before the fault: publish it more slowly"
        cluster.kill("a")
        cluster.start("a")
    publishing.join()
    cluster.finish()
    assert [code for _, code in cluster.exits[:3]] == [-9, -9, -9]
    assert_exact(cluster.settings, stream)
