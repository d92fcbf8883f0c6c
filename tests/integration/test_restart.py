"""A worker stopped and started again recovers its account states from the table's changelog: windows
that were open keep their counts and re-delivered events are not counted twice."""

from __future__ import annotations

import time
import urllib.request
from dataclasses import replace

import orjson
import pytest
from kafka import KafkaProducer

from pipeline.query_client import LOCK_FILE, run_query
from pipeline.settings import Settings
from tests.integration.helpers import running_worker, wait_processed

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000


def publish(settings: Settings, first: int, last: int) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    events = [
        {"event_id": f"e{i}", "type": "like", "ts": T0 + i * 100, "actor_id": f"u{i % 7}", "account_id": "A"}
        for i in range(first, last)
    ]
    producer.send(settings.topic("likes"), key=b"A", value=orjson.dumps(events))
    producer.flush()
    producer.close()


def test_restart_recovers_state_from_the_changelog(live_settings: Settings) -> None:
    settings = live_settings
    publish(settings, 0, 50)
    with running_worker(settings):
        wait_processed(settings)
    publish(settings, 0, 60)  # 50 re-deliveries and 10 new events in the same, still open, window
    with running_worker(settings):
        wait_processed(settings)
        request = urllib.request.Request(f"http://{settings.web_host}:{settings.web_port}/admin/flush", data=b"{}")
        urllib.request.urlopen(request, timeout=60).read()
    rows = run_query(settings, "SELECT likes, engagers, final FROM engagement_windows FINAL WHERE account_id = 'A'")
    assert rows.rows == [(60, 7, 1)]
    events = run_query(settings, "SELECT count() FROM engagement_events FINAL")
    assert events.rows == [(60,)]


def test_a_worker_stopped_mid_stream_exits_cleanly_and_its_successor_counts_exactly(live_settings: Settings) -> None:
    # Small chunks: the stop comes while batches run, with a chunk's delivery in flight between them.
    settings = replace(live_settings, batch_max_events=500)
    accounts, per_message, messages = 40, 100, 300
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for m in range(messages):
        events = [
            {
                "event_id": f"e{m}-{i}",
                "type": "like",
                "ts": T0 + (m * per_message + i) * 10,
                "actor_id": f"u{i % 13}",
                "account_id": f"acct{(m + i) % accounts}",
            }
            for i in range(per_message)
        ]
        producer.send(settings.topic("likes"), value=orjson.dumps(events), partition=m % settings.partitions)
    producer.flush()
    producer.close()
    total = messages * per_message
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    with running_worker(settings) as worker:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until it has written some of the events, not all
            metrics = urllib.request.urlopen(url, timeout=10).read().decode()
            rows = 'engagement_rows_written_total{table="engagement_events"} '
            if any(line.startswith(rows) and float(line.split()[-1]) > 0 for line in metrics.splitlines()):
                break
            time.sleep(0.05)
        assert worker.poll() is None
    # stopped (SIGTERM) mid-stream: a clean exit, whatever was in flight dropped, the store released
    assert worker.returncode == 0
    assert not (settings.data_dir / LOCK_FILE).exists()
    stored = run_query(settings, "SELECT count() FROM engagement_events FINAL").rows[0][0]
    assert 0 < stored < total  # it was stopped mid-stream
    with running_worker(settings):  # its successor replays what was not acknowledged
        wait_processed(settings)
        request = urllib.request.Request(f"http://{settings.web_host}:{settings.web_port}/admin/flush", data=b"{}")
        urllib.request.urlopen(request, timeout=60).read()
    assert run_query(settings, "SELECT count() FROM engagement_events FINAL").rows == [(total,)]
    windows = "SELECT sum(likes), uniqExact(account_id) FROM engagement_windows FINAL WHERE final = 1"
    assert run_query(settings, windows).rows == [(total, accounts)]
