"""Engagement drops through a real worker: an account goes silent, the alert fires without its next event,
lands in ClickHouse and on the alerts topic, shows on /metrics, and resolves when the account returns."""

from __future__ import annotations

import urllib.request
from dataclasses import replace

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from pipeline.events import ALERTS_TOPIC
from pipeline.partitioning import account_partitioner
from pipeline.query_client import run_query
from pipeline.settings import Settings
from tests.integration.helpers import running_worker, wait_processed

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
W = 60_000


def likes(account: str, window: int, count: int) -> list[dict[str, object]]:
    return [
        {"event_id": f"{account}-{window}-{i}", "type": "like", "ts": T0 + window * W + i * 1000,
         "actor_id": f"u{i}", "account_id": account}
        for i in range(count)
    ]  # fmt: skip


def test_silence_fires_and_a_return_resolves(live_settings: Settings) -> None:
    owner = account_partitioner(live_settings.partitions)
    quiet, steady = [f"acct-{i}" for i in range(100) if owner(f"acct-{i}") == 0][:2]  # one partition
    settings = replace(
        live_settings,
        allowed_lateness_seconds=0,
        drop_warmup_windows=3,
        drop_half_life_windows=2.0,
        drop_min_baseline=1.0,
        drop_windows=2,
        drop_watch=f"{quiet},{steady}",
    )
    # quiet: 10 likes in windows 0-5, nothing in 6-12, 10 again in 13; steady: 10 in every window 0-15,
    # which moves event time (the frontier) on their partition. First up to window 10: quiet's silence
    # must fire before it has a next event.
    first = [e for w in range(11) for e in likes(steady, w, 10)] + [e for w in range(6) for e in likes(quiet, w, 10)]
    then = [e for w in range(11, 16) for e in likes(steady, w, 10)] + likes(quiet, 13, 10)
    alerts = "SELECT account_id, toUInt32(window_start) AS s, state, reason, observed, baseline, windows_below "
    alerts += "FROM engagement_alerts FINAL ORDER BY account_id, s, state"

    with running_worker(settings):
        produce(settings, first)
        wait_processed(settings)
        silent = run_query(settings, alerts).rows
        produce(settings, then)
        wait_processed(settings)
        rows = run_query(settings, alerts).rows
        with urllib.request.urlopen(f"http://{settings.web_host}:{settings.web_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()

    assert [(a, (s * 1000 - T0) // W, state, reason) for a, s, state, reason, *_ in silent] == [
        (quiet, 7, "firing", "silence")
    ]
    # windows 6 and 7 silent: firing at 7; window 13 back at 10 likes: resolved
    assert [(a, (s * 1000 - T0) // W, state, reason) for a, s, state, reason, *_ in rows] == [
        (quiet, 7, "firing", "silence"),
        (quiet, 13, "resolved", "recovered"),
    ]
    firing = rows[0]
    assert (firing[4], firing[5], firing[6]) == (0.0, 10.0, 2)
    assert 'engagement_alerts_fired_total{reason="silence"} 1.0' in metrics
    assert "engagement_alerts_resolved_total 1.0" in metrics
    assert "engagement_accounts_in_drop 0.0" in metrics
    assert f'engagement_watched_account_in_drop{{account="{quiet}"}} 0.0' in metrics
    assert f'engagement_watched_account_baseline{{account="{steady}"}} 10.0' in metrics

    consumer = KafkaConsumer(
        settings.topic(ALERTS_TOPIC),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    messages = [orjson.loads(m.value) for m in consumer]
    consumer.close()
    assert [(m["account_id"], m["state"], (m["window_start"] - T0) // W) for m in messages] == [
        (quiet, "firing", 7),
        (quiet, "resolved", 13),
    ]
    assert {m["alert_id"] for m in messages} == {str(r) for r in run_ids(settings)}


def produce(settings: Settings, events: list[dict[str, object]]) -> None:
    """``events`` in event-time order, 20 per message, all on partition 0 of the likes topic."""
    events = sorted(events, key=lambda e: int(str(e["ts"])))
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for first in range(0, len(events), 20):
        producer.send(settings.topic("likes"), value=orjson.dumps(events[first : first + 20]), partition=0, key=b"k")
    producer.flush()
    producer.close()


def run_ids(settings: Settings) -> list[str]:
    return [str(r[0]) for r in run_query(settings, "SELECT alert_id FROM engagement_alerts FINAL").rows]
