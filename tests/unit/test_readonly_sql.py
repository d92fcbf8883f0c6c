"""The read-only guard (pipeline/readonly_sql.py), the only protection of chDB's /query and `engagement sql`:
the bypasses a code review found are refused, and every statement the project runs still passes (the
Grafana dashboards' SQL: tests/unit/test_grafana_files.py::test_every_sql_statement_expands_to_one_read_only_statement).
"""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import queries
from pipeline.readonly_sql import ReadOnlyViolation, Token, check_read_only, tokens

# Statements that passed the old guard (a comment marker or an unknown table function hid them)
BYPASSES = [
    # a comment marker inside a string literal hid the rest of the statement from every check
    "SELECT '--' AS a, * FROM file('/etc/passwd','LineAsString')",
    "SELECT '--' INTO OUTFILE '/tmp/x'",
    "SELECT '--'; DROP TABLE engagement_events",
    "SELECT '/*', * FROM file('/etc/passwd', 'LineAsString') -- */",
    "SELECT 'it''s --', * FROM url('http://169.254.169.254/', 'TSV', 'x String')",
    "SELECT 'a\\'--', * FROM remote('db:9000', system.one)",
    "SELECT \"--\", * FROM s3('http://x/y', 'CSV')",
    # table functions the deny-list did not know, or only in one spelling
    "SELECT * FROM cosn('http://x/y', 'CSV')",
    "SELECT * FROM oss('http://x/y', 'CSV')",
    "SELECT * FROM icebergS3Cluster('c', 'http://x/y')",
    "SELECT * FROM icebergCluster('c', 'http://x/y')",
    "SELECT * FROM icebergAzure('http://x/y')",
    "SELECT * FROM icebergLocal('/var/lib/x')",
    "SELECT * FROM deltaLakeCluster('c', 'http://x/y')",
    "SELECT * FROM hudiCluster('c', 'http://x/y')",
    "SELECT * FROM merge('system', '.*')",
    "SELECT * FROM someFutureTableFunction('http://x')",
    "SELECT * FROM engagement_events AS e, loop(system.one)",
    "SELECT * FROM system.numbers AS n CROSS JOIN mergeTreeIndex('engagement', 'engagement_events')",
    "SELECT * FROM (dictionary('secrets'))",
    "SELECT 1 WHERE 1 IN merge('system', 'one')",
    "DESCRIBE TABLE loop(engagement_events)",
    "DESC generateSomething('x')",
    # comments ClickHouse reads differently, or not at all
    "SELECT * FROM file#x\n('/etc/passwd')",
    "SELECT * FROM file# x\n('/etc/passwd')",
    "SELECT * FROM file/* x */('/etc/passwd')",
    "/* /* */ SELECT 1 */ SELECT * FROM file('/etc/passwd')",
    "SELECT 1 /* never closed",
    "SELECT 'never closed",
    # spellings: quoted names, escapes ClickHouse decodes, heredocs, scalar functions that read files
    "SELECT * FROM \"Url\"('http://x')",
    "SELECT * FROM `fi\\x6ce`('/etc/passwd')",
    "SELECT $$--$$, * FROM file('/etc/passwd')",
    "SELECT file('/etc/passwd')",
    "SELECT * FROM view(SELECT * FROM file('/etc/passwd'))",
    "SELECT * FROM system.one WHERE 1 IN (SELECT 1 FROM postgresql('h', 'd', 't', 'u', 'p'))",
    "EXPLAIN AST DROP TABLE engagement_events",
    "EXPLAIN SYNTAX ALTER TABLE engagement_events DELETE WHERE 1",
]


@pytest.mark.parametrize("sql", BYPASSES)
def test_review_bypasses_are_refused(sql: str) -> None:
    with pytest.raises(ReadOnlyViolation):
        check_read_only(sql)


def test_parameters_are_checked_bound() -> None:
    # The warehouses bind %(name)s into the text: a value inside a comment or quoted identifier could end it
    hidden = "*/ * FROM merge(currentDatabase(), char(46, 42)) --"
    with pytest.raises(ReadOnlyViolation, match=r"merge\(\) is refused"):
        check_read_only("SELECT /* %(x)s */ 1", {"x": hidden})
    with pytest.raises(ReadOnlyViolation, match="cannot be bound"):
        check_read_only("SELECT %(x)s", {"x": object()})
    with pytest.raises(ReadOnlyViolation, match="cannot be bound"):
        check_read_only("SELECT %(y)s", {"x": 1})
    # a hostile value in its place is data
    check_read_only("SELECT * FROM engagement_events WHERE account_id = %(a)s", {"a": "x' OR 1 = 1; DROP --"})


