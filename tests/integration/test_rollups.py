"""The rollups of schemas/004_rollups.sql hold exactly what the raw events say, on both backends.

The generated report data (``report_events``: duplicates within and across blocks, self-events, Unicode and
quote-laden ids) goes in half before the rollups exist (their migration's backfill) and half after (the
materialized views); every rollup row is then compared with the same aggregate computed in Python from the
deduplicated events. Applying the rollup migration again (a file interrupted before it was recorded) and
inserting blocks twice (a retried insert) change nothing.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from pipeline.events import Event
from pipeline.report_data import report_events
from pipeline.settings import Settings
from pipeline.sink import event_columns
from pipeline.warehouse import Warehouse
from pipeline.warehouse.migrate import SCHEMAS_DIR, discover, migrate, render, statements
from tests.integration.helpers import opened_store

pytestmark = pytest.mark.integration

ROLLUPS_VERSION = 4
BLOCK = 4000
INBOUND = ("like", "reply", "mention")

HOURS = """
SELECT account_id, toUInt32(hour) AS hour_s, type, uniqExactMerge(events) AS events, uniqExactMerge(actors) AS actors
FROM engagement_account_hours
GROUP BY account_id, hour_s, type
"""
MINUTES = """
SELECT actor_id, toUInt32(minute) AS minute_s, uniqExactMerge(events) AS events, countMerge(rows) AS row_count
FROM engagement_actor_minutes
GROUP BY actor_id, minute_s
"""
TOTALS = """
SELECT actor_id, countMerge(rows) AS row_count FROM engagement_actor_totals GROUP BY actor_id
"""
OUTBOUND = """
SELECT DISTINCT event_id, type, ts_ms, toUInt32(ts) AS ts_s, actor_id, account_id, in_reply_to
FROM engagement_outbound
"""


def insert(warehouse: Warehouse, events: Sequence[Event]) -> None:
    for first in range(0, len(events), BLOCK):
        block = events[first : first + BLOCK]
        sourced = [(*event, "rollups", 0, first + i) for i, event in enumerate(block)]
        warehouse.insert("engagement_events", event_columns(sourced, ingested_ms=1))


def distinct(events: Sequence[Event]) -> list[Event]:
    return list({e.event_id: e for e in events}.values())


def expected_hours(events: Sequence[Event]) -> dict[tuple[str, int, str], tuple[int, int]]:
    ids: dict[tuple[str, int, str], set[str]] = defaultdict(set)
    actors: dict[tuple[str, int, str], set[str]] = defaultdict(set)
    for e in distinct(events):
        if e.type in INBOUND and e.actor_id != e.account_id:
            key = (e.account_id, e.ts_ms // 3_600_000 * 3600, e.type)
            ids[key].add(e.event_id)
            actors[key].add(e.actor_id)
    return {key: (len(ids[key]), len(actors[key])) for key in ids}


def expected_minutes(events: Sequence[Event]) -> dict[tuple[str, int], int]:
    ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    for e in distinct(events):
        if e.type in INBOUND and e.actor_id != e.account_id:
            ids[(e.actor_id, e.ts_ms // 60_000 * 60)].add(e.event_id)
    return {key: len(value) for key, value in ids.items()}


def expected_outbound(events: Sequence[Event]) -> set[tuple[object, ...]]:
    return {
        (e.event_id, e.type, e.ts_ms, e.ts_ms // 1000, e.actor_id, e.account_id, e.in_reply_to)
        for e in distinct(events)
        if e.type in ("reply", "mention") and e.actor_id != e.account_id
    }


def assert_rollups_equal_raw(warehouse: Warehouse, events: Sequence[Event]) -> None:
    hours = {(r[0], int(r[1]), r[2]): (int(r[3]), int(r[4])) for r in warehouse.query(HOURS).rows}
    assert hours == expected_hours(events)
    found = warehouse.query(MINUTES).rows
    minutes = {(r[0], int(r[1])): int(r[2]) for r in found}
    assert minutes == expected_minutes(events)
    assert all(int(r[3]) >= int(r[2]) for r in found)  # rows: an upper bound of the distinct events
    totals = {r[0]: int(r[1]) for r in warehouse.query(TOTALS).rows}
    per_actor: dict[str, int] = defaultdict(int)
    for (actor, _), count in minutes.items():
        per_actor[actor] += count
    assert totals.keys() == per_actor.keys()
    assert all(totals[actor] >= count for actor, count in per_actor.items())  # an upper bound too
    outbound = [(r[0], r[1], int(r[2]), int(r[3]), r[4], r[5], r[6]) for r in warehouse.query(OUTBOUND).rows]
    assert len(outbound) == len(set(outbound))  # one row per event once duplicates are set aside
    assert set(outbound) == expected_outbound(events)


def migrate_around_the_backfill(
    warehouse: Warehouse, settings: Settings, events: Sequence[Event], scratch: Path
) -> int:
    """The migrations before the rollups (copied to the new directory ``scratch``), the first half of
    ``events``, the rest of the migrations (004 backfills that half), then the second half (through the
    materialized views). Returns where the halves meet."""
    scratch.mkdir()
    for migration in discover():
        if migration.version < ROLLUPS_VERSION:
            shutil.copy(migration.path, scratch / migration.path.name)
    half = len(events) // 2
    migrate(warehouse, settings, scratch)
    insert(warehouse, events[:half])
    applied = migrate(warehouse, settings)  # the rollups, backfilled from the first half
    assert [m.version for m in applied] == [m.version for m in discover() if m.version >= ROLLUPS_VERSION]
    insert(warehouse, events[half:])  # through the materialized views
    return half


@pytest.fixture()
def warehouse(backend_settings: Settings) -> Iterator[Warehouse]:
    with opened_store(backend_settings, migrated=False) as opened:
        yield opened


def test_backfill_views_retries_and_reapplied_migration_equal_the_raw_events(
    backend_settings: Settings, warehouse: Warehouse, tmp_path: Path
) -> None:
    settings = backend_settings
    events = report_events(seed=5, bulk_events=12_000)
    half = migrate_around_the_backfill(warehouse, settings, events, tmp_path / "schemas")
    assert_rollups_equal_raw(warehouse, events)

    insert(warehouse, events[half - BLOCK // 2 : half + BLOCK // 2])  # retried inserts, across the seam
    (rollups,) = [m for m in discover(SCHEMAS_DIR) if m.version == ROLLUPS_VERSION]
    for statement in statements(render(rollups.text, settings, warehouse.server_version())):
        warehouse.execute(statement)  # the file applied again, backfill included
    assert_rollups_equal_raw(warehouse, events)
