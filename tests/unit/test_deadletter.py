"""Dead letters read back from the dead-letter topic: what the pipeline wrote round-trips; anything else is
refused (the worker then stores it as an unreadable dead letter) instead of reaching ClickHouse."""

from __future__ import annotations

import orjson
import pytest

from pipeline.deadletter import DeadLetter
from pipeline.events import Reason, Rejection

LETTER = DeadLetter.from_rejection(Rejection(Reason.INVALID_JSON, "bad", 2, b"{x"), "likes", 3, 40, 4096, now=1.0)


def test_a_letter_round_trips() -> None:
    assert DeadLetter.from_json(LETTER.to_json()) == LETTER


@pytest.mark.parametrize(
    "change",
    [
        {"payload_bytes": 2**64 - 1},  # a UInt32 column: one such row stopped the worker's writes
        {"source_partition": 2**31},
        {"truncated": 2},
        {"failed_at": -1},
        {"source_offset": "40"},
        {"element_index": 1.5},
        {"truncated": True},
        {"reason": None},
        {"payload": 5},
    ],
)
def test_a_letter_its_columns_cannot_hold_is_refused(change: dict[str, object]) -> None:
    raw = orjson.dumps({**orjson.loads(LETTER.to_json()), **change})
    with pytest.raises(ValueError):
        DeadLetter.from_json(raw)


@pytest.mark.parametrize("raw", [b"[]", b"null", b'{"reason": "x"}'])
def test_what_is_no_letter_is_refused(raw: bytes) -> None:
    with pytest.raises((ValueError, KeyError)):
        DeadLetter.from_json(raw)
