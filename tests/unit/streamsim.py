"""Drive the aggregator the way the worker does, without Kafka: the shared harness of the unit tests."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from pipeline.aggregator import Aggregator, DictStore, Outcome, WindowConfig, WindowRow, response_candidate
from pipeline.events import Event


def partition_of(partitions: int):  # type: ignore[no-untyped-def]
    return lambda account_id: zlib.crc32(account_id.encode()) % partitions


def run_stream(
    events: Iterable[Event],
    config: WindowConfig,
    partitions: int = 3,
    batch: int = 7,
    advance: bool = True,
) -> tuple[dict[tuple[str, int], WindowRow], list[WindowRow], list[Outcome]]:
    """Apply ``events`` in order in batches, forwarding responses one batch later, then flush.

    Returns the latest row per key (as ReplacingMergeTree FINAL would), every row written, and outcomes.
    """
    owner = partition_of(partitions)
    agg = Aggregator(config, DictStore(), owner)
    agg.assign(set(range(partitions)))
    written: list[WindowRow] = []
    outcomes: list[Outcome] = []
    watermark: dict[int, int] = {}
    pending_forwards = []
    items = list(events)
    for i in range(0, len(items), batch):
        for cand in pending_forwards:
            outcomes.append(agg.apply_response(cand, owner(cand.responder)))
        pending_forwards = []
        for event in items[i : i + batch]:
            p = owner(event.account_id)
            outcomes.append(agg.apply_event(event, p))
            watermark[p] = max(watermark.get(p, event.ts_ms), event.ts_ms)
            candidate = response_candidate(event)
            if candidate is not None:
                pending_forwards.append(candidate)
        if advance:
            # The frontier is the minimum over partitions, as the worker takes it across topics.
            frontier = min(watermark.values()) if len(watermark) == partitions else None
            if frontier is not None:
                for p in range(partitions):
                    agg.advance(p, frontier)
        written.extend(agg.end_batch())
    for cand in pending_forwards:
        outcomes.append(agg.apply_response(cand, owner(cand.responder)))
    agg.flush()
    written.extend(agg.end_batch())
    latest: dict[tuple[str, int], WindowRow] = {}
    for row in written:
        current = latest.get(row.key())
        if current is None or row.version > current.version:
            latest[row.key()] = row
    return latest, written, outcomes
