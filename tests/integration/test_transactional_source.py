"""Source topics written by a transactional producer: each commit marker takes an offset no record has. The
worker passes those offsets over (it stalled on them, re-reading the hole forever), counts every committed
event exactly once, commits to the end of each partition, past the last marker, and does not take that
marker for a record still unread (which held event time back: windows never became final)."""

from __future__ import annotations

import re
import time
import urllib.request

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.query_client import run_query
from pipeline.settings import Settings
from tests.integration.helpers import running_worker, wait_processed

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000
TRANSACTIONS = 12
PER_TRANSACTION = 5


def like(n: int) -> bytes:
    event = {"event_id": f"e{n}", "type": "like", "ts": T0 + n, "actor_id": f"u{n % 13}", "account_id": f"a{n % 3}"}
    return orjson.dumps(event)


def publish_in_transactions(settings: Settings) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, transactional_id="upstream-app")
    producer.init_transactions()
    n = 0
    for _ in range(TRANSACTIONS):
        producer.begin_transaction()
        for _ in range(PER_TRANSACTION):
            producer.send(settings.topic("likes"), value=like(n), partition=n % settings.partitions)
            n += 1
        producer.commit_transaction()
    producer.begin_transaction()  # never committed: not input
    producer.send(settings.topic("likes"), value=like(10_000), partition=0)
    producer.abort_transaction()
    producer.close()


def publish_clock(settings: Settings, ts: int) -> None:
    """A mention at ``ts`` on every partition of ``mentions``, written without a transaction."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for partition in range(settings.partitions):
        event = {"event_id": f"clock{partition}", "type": "mention", "ts": ts, "actor_id": "u", "account_id": "a0"}
        producer.send(settings.topic("mentions"), value=orjson.dumps(event), partition=partition)
    producer.flush()
    producer.close()


def test_a_transactional_source_is_read_past_its_markers_and_committed_to_the_end(live_settings: Settings) -> None:
    settings = live_settings
    publish_in_transactions(settings)
    likes = [TopicPartition(settings.topic("likes"), p) for p in range(settings.partitions)]
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    ends = consumer.end_offsets(likes)
    consumer.close()
    records = TRANSACTIONS * PER_TRANSACTION
    assert sum(ends.values()) > records  # markers take offsets of their own
    with running_worker(settings):
        wait_processed(settings, timeout=60)  # the group committed every partition to its end
        base = f"http://{settings.web_host}:{settings.web_port}"
        scraped = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        # Ten minutes later on another topic: the likes, read to their last marker, hold time back no more,
        # so their windows become final without a flush.
        publish_clock(settings, T0 + 600_000)
        deadline = time.monotonic() + 60
        final = None
        while time.monotonic() < deadline:
            final = run_query(settings, "SELECT sum(likes) FROM engagement_windows FINAL WHERE final = 1").rows
            if final == [(records,)]:
                break
            time.sleep(0.5)
        assert final == [(records,)]
    passed = re.search(r'engagement_offsets_without_records_total\{topic="[^"]*likes"\} (\S+)', scraped)
    assert passed is not None and float(passed.group(1)) >= sum(ends.values()) - records  # a re-read counts again
    events = run_query(settings, "SELECT count(), uniqExact(event_id) FROM engagement_events FINAL WHERE type = 'like'")
    assert events.rows == [(records, records)]
