"""The account report's SQL equals the pure-Python oracle on the generated multi-week data, on both backends.

``report_events(seed=11)`` (every edge case of issue 5 mixed into ~38,000 bulk events, duplicates included)
goes into a fresh store in its arrival order, as the sink writes raw events; then every scenario account and
the busiest bulk accounts get the same report from :func:`pipeline.report.account_report` (ClickHouse) and
:func:`pipeline.report_reference.reference_report`, for two periods.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import fields, replace
from typing import Any

import pytest

from pipeline.events import Event
from pipeline.report import Weights, account_report
from pipeline.report_data import SCENARIO_ACCOUNTS, report_as_of, report_events
from pipeline.report_model import DAY_MS, AccountReport
from pipeline.report_reference import ReferenceStore, reference_report, store
from pipeline.settings import Settings
from pipeline.sink import event_columns
from pipeline.warehouse import Warehouse
from tests.integration.helpers import opened_store

pytestmark = pytest.mark.integration

SEED = 11
BURST_THRESHOLD = 30
WEIGHTS = Weights(1, 2, 3)
BUSIEST = 15
BLOCK = 5000  # the sink writes blocks; duplicates land in the same block and in different ones
T = report_as_of()
PERIODS = [(T, 28), (T - 3 * DAY_MS, 7)]


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return report_events(seed=SEED, burst_threshold=BURST_THRESHOLD)


@pytest.fixture(scope="module")
def reference(events: list[Event]) -> ReferenceStore:
    return store(events)


def busiest_bulk_accounts(data: ReferenceStore, count: int) -> list[str]:
    """The ``count`` accounts with the most (deduplicated) events addressed to them, scenarios aside."""
    per_account = Counter(e.account_id for e in data.by_id.values() if e.account_id not in SCENARIO_ACCOUNTS)
    return [account for account, _ in sorted(per_account.items(), key=lambda kv: (-kv[1], kv[0]))[:count]]


def insert(warehouse: Warehouse, events: Sequence[Event]) -> None:
    """The events in the sink's column layout (``event + (topic, partition, offset)``), in order, in blocks."""
    for first in range(0, len(events), BLOCK):
        block = events[first : first + BLOCK]
        sourced = [(*event, "report", 0, first + i) for i, event in enumerate(block)]
        warehouse.insert("engagement_events", event_columns(sourced, ingested_ms=1))


@pytest.fixture()
def warehouse(backend_settings: Settings, events: list[Event]) -> Iterator[Warehouse]:
    """A fresh, migrated store of each backend holding ``events``."""
    with opened_store(backend_settings) as opened:
        insert(opened, events)
        yield opened


def differences(sql: AccountReport, expected: AccountReport) -> list[str]:
    """Every field where the two reports differ: integers and strings exactly, floats to rel=1e-12."""
    out: list[str] = []
    for f in fields(AccountReport):
        got, want = getattr(sql, f.name), getattr(expected, f.name)
        if not _same(got, want):
            out.append(f"{f.name}: sql={got!r} reference={want!r}")
    return out


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and not isinstance(got, bool) and isinstance(got, (int, float)):
        return bool(got == pytest.approx(want, rel=1e-12))
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    if hasattr(want, "__dataclass_fields__") and type(got) is type(want):
        return all(_same(getattr(got, n), getattr(want, n)) for n in want.__dataclass_fields__)
    return type(got) is type(want) and bool(got == want)


def test_sql_report_equals_the_reference(warehouse: Warehouse, reference: ReferenceStore) -> None:
    accounts = [*SCENARIO_ACCOUNTS, *busiest_bulk_accounts(reference, BUSIEST)]
    # the default as_of first: the store's newest event + 1 ms, which the data puts at report_as_of()
    default = account_report(warehouse, SCENARIO_ACCOUNTS[0], burst_threshold=BURST_THRESHOLD, weights=WEIGHTS)
    assert default.as_of == T == reference_report(reference, SCENARIO_ACCOUNTS[0]).as_of
    failures: list[str] = []
    for as_of, days in PERIODS:
        for account in accounts:
            sql = account_report(warehouse, account, as_of, days, BURST_THRESHOLD, WEIGHTS)
            expected = reference_report(reference, account, as_of, days, BURST_THRESHOLD, WEIGHTS)
            diff = differences(sql, expected)
            if diff:
                failures.append(f"{account!r} as_of={as_of} days={days}: {diff[0]} ({len(diff)} fields differ)")
    assert not failures, "\n".join(failures)


def test_busiest_accounts_are_bulk_accounts_with_activity(reference: ReferenceStore) -> None:
    busiest = busiest_bulk_accounts(reference, BUSIEST)
    assert len(busiest) == BUSIEST
    assert not set(busiest) & set(SCENARIO_ACCOUNTS)
    assert all(len(reference.to_account.get(a, [])) > 0 for a in busiest)


def test_differences_sees_every_kind_of_field(reference: ReferenceStore) -> None:
    report = reference_report(reference, SCENARIO_ACCOUNTS[2])
    assert report.median_response_seconds is not None and report.top_engagers and report.daily
    assert differences(report, report) == []
    close = replace(report, median_response_seconds=report.median_response_seconds * (1 + 1e-14))
    assert differences(close, report) == []
    changed = [
        replace(report, median_response_seconds=report.median_response_seconds * (1 + 1e-9)),
        replace(report, answered_24h=report.answered_24h + 1),
        replace(report, dialogue_share=None),
        replace(report, top_engagers=report.top_engagers[:-1]),
        replace(report, daily=[replace(report.daily[0], followers=report.daily[0].followers + 1), *report.daily[1:]]),
    ]
    assert [len(differences(c, report)) for c in changed] == [1] * len(changed)
