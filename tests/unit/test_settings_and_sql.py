"""Settings from the environment, SQL parameter binding, the read-only guard, DDL rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.readonly_sql import ReadOnlyViolation, check_read_only
from pipeline.settings import Secret, Settings, SettingsError
from pipeline.warehouse.migrate import discover, render, statements
from pipeline.warehouse.params import BindError, bind, quote


def test_settings_from_environment_and_overrides() -> None:
    env = {
        "ENGAGEMENT_WINDOW_SECONDS": "30",
        "ENGAGEMENT_DATA_DIR": "/x",
        "ENGAGEMENT_TOPIC_PREFIX": "p.",
        "ENGAGEMENT_CLICKHOUSE_PASSWORD": "s3cret",
        "ENGAGEMENT_BATCH_MAX_SECONDS": "0.75",
    }
    settings = Settings.from_env(env, partitions=8)
    assert settings.window_seconds == 30 and settings.data_dir == Path("/x") and settings.partitions == 8
    assert settings.batch_max_seconds == 0.75 and settings.topic("likes") == "p.likes"
    assert settings.clickhouse_password.reveal() == "s3cret"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.masked())
    assert settings.to_env()["ENGAGEMENT_CLICKHOUSE_PASSWORD"] == "s3cret"
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(
    "env",
    [
        {"ENGAGEMENT_WINDOW_SECONDS": "x"},
        {"ENGAGEMENT_WINDOW_SECONDS": "0"},
        {"ENGAGEMENT_WAREHOUSE": "mysql"},
        {"ENGAGEMENT_PARTITIONS": "-1"},
        {"ENGAGEMENT_ALLOWED_LATENESS_SECONDS": "-5"},
        {"ENGAGEMENT_PERSIST_INTERVAL_SECONDS": "-1"},
        {"ENGAGEMENT_FETCH_MAX_WAIT_MS": "0"},
        {"ENGAGEMENT_BURST_THRESHOLD": "0"},
        {"ENGAGEMENT_EMBEDDED_MERGE_NICE": "20"},
        {"ENGAGEMENT_EMBEDDED_MERGE_NICE": "-1"},
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(iter(env))):
        Settings.from_env(env)


def test_secret_never_prints() -> None:
    assert "pw" not in f"{Secret('pw')} {Secret('pw')!r}" and Secret("") == Secret("")


@given(st.text(max_size=50))
def test_quote_round_trips_any_string(value: str) -> None:
    quoted = quote(value)
    assert quoted.startswith("'") and quoted.endswith("'")
    inner = quoted[1:-1]
    # every quote inside is escaped: the literal cannot end early
    i = 0
    while i < len(inner):
        if inner[i] == "\\":
            i += 2
            continue
        assert inner[i] != "'"
        i += 1


def test_bind_values_and_errors() -> None:
    sql = "SELECT %(a)s, %(b)s, %(c)s, %(d)s, %(e)s"
    assert bind(sql, {"a": "x'y", "b": 3, "c": None, "d": [1, "z"], "e": 1.5}) == (
        "SELECT 'x\\'y', 3, NULL, [1, 'z'], 1.5"
    )
    with pytest.raises(BindError):
        bind("SELECT %(missing)s", {"a": 1})
    with pytest.raises(BindError):
        bind("SELECT %(a)s", {"a": float("nan")})
    with pytest.raises(BindError):
        bind("SELECT %(a)s", {"a": object()})
    assert bind("SELECT 1", None) == "SELECT 1"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  with x AS (SELECT 1) SELECT * FROM x;",
        "SHOW TABLES",
        "DESCRIBE engagement_events",
        "SELECT ';' AS semicolon",
        "(SELECT 1)",
    ],
)
def test_reading_statements_pass(sql: str) -> None:
    check_read_only(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE x",
        "INSERT INTO x VALUES (1)",
        "SELECT 1; DROP TABLE x",
        "ALTER TABLE x DELETE WHERE 1",
        "SET readonly = 0",
        "",
        "-- only a comment",
        "SELECT 1 INTO OUTFILE '/tmp/x'",
        "/* hi */ TRUNCATE TABLE x",
    ],
)
def test_writing_statements_are_refused(sql: str) -> None:
    with pytest.raises(ReadOnlyViolation):
        check_read_only(sql)


def test_migrations_are_numbered_and_render_per_version() -> None:
    migrations = discover()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    assert [m.name for m in migrations][:4] == [
        "engagement_events",
        "engagement_windows",
        "engagement_dead_letters",
        "rollups",
    ]
    settings = Settings.from_env({}, events_ttl_days=10)
    text = migrations[0].text
    old, new = render(text, settings, (18, 16)), render(text, settings, (26, 9))
    assert "TTL" not in old and "TTL ts + INTERVAL 10 DAY" in new and "{{" not in old + new
    dead = migrations[2].text
    assert "CODEC" not in render(dead, settings, (18, 16)) and "CODEC(ZSTD(1))" in render(dead, settings, (26, 9))
    rollups = render(migrations[3].text, settings, (26, 9))  # the rollups keep what raw events keep
    assert [line.rstrip(";") for line in rollups.splitlines() if line.startswith("TTL")] == [
        "TTL hour + INTERVAL 10 DAY",
        "TTL minute + INTERVAL 10 DAY",
        "TTL ts + INTERVAL 10 DAY",
    ]
    assert "TTL" not in render(migrations[3].text, Settings.from_env({}), (26, 9))
    with pytest.raises(ValueError, match="unknown template slot"):
        render("{{TTL_NOPE}}", settings, (26, 9))


def test_a_schemas_directory_without_migrations_is_an_error_not_an_empty_database(tmp_path: Path) -> None:
    """An installation missing its schemas must not start a worker on a database without tables (its
    inserts would be retried forever)."""
    with pytest.raises(FileNotFoundError, match="no migrations"):
        discover(tmp_path)
    (tmp_path / "notes.sql").write_text("SELECT 1;")  # not a numbered migration
    with pytest.raises(FileNotFoundError, match="schemas directory"):
        discover(tmp_path)


def test_statements_split_on_line_ending_semicolons() -> None:
    assert statements("-- c\nCREATE TABLE a (x String DEFAULT ';');\nCREATE TABLE b (y UInt8);\n") == [
        "CREATE TABLE a (x String DEFAULT ';')",
        "CREATE TABLE b (y UInt8)",
    ]
