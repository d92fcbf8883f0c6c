"""The leaderboard's SQL equals the pure-Python oracle on the generated multi-week data, on both backends;
and ``engagement leaderboard`` prints it.

``report_events(seed=11)`` goes into a fresh store as the sink writes raw events (duplicates included); for
each ``--by`` the top 20 from :func:`pipeline.leaderboard.leaderboard_with` (ClickHouse) equal
:func:`pipeline.report_reference.reference_leaderboard`: the same accounts in the same order, with the same
values (integers exactly, floats to rel=1e-12). Every account is ranked once by response rate too, so that
None (undefined) is seen sorting after every number.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import orjson
import pytest

from pipeline.events import Event
from pipeline.leaderboard import LeaderboardRow, leaderboard_with
from pipeline.report_data import report_as_of, report_events
from pipeline.report_model import DAY_MS, AccountReport
from pipeline.report_reference import RANK_BY, ReferenceStore, reference_leaderboard, store
from pipeline.settings import Settings
from pipeline.warehouse import Warehouse, open_warehouse
from pipeline.warehouse.migrate import migrate
from tests.integration.helpers import opened_store, run_cli
from tests.integration.test_report_equals_reference import insert

pytestmark = pytest.mark.integration

SEED = 11
TOP = 20
T = report_as_of()
PERIODS = [(None, 28), (T - 3 * DAY_MS, 7)]
VALUES = ["followers", "engagers", "engagement_rate", "inbound_conversations", "answered_24h", "response_rate"]
JSON_ROW_KEYS = ["rank", "account_id", *VALUES, "reciprocal_circle"]


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return report_events(seed=SEED)


@pytest.fixture(scope="module")
def reference(events: list[Event]) -> ReferenceStore:
    return store(events)


@pytest.fixture()
def warehouse(backend_settings: Settings, events: list[Event]) -> Iterator[Warehouse]:
    """A fresh, migrated store of each backend holding ``events``."""
    with opened_store(backend_settings) as opened:
        insert(opened, events)
        yield opened


def differences(rows: list[LeaderboardRow], expected: list[AccountReport]) -> list[str]:
    out = [] if len(rows) == len(expected) else [f"{len(rows)} rows, reference {len(expected)}"]
    for rank, (row, want) in enumerate(zip(rows, expected, strict=False), start=1):
        if row.rank != rank or row.account_id != want.account_id:
            out.append(f"#{rank}: {row.rank} {row.account_id!r}, reference {want.account_id!r}")
            continue
        for name in [*VALUES, "reciprocal_circle"]:
            got, value = getattr(row, name), getattr(want, name)
            same = got == pytest.approx(value, rel=1e-12) if isinstance(value, float) else got == value
            if not same or type(got) is not type(value):
                out.append(f"#{rank} {row.account_id!r} {name}: sql={got!r} reference={value!r}")
    return out


def test_sql_leaderboard_equals_the_reference(warehouse: Warehouse, reference: ReferenceStore) -> None:
    failures: list[str] = []
    for as_of, days in PERIODS:
        for by in RANK_BY:
            rows = leaderboard_with(warehouse.query, by, TOP, as_of, days)
            expected = reference_leaderboard(reference, by, TOP, as_of, days)
            assert len(expected) == TOP
            failures += [f"by={by} as_of={as_of} days={days}: {d}" for d in differences(rows, expected)]
    everyone = len(reference.accounts) + 1
    rows = leaderboard_with(warehouse.query, "response_rate", everyone, T, 7)
    expected = reference_leaderboard(reference, "response_rate", everyone, T, 7)
    assert expected[-1].response_rate is None and expected[0].response_rate is not None
    failures += [f"all by response_rate: {d}" for d in differences(rows, expected)]
    assert not failures, "\n".join(failures)


def test_unknown_metric_and_bad_arguments_are_refused(embedded_settings: Settings) -> None:
    warehouse = open_warehouse(embedded_settings)
    try:
        for bad in [{"by": "followers; DROP TABLE x"}, {"limit": -1}, {"days": 0}, {"as_of": DAY_MS, "days": 2}]:
            with pytest.raises(ValueError):
                leaderboard_with(warehouse.query, **bad)  # type: ignore[arg-type]
    finally:
        warehouse.close()


def engagement(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(settings, "leaderboard", *args)


def test_cli_prints_json_and_a_table(embedded_settings: Settings, events: list[Event]) -> None:
    warehouse = open_warehouse(embedded_settings)
    try:
        migrate(warehouse, embedded_settings)
        insert(warehouse, events)
        expected = [r.to_json_dict() for r in leaderboard_with(warehouse.query, "reciprocal_circle", 5, T, 7)]
    finally:
        warehouse.close()

    done = engagement(embedded_settings, "--by", "reciprocal_circle", "--limit", "5", "--days", "7", "--json")
    assert done.returncode == 0, done.stderr
    board = orjson.loads(done.stdout)
    assert list(board) == ["by", "as_of", "days", "rows"]
    assert (board["by"], board["as_of"], board["days"]) == ("reciprocal_circle", T, 7)
    assert [list(row) for row in board["rows"]] == [JSON_ROW_KEYS] * 5
    assert board["rows"] == orjson.loads(orjson.dumps(expected))

    done = engagement(embedded_settings, "--by", "response_rate", "--limit", "100000", "--as-of", str(T))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Engagement leaderboard by response rate: 28 days to ")
    assert lines[1].split()[:2] == ["#", "account"]
    assert "response rate ▼" in lines[1] and lines[1].count("▼") == 1
    assert "engagement rate" in lines[1] and "reciprocal circle" in lines[1] and "followers" in lines[1]
    assert lines[3].split()[:2] == ["1", expected_first(embedded_settings)]
    assert lines[-1].split()[-2] == "—"  # ranked last: no inbound conversation, an undefined response rate

    done = engagement(embedded_settings, "--by", "reach")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def expected_first(settings: Settings) -> str:
    warehouse = open_warehouse(settings)
    try:
        return leaderboard_with(warehouse.query, "response_rate", 1, T, 28)[0].account_id
    finally:
        warehouse.close()
