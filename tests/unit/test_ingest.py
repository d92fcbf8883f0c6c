"""ingest_lines with a stand-in producer: nesting deeper than orjson writes, large events and a broker that
does not acknowledge neither stop it silently nor lose a line."""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest

from pipeline.cli import main, readable_input
from pipeline.deadletter import DeadLetter
from pipeline.decode import decode_message
from pipeline.ingest import IngestError, ingest_lines
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


def test_arrays_are_split_to_fit_the_message_bound() -> None:
    producer = Producer()
    settings = Settings(partitions=2, max_message_bytes=2000)
    lines = [orjson.dumps(like(f"e{i}", note="x" * 500)) for i in range(10)]  # ~600 bytes each, one account
    report = ingest_lines(lines, settings, producer, batch_events=10)  # type: ignore[arg-type]
    assert report.invalid == 0 and report.messages == len(producer.sent) > 1
    assert all(len(value) <= settings.max_message_bytes for _, value in producer.sent)
    ids = [e.event_id for _, value in producer.sent for e in decode_message(value, "likes")[0]]
    assert ids == [f"e{i}" for i in range(10)]  # all of them, in input order


def test_an_event_that_grows_when_re_encoded_goes_out_as_its_fields() -> None:
    producer = Producer()
    settings = Settings(partitions=2, max_message_bytes=2000)
    line = orjson.dumps(like("grows")).replace(b"}", b', "x": [' + b",".join([b"1e5"] * 400) + b"]}")
    assert len(line) <= 2000 < len(orjson.dumps(orjson.loads(line)))  # 1e5 is written back as 100000.0
    ingest_lines([line], settings, producer)  # type: ignore[arg-type]
    ((_, value),) = producer.sent
    assert len(value) <= 2000 and [e.event_id for e in decode_message(value, "likes")[0]] == ["grows"]


class Unacknowledged(Producer):
    """A broker that fails every send after the producer's retries (the future's errback)."""

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> Any:
        super().send(topic, key, value, partition)
        return self

    def add_errback(self, callback: Any) -> None:
        callback(TimeoutError("batch expired"))


def test_messages_the_broker_did_not_acknowledge_fail_the_ingest() -> None:
    lines = [orjson.dumps(like("e1")), b"not json"]
    with pytest.raises(IngestError, match=r"did not acknowledge 2 of 2 messages \(first: TimeoutError"):
        ingest_lines(lines, Settings(partitions=2), Unacknowledged())  # type: ignore[arg-type]


def test_dead_letters_of_different_inputs_under_one_name_keep_apart() -> None:
    first, _ = ingest([b'{"type": "like"}'])
    second, _ = ingest([b"not json at all"])
    again, _ = ingest([b'{"type": "like"}'])
    ids = [DeadLetter.from_json(sent[0][1]).dead_letter_id for sent in (first, second, again)]
    assert ids[0] != ids[1] and ids[0] == ids[2]  # the same input again replaces its letter, as it should
    assert ids[0].startswith("ingest:-/-1/1/-1/")


def test_ingest_of_a_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    assert main(["ingest", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing.jsonl'} is not a readable file\n"


def test_pipes_and_standard_input_are_readable_input(tmp_path: Any) -> None:
    fifo = tmp_path / "events.pipe"
    os.mkfifo(fifo)
    (tmp_path / "events.jsonl").write_bytes(b"")
    assert readable_input("-") and readable_input(str(fifo)) and readable_input(str(tmp_path / "events.jsonl"))
    assert not readable_input(str(tmp_path)) and not readable_input(str(tmp_path / "missing.jsonl"))