def test_tokens_read_literals_and_comments_as_clickhouse_does() -> None:
    assert tokens("SELECT 'a''--b\\'', `x``y` -- c\n# d\n/* e */ 1") == [
        Token("word", "SELECT"),
        Token("string", "'a''--b\\''"),
        Token("op", ","),
        Token("quoted", "x`y"),
        Token("number", "1"),
    ]
    assert [t.text for t in tokens("f(x)->1 <> .5e3 x::UInt8 1file")] == [
        *("f", "(", "x", ")", "->", "1", "<>", ".5e3", "x", "::", "UInt8", "1file"),
    ]


def project_statements() -> dict[str, str]:
    """Every statement of pipeline/queries.py, by name."""
    found = {name: value for name, value in vars(queries).items() if name.isupper() and isinstance(value, str)}
    found.update({f"LEADERBOARD_BY[{metric}]": sql for metric, sql in queries.LEADERBOARD_BY.items()})
    return found


def test_every_statement_of_the_project_passes() -> None:
    statements = project_statements()
    assert len(statements) >= 15
    params: dict[str, Any] = {
        "since": 0,
        "until": 1,
        "limit": 10,
        "min_followers": 1,
        "account": "o'brien \\ --",
        "as_of": 1_770_000_000_000,
        "start": 1_769_000_000_000,
        "burst_threshold": 30,
        "weight_like": 1.0,
        "weight_mention": 2.0,
        "weight_reply": 3.0,
        **queries.rollup_params(1_769_000_000_000, 1_770_000_000_000),
    }
    for name, sql in statements.items():
        try:
            check_read_only(sql)  # as /query receives it without parameters
            check_read_only(sql, params)  # as ClickHouse receives it
        except ReadOnlyViolation as exc:
            pytest.fail(f"queries.{name}: {exc}")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1;",
        "((SELECT 1) UNION ALL (SELECT 2))",
        "SELECT count() FROM engagement_events FINAL SAMPLE 1 / 10 WHERE type = 'like' SETTINGS max_threads = 1",
        "SELECT * FROM engagement.engagement_events AS e ANY LEFT JOIN (SELECT 1 AS x) AS y USING x",
        "SELECT * FROM system.tables, system.one WHERE name IN ('a', 'b') AND 1 NOT IN (SELECT 2)",
        "SELECT EXTRACT(DAY FROM ts), trim(BOTH ' ' FROM account_id), substring(actor_id FROM 2 FOR 3) FROM t",
        "SELECT position(account_id IN lower(actor_id)) FROM engagement_events",
        "SELECT d FROM (SELECT [1, 2] AS ds) ARRAY JOIN arrayMap(x -> x * 2, ds) AS d, ds AS e",
        "SELECT * FROM numbers(10) AS n JOIN zeros(3) AS z ON n.number = z.zero",
        "SELECT * FROM `numbers`(3), values('x UInt8', 1, 2), generateRandom('a UInt8', 1, 8, 8) LIMIT 1",
        "SELECT * FROM view(SELECT 1) CROSS JOIN null('x UInt8')",
        "SELECT 1 IN tuple(1, 2), 2 IN numbers(3), 'x' IN ('x')",
        "WITH 1 AS x, (SELECT max(ts) FROM engagement_events) AS newest SELECT x, newest",
        "SELECT 'file(x)', domain(url) AS host, 'url(' || url AS u FROM engagement_events -- file('/etc/x')",
        "SELECT t.1, {'a': 1}, [1, 2][1], 0x1F, 1e3, a ? b : c, 1 != 2 AND 3 <> 4 FROM t # a comment",
        'SELECT `weird name`, "other" FROM "engagement_events" /* note */',
        "SHOW TABLES FROM engagement",
        "SHOW CREATE TABLE engagement_events",
        "DESCRIBE TABLE engagement_events",
        "DESC (SELECT 1)",
        "EXPLAIN SELECT * FROM engagement_events",
        "EXISTS TABLE engagement_events",
        "SELECT account_id FROM engagement_events ORDER BY account_id DESC, ts LIMIT 1 BY account_id",
    ],
)
def test_reading_statements_of_every_shape_pass(sql: str) -> None:
    check_read_only(sql)
