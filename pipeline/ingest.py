"""Publish JSON-lines events to their topics (by type), keyed by account, batched as JSON arrays.

Contract of :func:`ingest_lines`: every input line ends up published or dead-lettered (reason, line
number) and reported through ``on_invalid``. It returns only after the broker acknowledged every message
(``flush``), and raises :class:`IngestError` if it did not acknowledge some (the input is then partly
published: publishing it again is safe, events count once by ``event_id``). Valid events go to their
type's topic, on the partition that owns their account (Kafka's murmur2 partition of ``account_id``, the
worker's own rule), as JSON arrays of up to ``batch_events`` events of accounts of that partition and of at
most ``ENGAGEMENT_MAX_MESSAGE_BYTES`` (larger arrays are split; the worker dead-letters a larger message
whole); events of one account stay in input order.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import orjson
from kafka import KafkaProducer

from pipeline.deadletter import DeadLetter
from pipeline.decode import InvalidEvent, encode_element, load_json, validate_event
from pipeline.events import DEAD_LETTER_TOPIC, TYPE_TOPIC, Reason, Rejection
from pipeline.kafka_security import kafka_python_config
from pipeline.partitioning import partition_for
from pipeline.settings import Settings


class IngestError(Exception):
    """The broker did not acknowledge some of the messages (or dead letters) sent; the message says how many
    and the first error."""


@dataclass
class IngestReport:
    lines: int = 0
    events: int = 0
    messages: int = 0
    invalid: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def make_producer(settings: Settings) -> KafkaProducer:
    """A producer for the pipeline's topics, with the configured TLS/SASL (:mod:`pipeline.kafka_security`)."""
    return KafkaProducer(
        **kafka_python_config(settings),
        acks="all",
        linger_ms=20,
        batch_size=1 << 20,
        max_request_size=settings.max_message_bytes + 4096,
        retries=5,
    )


def _objects(line: bytes) -> tuple[list[Any] | None, Rejection | None]:
    """The JSON objects of one line (one object, or the elements of an array)."""
    value, unreadable = load_json(line)
    if unreadable is not None:
        return None, unreadable
    if isinstance(value, list):
        if not value:
            return None, Rejection(Reason.EMPTY_BATCH, "an empty JSON array carries no event", -1, line)
        return value, None
    return [value], None


