"""Least privilege on the real ClickHouse 18.16 server (the users.d XML of ``engagement users xml``, loaded
by the ``clickhouse_server`` fixture), the read-only path of ``engagement sql``/``report``/``leaderboard``,
secret-free errors, the users' SQL on a current parser (chDB 26.x), and retention (TTL) on chDB."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.clickhouse_users import users_sql
from pipeline.deadletter import DeadLetter
from pipeline.events import Event
from pipeline.settings import Secret, Settings
from pipeline.sink import dead_letter_columns, event_columns
from pipeline.warehouse import QueryError, WarehouseError, open_warehouse
from pipeline.warehouse.migrate import migrate
from tests.conftest import USERS_DATABASE, USERS_SETTINGS
from tests.integration.helpers import opened_store, run_cli
from tests.integration.test_hostile_ids import T, hostile_events

pytestmark = pytest.mark.integration

OTHER_DATABASE = "engagement_users_other"
INGEST = "engagement_ingest"
ANALYST = "engagement_analyst"
INGEST_PASSWORD = str(Secret.reveal(USERS_SETTINGS["clickhouse_ingest_password"]))  # type: ignore[arg-type]
ANALYST_PASSWORD = str(Secret.reveal(USERS_SETTINGS["clickhouse_analyst_password"]))  # type: ignore[arg-type]
SECRETS = [
    INGEST_PASSWORD,
    ANALYST_PASSWORD,
    hashlib.sha256(INGEST_PASSWORD.encode()).hexdigest(),
    hashlib.sha256(ANALYST_PASSWORD.encode()).hexdigest(),
]


@pytest.fixture()
def admin(clickhouse_server: tuple[str, int], tmp_path: Path) -> Settings:
    """The administrator (``default``) on a fresh pipeline database holding the hostile-id events, and
    another database with a table no pipeline user may read."""
    host, port = clickhouse_server
    settings = Settings.from_env(
        {}, warehouse="server", clickhouse_host=host, clickhouse_port=port, data_dir=tmp_path / "data", **USERS_SETTINGS
    )
    warehouse = open_warehouse(replace(settings, clickhouse_database="default"))
    try:
        for statement in (
            f"DROP DATABASE IF EXISTS {USERS_DATABASE}",
            f"DROP DATABASE IF EXISTS {OTHER_DATABASE}",
            f"CREATE DATABASE {OTHER_DATABASE}",
            f"CREATE TABLE {OTHER_DATABASE}.private (x String) ENGINE = Memory",
            f"INSERT INTO {OTHER_DATABASE}.private SELECT 'top secret'",
        ):
            warehouse.execute(statement)
    finally:
        warehouse.close()
    with opened_store(settings) as store:
        sourced = [(*event, "test", 0, offset) for offset, event in enumerate(hostile_events())]
        store.insert("engagement_events", event_columns(sourced, ingested_ms=1))
    return settings


def as_user(settings: Settings, user: str, password: str) -> Settings:
    return replace(settings, clickhouse_user=user, clickhouse_password=Secret(password))


def refused(settings: Settings, sql: str) -> int | None:
    """ClickHouse's error code for ``sql`` run as the settings' user (fails the test if it ran)."""
    warehouse = open_warehouse(settings)
    try:
        with pytest.raises(QueryError) as error:
            warehouse.query(sql)  # (execute() would route CREATE DATABASE through the default database)
        return error.value.code
    finally:
        warehouse.close()


def as_analyst_env() -> dict[str, str]:
    """`engagement sql`/`report`/`leaderboard` as the analyst; the main user is wrong on purpose, so a
    command that connected as it would fail."""
    return {
        "ENGAGEMENT_CLICKHOUSE_READONLY_USER": ANALYST,
        "ENGAGEMENT_CLICKHOUSE_READONLY_PASSWORD": ANALYST_PASSWORD,
        "ENGAGEMENT_CLICKHOUSE_USER": "nobody",
    }


def test_the_analyst_runs_reports_and_queries_but_cannot_write(admin: Settings) -> None:
    report = run_cli(admin, "report", "o'brien", "--as-of", "2026-02-01T00:00:00Z", "--json", **as_analyst_env())
    assert report.returncode == 0, report.stderr
    assert (orjson.loads(report.stdout)["likes"], orjson.loads(report.stdout)["account_id"]) == (2, "o'brien")
    board = run_cli(admin, "leaderboard", "--by", "engagers", "--json", **as_analyst_env())
    assert board.returncode == 0, board.stderr
    assert len(orjson.loads(board.stdout)["rows"]) == 11
    who = "SELECT (SELECT any(user) FROM system.processes WHERE query LIKE '%as-who%') AS u, count() AS n"
    counted = run_cli(admin, "sql", f"{who} FROM engagement_events FINAL", "--format", "json", **as_analyst_env())
    assert counted.returncode == 0, counted.stderr
    assert orjson.loads(counted.stdout) == [{"u": ANALYST, "n": len(hostile_events())}]

    analyst = as_user(admin, ANALYST, ANALYST_PASSWORD)
    for statement in (
        "INSERT INTO engagement_events (event_id) SELECT 'x'",
        "ALTER TABLE engagement_events DELETE WHERE 1",
        "ALTER TABLE engagement_events ADD COLUMN x String",
        "DROP TABLE engagement_events",
        "TRUNCATE TABLE engagement_events",
        "CREATE TABLE t (x String) ENGINE = Memory",
        "CREATE DATABASE elsewhere",
        "OPTIMIZE TABLE engagement_events FINAL",
        "RENAME TABLE engagement_events TO gone",
        "SET readonly = 0",
    ):
        assert refused(analyst, statement) == 164, statement  # READONLY
    warehouse = open_warehouse(analyst)
    try:
        with pytest.raises(QueryError) as native:  # the native protocol's block insert, as the worker writes
            warehouse.insert("engagement_events", {"event_id": ["x"]})
        assert native.value.code == 164
        # readonly = 2: query settings (as Grafana sends) are allowed
        changed = "SELECT value FROM system.settings WHERE name = 'max_threads' SETTINGS max_threads = 3"
        assert warehouse.query(changed).rows == [("3",)]
    finally:
        warehouse.close()
    assert refused(analyst, f"SELECT * FROM {OTHER_DATABASE}.private") == 291  # DATABASE_ACCESS_DENIED
    assert (
        refused(analyst, f"SELECT * FROM remote('127.0.0.1:{admin.clickhouse_port}', {OTHER_DATABASE}.private)") == 291
    )
    with opened_store(admin, migrated=False) as store:  # everything is still there
        assert store.query("SELECT count() FROM engagement_events FINAL").rows == [(len(hostile_events()),)]


def test_no_other_database_and_no_password_is_visible_to_the_analyst(admin: Settings) -> None:
    warehouse = open_warehouse(as_user(admin, ANALYST, ANALYST_PASSWORD))
    try:
        assert {r[0] for r in warehouse.query("SHOW DATABASES").rows} == {USERS_DATABASE, "system"}
        tables = [r[0] for r in warehouse.query("SELECT name FROM system.tables WHERE database = 'system'").rows]
        assert {"settings", "processes", "clusters", "tables", "columns"} <= set(tables)
        seen: list[Any] = []
        readable = 0
        for table in tables:
            try:
                seen.append(warehouse.query(f"SELECT * FROM system.{table} LIMIT 10000").rows)
                readable += 1
            except QueryError:
                continue
        assert readable > 20
    finally:
        warehouse.close()
    text = repr(seen)
    assert "top secret" not in text
    for secret in SECRETS:
        assert secret not in text


def test_the_ingest_user_writes_and_reads_its_database_only(admin: Settings) -> None:
    ingest = as_user(admin, INGEST, INGEST_PASSWORD)
    warehouse = open_warehouse(ingest)
    try:
        assert migrate(warehouse, ingest) == []  # applied by the administrator: the worker's start runs no DDL
        event = Event("ingested", "like", T, "fan", "plain")
        warehouse.insert("engagement_events", event_columns([(*event, "likes", 0, 1)], ingested_ms=1))
        assert warehouse.query("SELECT count() FROM engagement_events FINAL WHERE event_id = 'ingested'").rows == [(1,)]
        # the documented limit of users.d XML (SECURITY.md): no per-statement rights inside its database
        warehouse.execute("CREATE TABLE planted_here (x String) ENGINE = Memory")
        warehouse.execute("DROP TABLE planted_here")
    finally:
        warehouse.close()
    assert refused(ingest, f"SELECT * FROM {OTHER_DATABASE}.private") == 291
    assert refused(ingest, f"CREATE TABLE {OTHER_DATABASE}.planted (x String) ENGINE = Memory") == 291


def test_wrong_passwords_fail_with_clear_secret_free_errors(admin: Settings) -> None:
    wrong = "Wrong-Pw-Distinctive-4242"
    warehouse = open_warehouse(as_user(admin, ANALYST, wrong))
    try:
        with pytest.raises(WarehouseError) as error:
            warehouse.query("SELECT 1")
    finally:
        warehouse.close()
    assert "password" in str(error.value).lower() and ANALYST in str(error.value)
    assert wrong not in str(error.value)
    for args in (("sql", "SELECT 1"), ("report", "plain"), ("migrate",)):
        env = {**as_analyst_env(), "ENGAGEMENT_CLICKHOUSE_READONLY_PASSWORD": wrong}
        env.update(ENGAGEMENT_CLICKHOUSE_USER=INGEST, ENGAGEMENT_CLICKHOUSE_PASSWORD=wrong)
        result = run_cli(admin, *args, **env)
        assert result.returncode == 1 and "Traceback" not in result.stderr, (args, result.stderr[-500:])
        assert "password" in (result.stderr + result.stdout).lower(), (args, result.stderr[-500:])
        assert wrong not in result.stderr + result.stdout, args


def test_users_create_refuses_servers_without_access_control(admin: Settings) -> None:
    result = run_cli(admin, "users", "create")
    assert result.returncode == 2 and "engagement users xml" in result.stderr
    printed = run_cli(admin, "users", "xml")
    assert printed.returncode == 0 and "<password_sha256_hex>" in printed.stdout
    assert INGEST_PASSWORD not in printed.stdout and ANALYST_PASSWORD not in printed.stdout


def test_the_users_sql_parses_on_a_current_clickhouse(embedded_settings: Settings) -> None:
    settings = replace(embedded_settings, **USERS_SETTINGS)  # type: ignore[arg-type]
    on_a_cluster = replace(settings, warehouse="server", clickhouse_cluster="engagement_cluster")
    statements = users_sql(settings) + users_sql(on_a_cluster)  # with ALTER USER, ON CLUSTER
    assert any(s.startswith("ALTER USER") and "ON CLUSTER" in s for s in statements)
    with opened_store(embedded_settings, migrated=False) as store:
        for statement in statements:
            store.query(f"EXPLAIN AST {statement}")  # raises on a syntax error
    assert all(INGEST_PASSWORD not in s and ANALYST_PASSWORD not in s for s in statements)
    result = run_cli(embedded_settings, "users", "create", **{k: v for k, v in settings.to_env().items()})
    assert result.returncode == 2 and "no users" in result.stderr


def test_retention_drops_old_raw_events_and_dead_letters_where_ttl_exists(embedded_settings: Settings) -> None:
    settings = replace(embedded_settings, events_ttl_days=30, dead_letters_ttl_days=30)
    now_ms = int(time.time() * 1000)
    old, new = now_ms - 40 * 86_400_000, now_ms - 86_400_000
    with opened_store(settings) as store:
        events = [Event("old", "like", old, "a", "acct"), Event("new", "like", new, "a", "acct")]
        store.insert("engagement_events", event_columns([(*e, "likes", 0, i) for i, e in enumerate(events)], 1))
        letters = [
            DeadLetter(f"dl/{n}", "invalid_json", "", "likes", 0, n, -1, "{", 1, 0, (ms // 1000))
            for n, ms in enumerate((old, new))
        ]
        store.insert("engagement_dead_letters", dead_letter_columns(letters))
        for table in ("engagement_events", "engagement_dead_letters"):
            assert "TTL" in str(store.query(f"SHOW CREATE TABLE {table}").rows[0][0])
            store.execute(f"OPTIMIZE TABLE {table} FINAL")
        assert store.query("SELECT event_id FROM engagement_events FINAL").rows == [("new",)]
        assert store.query("SELECT dead_letter_id FROM engagement_dead_letters FINAL").rows == [("dl/1",)]


def test_tls_to_the_server(clickhouse_tls_server: tuple[int, int, Path], tmp_path: Path) -> None:
    _, secure, ca = clickhouse_tls_server
    settings = Settings.from_env(
        {}, warehouse="server", clickhouse_port=secure, clickhouse_secure=True, clickhouse_ca_file=str(ca),
        clickhouse_database="tls_test", data_dir=tmp_path,
    )  # fmt: skip
    with opened_store(settings) as store:  # migrations and a query, over TLS, the certificate verified
        assert store.query("SELECT count() FROM engagement_events").rows == [(0,)]
    result = run_cli(settings, "sql", "SELECT 1 AS one", "--format", "csv")
    assert (result.returncode, result.stdout.split()) == (0, ["one", "1"]), result.stderr
    untrusted = open_warehouse(replace(settings, clickhouse_ca_file=""))  # the system's CAs did not sign it
    try:
        with pytest.raises(WarehouseError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.query("SELECT 1")
    finally:
        untrusted.close()
    plain = open_warehouse(replace(settings, clickhouse_secure=False))  # plaintext on the TLS port: refused
    try:
        with pytest.raises(WarehouseError):
            plain.query("SELECT 1")
    finally:
        plain.close()
