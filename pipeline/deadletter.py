"""Dead letters: the one record every bad input becomes, on the dead-letter topic and in ClickHouse.

The record is JSON, created once (with its ``failed_at``) where the input was rejected; the worker's
dead-letter agent copies it verbatim into ``engagement_dead_letters``, so retries write identical rows.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.events import Rejection


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected input and where it came from. ``payload`` is truncated text (invalid UTF-8 replaced)."""

    dead_letter_id: str
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    element_index: int
    payload: str
    payload_bytes: int
    truncated: int
    failed_at: int  # epoch seconds

    @property
    def rejected_before_kafka(self) -> bool:
        """Whether a producer-side tool (``engagement ingest``: partition -1, the line number as offset)
        rejected the input before any worker read it. Such letters reach the metric only when a worker
        consumes them from the dead-letter topic; a worker counts its own rejections as it makes them."""
        return self.source_partition < 0

    @classmethod
    def from_rejection(
        cls,
        rejection: Rejection,
        topic: str,
        partition: int,
        offset: int,
        payload_limit: int,
        now: float | None = None,
    ) -> DeadLetter:
        raw = rejection.payload
        cut = raw[:payload_limit]
        return cls(
            dead_letter_id=f"{topic}/{partition}/{offset}/{rejection.index}",
            reason=rejection.reason.value,
            detail=rejection.detail[:500],
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            element_index=rejection.index,
            payload=cut.decode("utf-8", "replace"),
            payload_bytes=len(raw),
            truncated=int(len(raw) > payload_limit),
            failed_at=int(time.time() if now is None else now),
        )

    def to_json(self) -> bytes:
        return orjson.dumps({name: getattr(self, name) for name in self.__slots__})

    @classmethod
    def from_json(cls, raw: bytes) -> DeadLetter:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(**{name: data[name] for name in cls.__slots__})


def payload_preview(raw: bytes, limit: int = 80) -> str:
    """A short printable rendering of a payload for terminal reports."""
    text = raw[:limit].decode("utf-8", "replace")
    if not text.isprintable():
        return "base64:" + base64.b64encode(raw[:limit]).decode()
    return text
