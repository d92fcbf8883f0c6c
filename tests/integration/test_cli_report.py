"""``engagement report`` as a user runs it, on a small embedded (chDB) store: the terminal report, ``--json``,
``--html``, the errors, and the same report through a running worker's ``/query`` endpoint."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from pipeline.events import Event
from pipeline.query_client import _live_worker
from pipeline.report import account_report
from pipeline.report_format import width
from pipeline.report_model import DAY_MS, iso_ms
from pipeline.settings import Settings
from pipeline.sink import event_columns
from pipeline.warehouse import open_warehouse
from pipeline.warehouse.migrate import migrate
from tests.integration.helpers import run_cli, running_worker

pytestmark = pytest.mark.integration

ACCOUNT = "o'brien 🙂"
T = 1_769_904_000_000  # 2026-02-01T00:00:00Z
# The keys, plus account_id, as_of and days: exactly these, in this order.
JSON_KEYS = [
    "account_id", "as_of", "days", "followers", "engagers", "engagement_rate", "likes", "replies", "mentions",
    "returning_engager_rate", "loyal_core", "inbound_conversations", "answered_24h", "response_rate",
    "median_response_seconds", "outbound", "responses_sent", "dialogue_share", "reciprocal_circle",
    "top_engagers", "top10_share", "bot_share", "human_engagement_rate", "daily", "response_delays",
]  # fmt: skip
EVENTS = [
    Event("s-1", "followers", T - 40 * DAY_MS, "", ACCOUNT, followers=40),
    Event("f-1", "follow", T - 3 * DAY_MS, "u1", ACCOUNT),
    Event("e-1", "like", T - 2 * DAY_MS, "u1", ACCOUNT, post_id="p"),
    Event("e-2", "mention", T - 2 * DAY_MS, "u2", ACCOUNT, post_id="p"),
    Event("e-3", "reply", T - 2 * DAY_MS + 60_000, ACCOUNT, "u2", post_id="p", in_reply_to="e-2"),
    Event("e-4", "reply", T - DAY_MS, "u3", ACCOUNT, post_id="p", in_reply_to="x"),
    Event("e-5", "like", T - 1, "u1", "other"),  # the newest event: the default as_of is T
]


def engagement(settings: Settings, *args: str, columns: int = 100) -> subprocess.CompletedProcess[str]:
    return run_cli(settings, "report", *args, COLUMNS=str(columns), LINES="40")


def fill(settings: Settings, events: list[Event]) -> None:
    warehouse = open_warehouse(settings)
    try:
        migrate(warehouse, settings)
        if events:
            sourced = [(*event, "test", 0, offset) for offset, event in enumerate(events)]
            warehouse.insert("engagement_events", event_columns(sourced, ingested_ms=1))
    finally:
        warehouse.close()


@pytest.fixture()
def settings(embedded_settings: Settings) -> Settings:
    fill(embedded_settings, EVENTS)
    return embedded_settings


def expected_json(settings: Settings, as_of: int | None = None, days: int = 28) -> object:
    report = account_report(settings, ACCOUNT, as_of, days, settings.burst_threshold)
    return orjson.loads(orjson.dumps(report.to_json_dict()))


def test_json_prints_exactly_the_keys_and_the_report(settings: Settings) -> None:
    result = engagement(settings, ACCOUNT, "--json")
    assert result.returncode == 0, result.stderr
    printed = orjson.loads(result.stdout)
    assert list(printed) == JSON_KEYS
    assert printed == expected_json(settings)
    assert (printed["as_of"], printed["followers"], printed["engagers"]) == (iso_ms(T), 41, 3)
    assert (printed["inbound_conversations"], printed["answered_24h"], printed["median_response_seconds"]) == (2, 1, 60)
    assert [list(t) for t in printed["top_engagers"]] == [["actor_id", "score"]] * 3


def test_as_of_in_rfc3339_with_a_zone_or_epoch_ms_and_days(settings: Settings) -> None:
    as_of = T - DAY_MS - 1  # 2026-01-30T23:59:59.999Z: e-4 (at T - 1 d) is after the period
    for text in ("2026-01-31T00:59:59.999+01:00", str(as_of)):
        result = engagement(settings, ACCOUNT, "--json", "--as-of", text, "--days", "7")
        assert result.returncode == 0, result.stderr
        printed = orjson.loads(result.stdout)
        assert printed == expected_json(settings, as_of, 7)
        assert (printed["as_of"], printed["days"], printed["engagers"], len(printed["daily"])) == (
            iso_ms(as_of),
            7,
            2,
            8,
        )


def test_terminal_report_fits_the_terminal(settings: Settings) -> None:
    for columns, expect in ((72, 72), (20, 40)):  # narrower than 40 columns: clamped to 40
        result = engagement(settings, ACCOUNT, columns=columns)
        assert result.returncode == 0, result.stderr
        assert "o'brien" in result.stdout
        lines = result.stdout.splitlines()
        assert len(lines) > 10 and "\x1b[" not in result.stdout  # not a terminal: no colour
        assert max(width(line) for line in lines) <= expect
        assert any(width(line) > expect - 15 for line in lines)


def test_html_is_written_as_utf8_and_where_is_said(settings: Settings, tmp_path: Path) -> None:
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    result = engagement(settings, ACCOUNT, "--html", str(page))
    assert result.returncode == 0, result.stderr
    assert str(page) in result.stdout
    text = page.read_bytes().decode("utf-8")
    assert text.lstrip().lower().startswith("<!doctype html") and "🙂" in text
    both = engagement(settings, ACCOUNT, "--html", str(page), "--json")  # JSON on stdout, where on stderr
    assert both.returncode == 0 and orjson.loads(both.stdout) == expected_json(settings)
    assert str(page) in both.stderr
    nowhere = engagement(settings, ACCOUNT, "--html", str(tmp_path / "missing" / "report.html"))
    assert nowhere.returncode == 1 and "cannot write" in nowhere.stderr


def test_unknown_account_is_an_empty_report(settings: Settings) -> None:
    result = engagement(settings, "nobody", "--json")
    assert result.returncode == 0, result.stderr
    printed = orjson.loads(result.stdout)
    assert (printed["followers"], printed["engagers"], printed["engagement_rate"], printed["top_engagers"]) == (
        0,
        0,
        None,
        [],
    )


def test_errors(embedded_settings: Settings) -> None:
    fill(embedded_settings, [])
    for args in ([], ["--as-of", str(T)]):
        empty = engagement(embedded_settings, ACCOUNT, *args)
        assert empty.returncode == 1 and "holds no events" in empty.stderr and not empty.stdout
    bad = engagement(embedded_settings, ACCOUNT, "--as-of", "2026-01-31 00:00")
    assert bad.returncode == 2 and "--as-of" in bad.stderr and "RFC 3339" in bad.stderr
    assert engagement(embedded_settings, ACCOUNT, "--days", "0").returncode == 2
    early = engagement(embedded_settings, ACCOUNT, "--as-of", "1000", "--days", "1")
    assert early.returncode in (1, 2) and "error" in early.stderr


def test_through_a_running_worker(live_settings: Settings) -> None:
    """While a worker holds the embedded store, the report's statements go to its /query endpoint."""
    settings = replace(live_settings, weight_reply=5, burst_threshold=1)
    fill(settings, EVENTS)
    direct = expected_json(settings)
    with running_worker(settings):
        assert _live_worker(settings.data_dir) is not None  # so the CLI must not open chDB itself
        result = engagement(settings, ACCOUNT, "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == direct
    assert [t["score"] for t in direct["top_engagers"]] == [5, 2, 1]  # type: ignore[index]
