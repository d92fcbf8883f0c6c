"""A worker stopped and started again recovers its account states from the table's changelog: windows
that were open keep their counts and re-delivered events are not counted twice."""

from __future__ import annotations

import urllib.request

import orjson
import pytest
from kafka import KafkaProducer

from pipeline.query_client import run_query
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
