"""Topic creation and offset inspection with kafka-python (ingest tools, replay, tests)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.events import ALERTS_TOPIC, DEAD_LETTER_TOPIC, REKEY_TOPIC, SOURCE_TOPICS
from pipeline.kafka_security import check_credentials, kafka_python_config
from pipeline.settings import Settings


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answered at the configured bootstrap servers within the timeout."""


def consumed_topics(settings: Settings) -> list[str]:
    """The topics the workers' consumer group reads (source topics, re-key topic, dead letters): the ones
    whose lag says whether everything produced was processed."""
    names = [settings.topic(t) for t in SOURCE_TOPICS]
    return [*names, settings.topic(REKEY_TOPIC), settings.topic(DEAD_LETTER_TOPIC)]


def pipeline_topics(settings: Settings) -> list[str]:
    """Every topic the pipeline reads or writes: :func:`consumed_topics` and the alerts it produces."""
    return [*consumed_topics(settings), settings.topic(ALERTS_TOPIC)]


def admin_client(settings: Settings, timeout: float = 30.0) -> KafkaAdminClient:
    """An admin client, retrying until a broker answers or ``timeout`` passes (then BrokerUnavailable).

    The configured TLS/SASL credentials are checked first: a refused login raises
    :class:`~pipeline.kafka_security.KafkaAuthError` at once instead of a retry until the timeout.
    """
    check_credentials(settings)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return KafkaAdminClient(**kafka_python_config(settings), request_timeout_ms=10_000)
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"no Kafka broker at {settings.bootstrap_servers}: {exc}") from exc
            time.sleep(0.25)


def ensure_topics(settings: Settings, names: Iterable[str] | None = None) -> None:
    """Create missing pipeline topics with ``settings.partitions`` partitions; existing ones are kept.

    Raises ValueError if an existing source topic has another partition count (co-partitioning breaks).
    """
    wanted = list(names) if names is not None else pipeline_topics(settings)
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(n, settings.partitions, settings.replication_factor) for n in missing])
    finally:
        admin.close()
    counts = partition_counts(settings, wanted)
    wrong = {n: c for n, c in counts.items() if c != settings.partitions}
    if wrong:
        raise ValueError(
            f"topics {wrong} do not have ENGAGEMENT_PARTITIONS={settings.partitions} partitions; "
            "all pipeline topics must be co-partitioned"
        )


def partition_counts(settings: Settings, names: Iterable[str]) -> dict[str, int]:
    consumer = KafkaConsumer(**kafka_python_config(settings))
    try:
        out: dict[str, int] = {}
        for name in names:
            deadline = time.monotonic() + 10
            parts = consumer.partitions_for_topic(name)
            while not parts and time.monotonic() < deadline:
                time.sleep(0.1)
                parts = consumer.partitions_for_topic(name)
            out[name] = len(parts or ())
        return out
    finally:
        consumer.close()


def group_lag(settings: Settings, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """Messages not yet committed by the worker's consumer group, per partition (0 = fully processed)."""
    consumer = KafkaConsumer(**kafka_python_config(settings), group_id=settings.app_id, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = end_offsets(consumer, tps)
        lag: dict[TopicPartition, int] = {}
        for tp in tps:
            committed = consumer.committed(tp) or 0
            lag[tp] = max(0, ends[tp] - committed)
        return lag
    finally:
        consumer.close()


def end_offsets(consumer: KafkaConsumer, tps: list[TopicPartition], timeout: float = 10.0) -> dict[TopicPartition, int]:
    """The offset after the last message of each partition (assigns ``tps`` to ``consumer``).

    The listed end offsets are checked against the high watermark of a fetch: the embedded broker
    (tansu 0.6) lists a partition's end as its last record batch's base offset + 1, short of the end
    when that batch holds several records; its fetch responses carry the right high watermark.
    """
    listed: dict[TopicPartition, int] = consumer.end_offsets(tps)
    if not tps:
        return listed
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(0, listed[tp] - 1))
    fetched: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + timeout
    while len(fetched) < len(tps) and time.monotonic() < deadline:
        consumer.poll(timeout_ms=100)
        for tp in tps:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                fetched[tp] = highwater
    return {tp: max(listed[tp], fetched.get(tp, 0)) for tp in tps}
