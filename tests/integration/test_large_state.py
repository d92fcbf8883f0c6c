"""An account whose state outgrows Kafka's record limit (1 MiB by default) is stored in chunks on the real
broker, its next window in a window record, and its 12,000 conversations in segment records; a restarted
worker recovers it whole from the changelog: re-delivered events do not count twice, and a reply matches
a conversation that only a segment held. (The embedded broker takes records of any size, unlike Kafka: so
the test checks that no record of the changelog is larger than a chunk.)"""

from __future__ import annotations

import urllib.request

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.account_state import SEGMENT_SIZE
from pipeline.query_client import run_query
from pipeline.settings import Settings
from pipeline.state_records import CHUNK_BYTES, SEGMENT_INDEX, is_chunk_key, parse_chunk_key
from pipeline.worker import ACCOUNT_STATE_TABLE
from tests.integration.helpers import running_worker, wait_processed

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000
MENTIONS = 12_000  # ids of 100 characters, kept twice (window ids, conversations): ~2.6 MB in all
PAD = "m" * 94
LATER = 100  # mentions in the next window: a window record of their own


def mention(i: int) -> dict[str, object]:
    return {"event_id": f"{i:05d}-{PAD}", "type": "mention", "ts": T0 + i, "actor_id": f"fan{i}", "account_id": "A"}


def publish(settings: Settings, topic: str, events: list[dict[str, object]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_request_size=4 * 1024 * 1024)
    for first in range(0, len(events), 1000):
        producer.send(settings.topic(topic), key=b"A", value=orjson.dumps(events[first : first + 1000]))
    producer.flush()
    producer.close()


def changelog_records(settings: Settings) -> list[tuple[bytes, bytes | None]]:
    topic = f"{settings.app_id}-{ACCOUNT_STATE_TABLE}-changelog"
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(partitions)
    records: list[tuple[bytes, bytes | None]] = []
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        for batch in consumer.poll(timeout_ms=1000).values():
            records += [(r.key, r.value) for r in batch]
    consumer.close()
    return records


def test_a_state_over_the_record_limit_is_stored_in_chunks_and_recovered_whole(live_settings: Settings) -> None:
    settings = live_settings
    mentions = [mention(i) for i in range(MENTIONS)]
    later = [{**mention(MENTIONS + i), "ts": T0 + 60_000 + i} for i in range(LATER)]  # the next window
    publish(settings, "mentions", mentions + later)
    with running_worker(settings):
        wait_processed(settings)
    records = changelog_records(settings)
    stored = [(parse_chunk_key(key)[1], value) for key, value in records if is_chunk_key(key) and value is not None]
    segments = [value for index, value in stored if index == SEGMENT_INDEX]
    chunks = [value for index, value in stored if index != SEGMENT_INDEX]
    assert len(segments) >= MENTIONS // SEGMENT_SIZE  # the conversations, in segments of their own
    assert len(chunks) >= 2, [len(v or b"") for _, v in records]  # the open window's ids: a state of ~1.3 MB
    assert max(len(v or b"") for _, v in records) <= CHUNK_BYTES  # no record near the broker's limit
    windows = [orjson.loads(value) for value in segments if value[:1] == b"["]  # window records, in order
    assert [len(w[8]) for w in windows if w[0] == T0 + 60_000][-1:] == [LATER]  # the next window's, whole

    # After the restart: the first 1,000 mentions and 50 of the later ones again (replayed, not counted),
    # and A answers the first one.
    reply = {
        "event_id": "answer",
        "type": "reply",
        "ts": T0 + 30_000,
        "actor_id": "A",
        "account_id": "fan0",
        "in_reply_to": mentions[0]["event_id"],
    }
    publish(settings, "mentions", mentions[:1000] + later[:50])
    publish(settings, "replies", [reply])
    with running_worker(settings):
        wait_processed(settings)
        request = urllib.request.Request(f"http://{settings.web_host}:{settings.web_port}/admin/flush", data=b"{}")
        urllib.request.urlopen(request, timeout=60).read()
    rows = run_query(
        settings,
        "SELECT sum(mentions), sum(responses), min(final) FROM engagement_windows FINAL WHERE account_id = 'A'",
    )
    assert rows.rows == [(MENTIONS + LATER, 1, 1)]
