"""Every SQL statement of the Grafana dashboards and alert rules, with the data source's macros and the
dashboard variable expanded, runs on both backends (chDB 26.x and the ClickHouse 18.16 server) and returns
the shape its panel, variable, annotation or alert rule needs, with the values worked out by hand below.

Times are relative to T = 2026-02-01T00:00:00Z; the dashboard range is [T, T + 1 day].
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.events import Event
from pipeline.report import account_report
from pipeline.settings import Settings
from pipeline.sink import event_columns
from pipeline.warehouse import QueryResult, Warehouse
from tests.deploy_files import SqlQuery, TimeRange, expand, sql_queries
from tests.integration.helpers import opened_store

pytestmark = pytest.mark.integration

HOUR = 3600
DAY = 24 * HOUR
T = 1_769_904_000  # 2026-02-01T00:00:00Z, in seconds
H0, H1 = T + 10 * HOUR, T + 11 * HOUR
RANGE = TimeRange(T, T + DAY, 60)  # 1-minute points: engager buckets are single hours
WIDE = TimeRange(T, T + DAY, 2 * HOUR)  # 2-hour points: H0 and H1 fall in one bucket
# A's quote, backslash and Unicode go through ${account:percentencode} and decodeURLComponent
A, B, C = "acct-a'1\\' OR 1 = 1 -- é", "acct-b", "acct-c"

NUMERIC = re.compile(r"^(Nullable\()?(U?Int\d+|Float\d+|Decimal.*)\)?$")
DATETIME = re.compile(r"^(Nullable\()?DateTime")
STRING = re.compile(r"^(LowCardinality\()?String\)?$")


def ev(event_id: str, kind: str, ts: int, actor: str, account: str, to: str | None = None) -> Event:
    return Event(event_id, kind, ts * 1000, actor, account, post_id="p", in_reply_to=to)


EVENTS = [
    ev("e1", "like", H0 + 60, "u1", A),
    ev("e1", "like", H0 + 60, "u1", A),  # a duplicate: counted once
    ev("e2", "like", H0 + 120, "u2", A),
    ev("e3", "reply", H0 + 180, "u3", A),
    ev("e4", "mention", H1 + 60, "u1", A),
    ev("e5", "reply", H0 + 600, A, "u3", to="e3"),  # A answers u3: a response, and A engages u3
    ev("e6", "mention", H1 + 120, A, "u1"),  # A engages u1, who engaged A: u1 is in A's circle, so is u3
    ev("e7", "reply", H1 + 180, A, "u9"),  # u9 never engaged A
    ev("e8", "like", H0 + 30, A, A),  # self-engagement: ignored everywhere
    ev("e9", "like", H0, "u4", B),
    ev("old-in", "like", T - 100 * DAY, "u5", A),  # both directions, but more than 90 days before T + 1 day
    ev("old-out", "mention", T - 100 * DAY, A, "u5"),
]

# engagement_windows rows: (account, window_start, likes, replies, mentions, engagers, followers, responses,
# score, version). The first A row also exists in an older version with other values: FINAL hides it.
WINDOWS = [
    (A, H0 + 60, 1, 0, 0, 1, 50, 0, 0, 1),
    (A, H0 + 60, 1, 0, 0, 1, 100, 0, 1, 2),
    (A, H0 + 120, 1, 0, 0, 1, 100, 0, 1, 1),
    (A, H0 + 180, 0, 1, 0, 1, 100, 0, 3, 1),
    (A, H0 + 600, 0, 0, 0, 0, 100, 1, 0, 1),
    (A, H1 + 60, 0, 0, 1, 1, 110, 0, 2, 1),
    (B, H0, 1, 0, 0, 1, 10, 0, 1, 1),
]

# engagement_alerts rows: (account, window_start, state, drop_pct). A fired, resolved, fired again (in a
# drop); B fired and resolved (not); C fired and has no events at all.
ALERTS = [
    (A, T + 2 * HOUR, "firing", 70.0),
    (A, T + 4 * HOUR, "resolved", 0.0),
    (A, H1, "firing", 80.0),
    (B, T + 1 * HOUR, "firing", 60.0),
    (B, T + 3 * HOUR, "resolved", 0.0),
    (C, T + 5 * HOUR, "firing", 90.0),
]


def insert_rows(warehouse: Warehouse) -> None:
    sourced = [(*event, "test", 0, offset) for offset, event in enumerate(EVENTS)]
    warehouse.insert("engagement_events", event_columns(sourced, ingested_ms=1))
    names = ("account_id", "window_start", "likes", "replies", "mentions", "engagers", "followers", "responses")
    columns: dict[str, list[Any]] = {name: [row[i] for row in WINDOWS] for i, name in enumerate(names)}
    columns["score"] = [row[8] for row in WINDOWS]
    columns["version"] = [row[9] for row in WINDOWS]
    columns["window_end"] = [start + 60 for start in columns["window_start"]]
    columns.update({name: [0] * len(WINDOWS) for name in ("follows", "unfollows")})
    columns["final"] = [1] * len(WINDOWS)
    columns["engagement_rate"] = [row[5] / row[6] for row in WINDOWS]
    warehouse.insert("engagement_windows", columns)
    warehouse.insert(
        "engagement_alerts",
        {
            "alert_id": [f"{account}/{start}/{state}" for account, start, state, _ in ALERTS],
            "account_id": [row[0] for row in ALERTS],
            "window_start": [row[1] for row in ALERTS],
            "window_end": [row[1] + 60 for row in ALERTS],
            "state": [row[2] for row in ALERTS],
            "reason": ["drop"] * len(ALERTS),
            "observed": [2.0] * len(ALERTS),
            "baseline": [10.0] * len(ALERTS),
            "drop_pct": [row[3] for row in ALERTS],
            "windows_below": [3] * len(ALERTS),
        },
    )


@pytest.fixture()
def store(backend_settings: Settings) -> Iterator[Warehouse]:
    """A migrated store of each backend holding the rows above."""
    with opened_store(backend_settings) as warehouse:
        insert_rows(warehouse)
        yield warehouse


@dataclass(frozen=True)
class Answer:
    result: QueryResult
    types: list[str]

    @property
    def columns(self) -> list[str]:
        return self.result.columns

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        return self.result.rows


def run(warehouse: Warehouse, query: SqlQuery, time_range: TimeRange = RANGE, account: str = A) -> Answer:
    """The expanded statement's rows and ClickHouse's types of its columns (from its first row)."""
    sql = expand(query.sql, time_range, {"account": account})
    result = warehouse.query(sql)
    types: list[str] = []
    if result.rows:
        probe = ", ".join(f"toTypeName(`{name}`)" for name in result.columns)
        types = [str(t) for t in warehouse.query(f"SELECT {probe} FROM ({sql}) AS q LIMIT 1").rows[0]]
    return Answer(result, types)


def find(part: str, shape: str | None = None) -> SqlQuery:
    """The one statement whose location contains ``part`` (and of ``shape``: two panels share a title)."""
    matches = [q for q in sql_queries() if part in q.where and shape in (None, q.shape)]
    assert len(matches) == 1, f"{part!r}: {[q.where for q in matches]}"
    return matches[0]


def check_shape(query: SqlQuery, answer: Answer) -> None:
    where, types = query.where, answer.types
    assert answer.rows, f"{where}: no rows"
    if query.shape == "timeseries":
        assert answer.columns[0] == "time" and DATETIME.match(types[0]), f"{where}: {answer.columns} {types}"
        assert len(types) >= 2 and all(NUMERIC.match(t) for t in types[1:]), f"{where}: {types}"
        times = [str(row[0]) for row in answer.rows]
        assert times == sorted(times), f"{where}: not ordered by time"
    elif query.shape == "stat":
        assert len(answer.rows) == 1 and all(NUMERIC.match(t) for t in types), f"{where}: {types}"
    elif query.shape == "table":
        assert answer.columns[0] == "time" and DATETIME.match(types[0]), f"{where}: {types}"
    elif query.shape == "variable":
        assert len(types) == 1 and STRING.match(types[0]), f"{where}: {types}"
    elif query.shape == "annotation":
        assert answer.columns == ["time", "timeEnd", "text", "tags"], where
        assert [bool(DATETIME.match(t)) for t in types] == [True, True, False, False], f"{where}: {types}"
        assert all(STRING.match(t) for t in types[2:]), f"{where}: {types}"
    elif query.shape == "alert":
        numeric = [t for t in types if NUMERIC.match(t)]
        labels = [t for t in types if STRING.match(t)]
        assert len(numeric) == 1 and len(labels) == len(types) - 1, f"{where}: {types}"
    else:
        raise AssertionError(f"{where}: unknown shape {query.shape}")


def test_every_statement_runs_with_its_shape(store: Warehouse) -> None:
    queries = sql_queries()
    assert {q.shape for q in queries} == {"timeseries", "stat", "table", "variable", "annotation", "alert"}
    for query in queries:
        for time_range in (RANGE, WIDE):
            check_shape(query, run(store, query, time_range))


def column(answer: Answer, name: str) -> list[Any]:
    index = answer.columns.index(name)
    return [row[index] for row in answer.rows]


def as_float(values: Sequence[Any]) -> list[float | None]:
    return [None if v is None else float(v) for v in values]


def test_account_stats(store: Warehouse) -> None:
    assert run(store, find("panel 'Followers' target")).rows == [(110,)]  # the latest window before the end
    assert run(store, find("panel 'Engagers' target")).rows == [(3,)]  # u1, u2, u3
    (rate,) = run(store, find("'Engagement rate' target A", "stat")).rows[0]
    assert float(rate) == pytest.approx(3 / 110)
    (response,) = run(store, find("'Response rate' target A", "stat")).rows[0]
    assert float(response) == pytest.approx(1 / 2)  # one response to one reply + one mention
    assert run(store, find("panel 'Reciprocal circle")).rows == [(2,)]  # u1 and u3
    assert run(store, find("panel 'In an engagement drop'")).rows == [(1,)]
    assert run(store, find("panel 'In an engagement drop'"), account=B).rows == [(0,)]
    assert run(store, find("panel 'In an engagement drop'"), account="never-seen").rows == [(0,)]


def test_account_series(store: Warehouse) -> None:
    followers = run(store, find("'Followers vs engagers' target A"))
    assert column(followers, "followers") == [100, 100, 100, 100, 110]  # per minute; FINAL hides the 50
    engagers = run(store, find("'Followers vs engagers' target B"))
    assert column(engagers, "engagers") == [3, 1]  # per whole hour, from the rollup
    assert column(run(store, find("'Followers vs engagers' target B"), WIDE), "engagers") == [3]
    rate = run(store, find("'Engagement rate' target A", "timeseries"))
    assert as_float(column(rate, "engagement_rate")) == pytest.approx([3 / 100, 1 / 110])
    wide = run(store, find("'Engagement rate' target A", "timeseries"), WIDE)
    assert as_float(column(wide, "engagement_rate")) == pytest.approx([3 / 110])
    assert column(run(store, find("panel 'Score'")), "score") == [1, 1, 3, 0, 2]
    responses = run(store, find("'Response rate' target A", "timeseries"))
    assert as_float(column(responses, "response_rate")) == [None, None, 0.0, None, 0.0]  # no conversation: NULL
    wide_responses = run(store, find("'Response rate' target A", "timeseries"), WIDE)
    assert as_float(column(wide_responses, "response_rate")) == [0.5]


def test_drops_table_and_annotations(store: Warehouse) -> None:
    table = run(store, find("panel 'Engagement drops'"))
    assert column(table, "state") == ["firing", "resolved", "firing"]  # newest first
    assert as_float(column(table, "drop_pct")) == [80.0, 0.0, 70.0]
    annotations = run(store, find("annotation 'Engagement drops'"))
    texts = column(annotations, "text")
    assert len(texts) == 3 and texts[0].startswith("firing (drop): score 2")
    assert "baseline of 10" in texts[0] and "70 % below" in texts[0]
    assert column(annotations, "tags") == ["firing", "resolved", "firing"]


def test_account_variable_lists_engaged_and_alerted_accounts(store: Warehouse) -> None:
    # Engaged in the 7 days before the end: A, B, and u1, u3, u9 (engaged by A); C only has alerts; u5 was
    # engaged 100 days ago.
    assert run(store, find("variable account")).rows == [(A,), (B,), (C,), ("u1",), ("u3",), ("u9",)]
    # A range that ends before any engagement: what came after its end does not rank (only alerted accounts)
    before = TimeRange(T - DAY, T + HOUR, 60)
    assert run(store, find("variable account"), before).rows == [(A,), (B,), (C,)]


def test_drop_alert_rule_fires_per_account_in_a_drop(store: Warehouse) -> None:
    # One alert instance per account that has alert rows; value 1 while its latest state is 'firing'.
    in_drop = run(store, find("rule engagement-drop query A"))
    assert dict(in_drop.rows) == {A: 1, B: 0, C: 1}
    details = run(store, find("rule engagement-drop query B"))
    assert {account: float(value) for account, value in details.rows} == {A: 80.0, B: 0.0, C: 90.0}


def test_reciprocal_circle_is_the_reports(store: Warehouse) -> None:
    end_ms = RANGE.end * 1000
    (circle,) = run(store, find("panel 'Reciprocal circle")).rows[0]
    assert circle == account_report(store, A, as_of=end_ms).reciprocal_circle == 2
