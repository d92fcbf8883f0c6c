"""A bad deploy upstream: a real worker stops at the dead-letter brake instead of dead-lettering the topic,
commits nothing past it, and a worker started later stops there again."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import replace

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.brake import EXIT_CODE
from pipeline.partitioning import account_partitioner
from pipeline.processes import spawn, stop
from pipeline.query_client import run_query
from pipeline.replay import worker_command
from pipeline.settings import Settings
from tests.integration.helpers import running_worker, wait_processed

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000
GOOD, GARBAGE, WINDOW = 50, 200, 20


def publish(settings: Settings, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for value in values:
        producer.send(settings.topic("likes"), key=b"k", value=value, partition=0)
    producer.flush()
    producer.close()


def committed_likes_0(settings: Settings) -> int:
    """The offset the worker's group committed on likes/0 (where a new worker starts)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=settings.app_id, enable_auto_commit=False
    )
    try:
        tp = TopicPartition(settings.topic("likes"), 0)
        return int(consumer.committed(tp) or 0)
    finally:
        consumer.close()


def dead_letters_produced(settings: Settings) -> int:
    """Records on the dead-letter topic, counted by reading it (the embedded broker's end offsets count a
    multi-record batch as one)."""
    consumer = KafkaConsumer(
        settings.topic("engagement-dead-letters"),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=2000,
    )
    try:
        return sum(1 for _ in consumer)
    finally:
        consumer.close()


def healthz_refusal(base: str, deadline: float) -> tuple[int, str]:
    """The status code and ``status`` of the first /healthz answer that is not 200, polled until
    ``deadline`` (monotonic); (200, "ok") if none came."""
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
                answer = (response.status, orjson.loads(response.read())["status"])
        except urllib.error.HTTPError as refused:
            return refused.code, orjson.loads(refused.read())["status"]
        if time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def test_bad_deploy_trips_the_brake_and_nothing_past_it_is_committed(live_settings: Settings) -> None:
    settings = replace(live_settings, dead_letter_brake_share=0.5, dead_letter_brake_messages=WINDOW)
    settings = replace(settings, dead_letter_brake_linger_seconds=4)
    owner = account_partitioner(settings.partitions)
    account = next(f"acct-{i}" for i in range(100) if owner(f"acct-{i}") == 0)
    good = [
        orjson.dumps({"event_id": f"e{i}", "type": "like", "ts": T0 + i, "actor_id": f"u{i}", "account_id": account})
        for i in range(GOOD)
    ]
    # the bad deploy: half unreadable, half missing fields
    garbage = [b"{broken" if i % 2 == 0 else orjson.dumps({"type": "like"}) for i in range(GARBAGE)]

    with running_worker(settings) as worker:
        publish(settings, good)
        wait_processed(settings)
        base = f"http://{settings.web_host}:{settings.web_port}"
        scraped = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "engagement_dead_letter_brake_invalid_share 0.0" in scraped
        publish(settings, garbage)
        # Tripped, the worker lingers with /metrics up (nothing consumed or committed), so the trip is scraped.
        deadline = time.monotonic() + 60
        while "engagement_dead_letter_brake_trips_total 1.0" not in scraped:
            assert worker.poll() is None, "the worker exited before a scrape saw the trip"
            assert time.monotonic() < deadline, "the brake never tripped"
            time.sleep(0.2)
            scraped = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        tripped_at = time.monotonic()
        # Lingering, it is not healthy: /healthz answers 503 (a readiness probe takes the pod out).
        assert healthz_refusal(base, deadline=tripped_at + 2) == (503, "halted")
        code = worker.wait(timeout=60)
        assert time.monotonic() - tripped_at >= 2  # it lingered (4 s from the trip, a scrape within 0.2 s of it)
    assert code == EXIT_CODE

    # The window of 20 held the last good messages: the 11th bad one (offset 60) takes it over half.
    log = (settings.data_dir.parent / "worker.log").read_text(errors="replace")
    assert "dead-letter brake tripped: 11 of the last 20 source messages (55.0%) were invalid" in log
    assert "more than the allowed 50.0%; at likes partition 0 offset 60;" in log
    assert "most common reasons: invalid_json (6), missing_field (5)" in log
    assert "ENGAGEMENT_DEAD_LETTER_BRAKE_SHARE (now 0.5; 1 disables the brake)" in log
    # Garbage of batches before the tripping one may have been dead-lettered and committed (at most the
    # 10 before offset 60); the tripping batch was not, nor anything after it.
    committed = committed_likes_0(settings)
    assert GOOD <= committed <= 60
    assert committed - GOOD <= dead_letters_produced(settings) <= 10

    # Another worker reads the same garbage from the committed offset, with an empty window: it stops
    # after a full window of it.
    again = spawn(worker_command(), env=settings.to_env(), log_path=settings.data_dir.parent / "worker-again.log")
    try:
        assert again.wait(timeout=60) == EXIT_CODE
    finally:
        stop(again)
    log = (settings.data_dir.parent / "worker-again.log").read_text(errors="replace")
    assert "20 of the last 20 source messages (100.0%) were invalid" in log
    assert f"at likes partition 0 offset {committed + WINDOW - 1};" in log
    assert committed_likes_0(settings) == committed
    assert run_query(settings, "SELECT count() FROM engagement_events FINAL").rows == [(GOOD,)]
