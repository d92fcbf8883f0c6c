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

from pipeline.brake import EXIT_CODE
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
    poisoned,
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


@pytest.fixture()
def embedded_cluster(broker: EmbeddedBroker, embedded_settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(chaos_settings(embedded_settings, broker.bootstrap_servers), tmp_path)
    try:
        yield running
    finally:
        running.shutdown()


def test_kill_minus_nine_three_times_mid_stream(cluster: Cluster) -> None:
    kill_three_times(cluster)


def test_kill_minus_nine_on_the_embedded_store(embedded_cluster: Cluster) -> None:
    """The default deployment: chDB in the worker's process, killed mid-insert as well."""
    kill_three_times(embedded_cluster)


def kill_three_times(cluster: Cluster) -> None:
    print(f"ENGAGEMENT_CHAOS_SEED={SEED}")
    rnd = random.Random(SEED)
    stream = Stream.of(as_messages(generated_events(), cluster.settings), cluster.settings)
    publishing = cluster.publish(stream.messages, seconds=55)  # outlasts the faults below (≤ ~40 s)
    cluster.start("a")
    cluster.wait_consuming("a")  # the first kill strikes mid-batch; the others anywhere in a worker's life
    for pause in [rnd.uniform(0.2, 3.0), *random_pauses(rnd, 2, 1.0, 10.0)]:
        time.sleep(pause)
        assert publishing.is_alive(), "the stream ended before the fault: publish it more slowly"
        cluster.kill("a")
        cluster.start("a")
    publishing.join()
    cluster.finish()
    assert [code for _, code in cluster.exits[:3]] == [-9, -9, -9]
    assert_exact(cluster.settings, stream)


def test_two_workers_one_killed_then_back(cluster: Cluster) -> None:
    """Its partitions move to the survivor (after the session timeout), then back (a second rebalance)."""
    print(f"ENGAGEMENT_CHAOS_SEED={SEED}")
    rnd = random.Random(SEED)
    stream = Stream.of(as_messages(generated_events(), cluster.settings), cluster.settings)
    publishing = cluster.publish(stream.messages, seconds=45)
    cluster.start("a")
    cluster.start("b")
    cluster.wait_consuming("a")
    cluster.wait_consuming("b")
    time.sleep(rnd.uniform(0.5, 4.0))
    cluster.kill("b")
    time.sleep(cluster.settings.broker_session_timeout + rnd.uniform(2.0, 6.0))  # a owns everything now
    assert publishing.is_alive(), "the stream ended before the second rebalance: publish it more slowly"
    cluster.start("b")
    publishing.join()
    cluster.finish()
    assert_exact(cluster.settings, stream)


def test_duplicate_storm(cluster: Cluster) -> None:
    """Every event published three times, each copy in a different message (well inside the lateness)."""
    events = generated_events()
    copies = sorted(
        (
            (index + shift, copy, event)
            for copy, shift in enumerate((0, 2000, 4000))
            for index, event in enumerate(events)
        ),
        key=lambda item: item[:2],
    )
    stream = Stream.of(as_messages([event for _, _, event in copies], cluster.settings), cluster.settings)
    assert len(stream.events) >= 3 * len(events) - 20_000  # nearly all copies are valid events
    publishing = cluster.publish(stream.messages, seconds=20)
    cluster.start("a")
    publishing.join()
    cluster.finish()
    assert_exact(cluster.settings, stream)


def test_poison_input(cluster: Cluster) -> None:
    """5 % of messages malformed: valid results exact, every bad element a dead letter with its reason."""
    valid = Stream.of(as_messages(generated_events(), cluster.settings), cluster.settings)
    stream = poisoned(valid, cluster.settings, share=0.05)
    malformed = len(stream.messages) - len(valid.messages)
    assert malformed >= 0.049 * len(stream.messages)
    assert len(stream.reasons()) >= 8  # every kind of dirt has its own reason(s)
    publishing = cluster.publish(stream.messages, seconds=20)
    cluster.start("a")
    publishing.join()
    cluster.finish()
    assert_exact(cluster.settings, stream)


def test_clean_restart_keeps_open_windows(cluster: Cluster) -> None:
    """SIGTERM mid-stream, then a new worker: states recover from the changelog, nothing counted twice."""
    rnd = random.Random(SEED)
    stream = Stream.of(as_messages(generated_events(), cluster.settings), cluster.settings)
    publishing = cluster.publish(stream.messages, seconds=30)
    cluster.start("a")
    cluster.wait_consuming("a")
    time.sleep(rnd.uniform(1.0, 5.0))
    assert cluster.stop("a") == 0
    assert publishing.is_alive(), "the stream ended before the restart: publish it more slowly"
    cluster.start("a")
    publishing.join()
    cluster.finish()
    assert_exact(cluster.settings, stream)


def test_dead_letter_brake_stops_a_bad_deploy_until_a_human_lets_it_through(cluster: Cluster) -> None:
    """A bad deploy upstream sends garbage mid-stream: the worker stops at the brake (twice: nothing past it
    is committed), then, with the brake disabled by an operator, dead-letters it and finishes exactly."""
    messages = as_messages(generated_events(), cluster.settings)
    likes = cluster.settings.topic("likes")
    garbage = [(likes, n % cluster.settings.partitions, b'{"event_id": "x", "oops": true}') for n in range(2500)]
    half = len(messages) // 2
    stream = Stream.of(messages[:half] + garbage + messages[half:], cluster.settings)
    assert stream.reasons() == {"missing_field": len(garbage)}
    cluster.publish(stream.messages).join()
    cluster.start("a")
    assert cluster.wait_exit("a") == EXIT_CODE
    assert "dead-letter brake tripped" in cluster.log("a").read_text()
    first_garbage = {p: sum(1 for t, q, _ in messages[:half] if (t, q) == (likes, p)) for p in range(4)}
    window = cluster.settings.dead_letter_brake_messages
    assert all((cluster.committed()[(likes, p)] or 0) <= first_garbage[p] + window for p in range(4))
    cluster.start("b")
    assert cluster.wait_exit("b") == EXIT_CODE  # it stops there again: a human must look
    assert all((cluster.committed()[(likes, p)] or 0) <= first_garbage[p] + window for p in range(4))
    cluster.start("c", dead_letter_brake_share=1.0)
    cluster.finish()
    assert_exact(cluster.settings, stream)
