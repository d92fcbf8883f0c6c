"""ingest_lines with a stand-in producer: nesting deeper than orjson writes neither stops nor loses a line."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.deadletter import DeadLetter
from pipeline.decode import decode_message
from pipeline.ingest import ingest_lines
from pipeline.settings import Settings


class Producer:
    """Keeps what is sent; every topic has two partitions."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.sent.append((topic, value))

    def flush(self) -> None:
        pass

    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}


def ingest(lines: list[bytes]) -> tuple[list[tuple[str, bytes]], int]:
    producer = Producer()
    report = ingest_lines(lines, Settings(partitions=2), producer, batch_events=10)  # type: ignore[arg-type]
    return producer.sent, report.invalid


def like(eid: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": eid, "type": "like", "ts": 1767225600000, "actor_id": "u", "account_id": "a", **extra}


@pytest.mark.parametrize("depth", [300, 1000])
def test_rejected_lines_nested_deeper_than_orjson_writes(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    sent, invalid = ingest([b"[" + nested + b"]", b'{"type": "like", "ts": ' + nested + b"}"])
    assert invalid == 2
    assert [DeadLetter.from_json(value).reason for _, value in sent] == ["not_an_object", "missing_field"]


def test_valid_event_with_a_deep_unknown_field_is_published() -> None:
    """orjson reads it (under 1024 levels) but cannot write it back (over 255): its fields are sent."""
    deep = orjson.dumps(like("deep", extra="__X__")).replace(b'"__X__"', b"[" * 300 + b"]" * 300)
    sent, invalid = ingest([deep, orjson.dumps(like("plain", ts="2026-01-01T00:00:00Z"))])
    assert invalid == 0 and [topic for topic, _ in sent] == ["likes"]
    events, rejections = decode_message(sent[0][1], "likes")
    assert rejections == [] and [e.event_id for e in events] == ["deep", "plain"]