def ingest_lines(
    lines: Iterable[bytes],
    settings: Settings,
    producer: KafkaProducer,
    source_name: str = "-",
    batch_events: int = 100,
    on_invalid: Callable[[int, Rejection], None] | None = None,
    on_progress: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Validate and publish ``lines`` (see the module docstring)."""
    report = IngestReport()
    started = time.monotonic()
    buffers: dict[tuple[str, int], list[Any]] = {}
    keys: dict[tuple[str, int], str] = {}
    partition_counts: dict[str, int] = {}
    buffered = 0
    dead_topic = settings.topic(DEAD_LETTER_TOPIC)
    source_topic = f"ingest:{source_name}"
    failures: list[BaseException] = []  # the first send the broker did not acknowledge
    failed = 0

    def on_failure(exc: BaseException) -> None:
        nonlocal failed
        failed += 1
        if not failures:
            failures.append(exc)

    def watch(future: Any) -> None:
        """Count a send the broker does not acknowledge (after the producer's retries)."""
        if future is not None:
            future.add_errback(on_failure)

    def send(topic: str, partition: int, account_id: str, objects: list[Any]) -> None:
        payload = _encode_batch(objects)
        if len(payload) > settings.max_message_bytes and len(objects) > 1:  # split: each half fits, or splits
            half = len(objects) // 2
            send(topic, partition, account_id, objects[:half])
            send(topic, partition, account_id, objects[half:])
            return
        if len(payload) > settings.max_message_bytes:  # one event that grew when re-encoded (1e5 -> 100000.0)
            payload = orjson.dumps(validate_event(objects[0], None).to_json_dict())  # its contract fields only
        watch(producer.send(topic, key=account_id.encode("utf-8"), value=payload, partition=partition))
        report.messages += 1
        report.by_topic[topic] = report.by_topic.get(topic, 0) + len(objects)

    def flush_buffers() -> None:
        nonlocal buffered
        for (topic, partition), objects in buffers.items():
            send(topic, partition, keys[(topic, partition)], objects)
        buffers.clear()
        buffered = 0

    def reject(line_no: int, rejection: Rejection) -> None:
        report.invalid += 1
        letter = DeadLetter.from_rejection(rejection, source_topic, -1, line_no, settings.dead_letter_payload_bytes)
        # The payload's checksum in the id: another input under the same name ("-", an edited file) does not
        # replace this letter in the table; the same input ingested again does.
        letter = replace(letter, dead_letter_id=f"{letter.dead_letter_id}/{zlib.crc32(rejection.payload):08x}")
        watch(producer.send(dead_topic, key=letter.dead_letter_id.encode("utf-8"), value=letter.to_json()))
        if on_invalid is not None:
            on_invalid(line_no, rejection)

    last_progress = 0.0
    for line_no, line in enumerate(lines, start=1):
        report.lines += 1
        line = line.strip()
        if not line:
            continue
        if len(line) > settings.max_message_bytes:
            reject(line_no, Rejection(Reason.TOO_LARGE, f"line of {len(line)} bytes", -1, line))
            continue
        objects, rejection = _objects(line)
        if rejection is not None:
            reject(line_no, rejection)
            continue
        assert objects is not None
        for index, obj in enumerate(objects):
            try:
                event = validate_event(obj, None)
            except InvalidEvent as exc:
                reject(
                    line_no,
                    Rejection(
                        exc.reason,
                        exc.detail,
                        index if len(objects) > 1 else -1,
                        encode_element(obj) if isinstance(obj, (dict, list, str, int)) else line,
                    ),
                )
                continue
            topic = settings.topic(TYPE_TOPIC[event.type])
            count = partition_counts.get(topic)
            if count is None:
                count = partition_counts[topic] = len(producer.partitions_for(topic) or ()) or settings.partitions
            key = (topic, partition_for(event.account_id.encode("utf-8"), count))
            bucket = buffers.get(key)
            if bucket is None:
                bucket = buffers[key] = []
                keys[key] = event.account_id
            bucket.append(obj)
            buffered += 1
            report.events += 1
            if len(bucket) >= batch_events:
                send(key[0], key[1], keys[key], bucket)
                del buffers[key]
                buffered -= len(bucket)
        if buffered >= 64 * batch_events:
            flush_buffers()
        if on_progress is not None and time.monotonic() - last_progress > 0.5:
            last_progress = time.monotonic()
            report.seconds = last_progress - started
            on_progress(report)
    flush_buffers()
    producer.flush()
    report.seconds = time.monotonic() - started
    if on_progress is not None:
        on_progress(report)
    if failed:
        raise IngestError(
            f"the broker did not acknowledge {failed} of {report.messages + report.invalid} messages "
            f"(first: {failures[0]!r}); the input is partly published: publish it again (events count once "
            "by event_id)"
        )
    return report


def _encode_batch(objects: list[Any]) -> bytes:
    """Valid event objects as one message: the object, or an array of them, as they came in.

    An unknown field may nest deeper than ``orjson.dumps`` writes (255 levels, where ``orjson.loads`` reads
    1024): then the batch goes out as the events' contract fields alone, which is all the worker reads.
    """
    try:
        return orjson.dumps(objects if len(objects) > 1 else objects[0])
    except orjson.JSONEncodeError:
        fields = [validate_event(obj, None).to_json_dict() for obj in objects]
        return orjson.dumps(fields if len(fields) > 1 else fields[0])


def read_lines(path: str) -> Iterator[bytes]:
    """Lines of a file, or of standard input for ``-``, as bytes."""
    if path == "-":
        yield from sys.stdin.buffer
        return
    with Path(path).open("rb") as handle:
        yield from handle


def print_progress(stream: IO[str]) -> Callable[[IngestReport], None]:
    def show(report: IngestReport) -> None:
        rate = report.events / report.seconds if report.seconds else 0.0
        stream.write(
            f"\r  {report.lines:>10,} lines  {report.events:>10,} events  {report.invalid:>6,} invalid"
            f"  {rate:>10,.0f} events/s"
        )
        stream.flush()

    return show
