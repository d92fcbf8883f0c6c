"""Hostile account ids through ``report``, ``leaderboard`` and ``engagement sql --param``, on chDB and on the
ClickHouse 18.16 server: every value is bound as data, so each account's results are its own, exact, and
nothing else in the store changes."""

from __future__ import annotations

import orjson
import pytest

from pipeline.events import Event
from pipeline.leaderboard import leaderboard_with
from pipeline.query_client import reading, run_query
from pipeline.report import account_report
from pipeline.report_model import DAY_MS
from pipeline.settings import Settings
from pipeline.warehouse import QueryError, open_warehouse
from tests.integration.helpers import run_cli
from tests.integration.test_cli_report import fill

pytestmark = pytest.mark.integration

T = 1_769_904_000_000  # 2026-02-01T00:00:00Z
HOSTILE = [
    "'; DROP TABLE engagement_events; --",
    "o'brien",
    "back\\slash\\",
    "\\'; SELECT 1; --",
    '"double" `back` quotes',
    "%(account)s",  # a placeholder of our own binding
    "{account:String}",  # ClickHouse's query parameter syntax
    "line\nbreak\ttab\r\x01",
    "émoji 🙂 \u202eRTL\u202c 中文",
    ("q'\\" * 86)[:256],  # as long as an account id may be, all quotes and backslashes
]
BENIGN = "plain"


def hostile_events() -> list[Event]:
    """Account i has i + 1 likes from distinct actors and 10 * (i + 1) followers."""
    events = []
    for i, account in enumerate([*HOSTILE, BENIGN]):
        events.append(Event(f"s-{i}", "followers", T - 10 * DAY_MS, "", account, followers=10 * (i + 1)))
        events += [Event(f"l-{i}-{j}", "like", T - DAY_MS + j, f"fan-{j}", account) for j in range(i + 1)]
    return events


@pytest.fixture()
def hostile_store(backend_settings: Settings) -> Settings:
    fill(backend_settings, hostile_events())
    return backend_settings


def test_reports_leaderboard_and_sql_of_hostile_ids_are_exact(hostile_store: Settings) -> None:
    settings = hostile_store
    accounts = [*HOSTILE, BENIGN]
    for i, account in enumerate(accounts):
        report = account_report(settings, account, T, 28)
        assert (report.account_id, report.likes, report.engagers, report.followers) == (
            account,
            i + 1,
            i + 1,
            10 * (i + 1),
        )
        rows = run_query(
            settings,
            "SELECT count() AS n, any(account_id) AS a FROM engagement_events FINAL WHERE account_id = %(account)s",
            {"account": account},
        ).rows
        assert rows == [(i + 2, account)]  # the likes and the followers snapshot
    with reading(settings) as run:
        board = leaderboard_with(run, "engagers", 100, T, 28)
    assert {(r.account_id, r.engagers, r.followers) for r in board} == {
        (a, i + 1, 10 * (i + 1)) for i, a in enumerate(accounts)
    }
    # nothing was dropped or added: every table still answers with the rows it had
    total = run_query(settings, "SELECT count() FROM engagement_events FINAL").rows[0][0]
    assert total == len(hostile_events())


@pytest.mark.parametrize("account", [HOSTILE[0], HOSTILE[3], HOSTILE[9]])
def test_the_cli_binds_hostile_ids(hostile_store: Settings, account: str) -> None:
    settings = hostile_store
    i = HOSTILE.index(account)
    report = run_cli(settings, "report", account, "--as-of", "2026-02-01T00:00:00Z", "--json")
    assert report.returncode == 0, report.stderr
    printed = orjson.loads(report.stdout)
    assert (printed["account_id"], printed["likes"], printed["followers"]) == (account, i + 1, 10 * (i + 1))
    terminal = run_cli(settings, "report", account, "--as-of", "2026-02-01T00:00:00Z", COLUMNS="100")
    assert terminal.returncode == 0, terminal.stderr
    board = run_cli(settings, "leaderboard", "--by", "engagers", "--limit", "100", "--json")
    assert board.returncode == 0, board.stderr
    assert {r["account_id"]: r["engagers"] for r in orjson.loads(board.stdout)["rows"]}[account] == i + 1
    sql = run_cli(
        settings,
        "sql",
        "SELECT account_id, count() AS n FROM engagement_events FINAL WHERE account_id = %(a)s GROUP BY account_id",
        "--param",
        f"a={account}",
        "--format",
        "json",
    )
    assert sql.returncode == 0, sql.stderr
    assert orjson.loads(sql.stdout) == [{"account_id": account, "n": i + 2}]
    missing = run_cli(settings, "sql", "SELECT count() AS n FROM engagement_events WHERE account_id = %(a)s",
                      "--param", "a=" + account * 40, "--format", "csv")  # fmt: skip
    assert (missing.returncode, missing.stdout.split()) == (0, ["n", "0"])
    total = run_cli(settings, "sql", "SELECT count() AS n FROM engagement_events FINAL", "--format", "csv")
    assert total.stdout.split() == ["n", str(len(hostile_events()))]


def test_sql_param_errors_are_clear(embedded_settings: Settings) -> None:
    bad = run_cli(embedded_settings, "sql", "SELECT %(a)s", "--param", "no-equals-sign")
    assert bad.returncode == 2 and "--param takes NAME=VALUE" in bad.stderr
    unbound = run_cli(embedded_settings, "sql", "SELECT %(a)s AS a", "--param", "b=1")
    assert unbound.returncode != 0 and "no value for parameter 'a'" in unbound.stderr


def test_sql_refuses_writes_and_outside_reads_on_both_backends(hostile_store: Settings) -> None:
    settings = hostile_store
    for statement, reason in (
        ("DROP TABLE engagement_events", "DROP statements are refused"),
        ("INSERT INTO engagement_events (event_id) SELECT 'x'", "INSERT statements are refused"),
        ("SELECT 1; DROP TABLE engagement_events", "only one statement is allowed"),
        ("SELECT * FROM file('/etc/passwd', 'TSV', 'x String')", "table function file() is refused"),
    ):
        result = run_cli(settings, "sql", statement)
        assert result.returncode == 2 and result.stderr.startswith("refused: "), result.stderr
        assert reason in result.stderr, result.stderr
    if settings.warehouse == "server":  # past the guard, the server itself refuses: the session is read-only
        warehouse = open_warehouse(settings, read_only=True)
        try:
            with pytest.raises(QueryError) as error:
                warehouse.execute("INSERT INTO engagement_events (event_id) SELECT 'x'")
            assert error.value.code == 164
        finally:
            warehouse.close()
    assert run_query(settings, "SELECT count() FROM engagement_events FINAL").rows == [(len(hostile_events()),)]
