"""Dead letters: the one record every bad input becomes, on the dead-letter topic and in ClickHouse.

The record is JSON, created once (with its ``failed_at``) where the input was rejected; the worker's
dead-letter agent copies it verbatim into ``engagement_dead_letters``, so retries write identical rows.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

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
        """A dead letter as :meth:`to_json` wrote it. Raises ``ValueError`` (or ``KeyError``) for anything
        else: a field missing, of another type, or an integer its column cannot hold (the dead-letter
        topic is read by the worker, and one row ClickHouse refuses would stop its writes for good)."""
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a dead letter is a JSON object")
        values = {name: data[name] for name in cls.__slots__}
        for name, value in values.items():
            bounds = _INT_COLUMNS.get(name)
            if bounds is None:
                if value.__class__ is not str:
                    raise ValueError(f"{name} must be a string")
            elif value.__class__ is not int or not bounds[0] <= value <= bounds[1]:
                raise ValueError(f"{name} must be an integer in {bounds[0]}..{bounds[1]}")
        return cls(**values)


# The integer fields and the range of their columns (schemas/003_engagement_dead_letters.sql); failed_at is
# a DateTime (seconds, 1970..2106).
_INT_COLUMNS = {
    "source_partition": (-(2**31), 2**31 - 1),
    "source_offset": (-(2**63), 2**63 - 1),
    "element_index": (-(2**31), 2**31 - 1),
    "payload_bytes": (0, 2**32 - 1),
    "truncated": (0, 1),
    "failed_at": (0, 2**32 - 1),
}


def payload_preview(raw: bytes, limit: int = 80) -> str:
    """A short printable rendering of a payload for terminal reports."""
    text = raw[:limit].decode("utf-8", "replace")
    if not text.isprintable():
        return "base64:" + base64.b64encode(raw[:limit]).decode()
    return text
