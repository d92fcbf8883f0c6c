"""Security without a network: settings, the Kafka client configuration and SCRAM, the ClickHouse users'
XML and SQL, the read-only guard, the worker's local-only endpoints, secret-free errors, migrations that
run no DDL when nothing is pending."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import ssl
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import faust
import pytest

from pipeline.clickhouse_users import PIPELINE_TABLES, supports_access_control, users_sql, users_xml
from pipeline.kafka_security import KafkaAuthError, _Scram, faust_credentials, kafka_python_config
from pipeline.readonly_sql import ReadOnlyViolation, check_read_only
from pipeline.settings import Secret, Settings, SettingsError
from pipeline.warehouse.base import QueryError, QueryResult
from pipeline.warehouse.cluster import LOCAL_SUFFIX, SHARDING_KEYS
from pipeline.warehouse.migrate import MIGRATIONS_TABLE, discover, migrate
from pipeline.warehouse.server import ServerWarehouse, connection_options
from pipeline.worker import is_loopback, local_endpoint_refusal
from tests.tls import make_tls

PASSWORD = "S3cret-Distinctive-Pw!"


def test_security_settings_parse_and_validate() -> None:
    settings = Settings.from_env(
        {
            "ENGAGEMENT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "ENGAGEMENT_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "ENGAGEMENT_KAFKA_SASL_USERNAME": "pipeline",
            "ENGAGEMENT_KAFKA_SASL_PASSWORD": PASSWORD,
            "ENGAGEMENT_KAFKA_SSL_CHECK_HOSTNAME": "false",
            "ENGAGEMENT_CLICKHOUSE_SECURE": "1",
            "ENGAGEMENT_WEB_ALLOW_REMOTE_QUERY": "yes",
        }
    )
    assert settings.kafka_sasl_password == Secret(PASSWORD)
    assert (settings.kafka_ssl_check_hostname, settings.clickhouse_secure, settings.web_allow_remote_query) == (
        False,
        True,
        True,
    )
    assert Settings.from_env(settings.to_env()) == settings  # a child process gets the same settings
    assert all(PASSWORD not in value for value in settings.masked().values())
    with pytest.raises(SettingsError, match="ENGAGEMENT_KAFKA_SECURITY_PROTOCOL"):
        Settings.from_env({"ENGAGEMENT_KAFKA_SECURITY_PROTOCOL": "TLS"})
    with pytest.raises(SettingsError, match="ENGAGEMENT_KAFKA_SASL_MECHANISM"):
        Settings.from_env({"ENGAGEMENT_KAFKA_SASL_MECHANISM": "GSSAPI"})
    with pytest.raises(SettingsError, match="ENGAGEMENT_KAFKA_SASL_USERNAME"):
        Settings.from_env({"ENGAGEMENT_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    with pytest.raises(SettingsError, match="ENGAGEMENT_CLICKHOUSE_SECURE"):
        Settings.from_env({"ENGAGEMENT_CLICKHOUSE_SECURE": "maybe"})


def test_every_kafka_client_gets_the_same_tls_and_sasl(tmp_path: Path) -> None:
    files = make_tls(tmp_path)
    plain = Settings.from_env({})
    assert kafka_python_config(plain) == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert faust_credentials(plain) is None
    sasl_ssl = Settings.from_env(
        {},
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="pipeline",
        kafka_sasl_password=Secret(PASSWORD),
        kafka_ssl_cafile=str(files.ca),
        kafka_ssl_certfile=str(files.cert),
        kafka_ssl_keyfile=str(files.key),
    )
    config = kafka_python_config(sasl_ssl)
    assert {k: v for k, v in config.items() if k != "ssl_context"} == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "pipeline",
        "sasl_plain_password": PASSWORD,
    }
    context = config["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    credentials = faust_credentials(sasl_ssl)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.mechanism.value, credentials.protocol.value, credentials.username) == (
        "SCRAM-SHA-512",
        "SASL_SSL",
        "pipeline",
    )
    assert PASSWORD not in repr(credentials)
    tls_only = Settings.from_env({}, kafka_security_protocol="SSL", kafka_ssl_check_hostname=False)
    assert isinstance(faust_credentials(tls_only), faust.SSLCredentials)
    assert kafka_python_config(tls_only)["ssl_context"].check_hostname is False


def test_scram_client_matches_rfc_7677_and_rejects_bad_servers() -> None:
    scram = _Scram("user", "pencil", "SCRAM-SHA-256", nonce="rOprNGfwEbeRWgbNEkqO")
    assert scram.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    assert scram.final(server_first, "refused") == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    scram.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", "refused")
    with pytest.raises(KafkaAuthError, match="signature does not match"):
        scram.verify(b"v=" + base64.b64encode(b"forged"), "refused")
    with pytest.raises(KafkaAuthError, match="refused: invalid-proof"):
        scram.verify(b"e=invalid-proof", "refused")
    with pytest.raises(KafkaAuthError, match="unexpected server message"):
        _Scram("user", "pencil", "SCRAM-SHA-512").final(b"r=not-our-nonce,s=AAAA,i=1", "refused")


def test_scram_sha_512_proof_is_what_a_server_verifies() -> None:
    """The client's proof, checked the way a broker does (RFC 5802 section 3) from the stored key alone."""
    salt, iterations, password = b"salt-bytes", 4096, "pässword,=x"
    scram = _Scram("na,me=", password, "SCRAM-SHA-512")
    assert scram.first().startswith(b"n,,n=na=2Cme=3D,r=")
    server_first = f"r={scram.nonce}srv,s={base64.b64encode(salt).decode()},i={iterations}".encode()
    final = scram.final(server_first, "refused").decode()
    fields = dict(part.split("=", 1) for part in final.split(","))
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    stored_key = hashlib.sha512(hmac.digest(salted, b"Client Key", "sha512")).digest()
    auth_message = f"{scram.client_first_bare},{server_first.decode()},c=biws,r={fields['r']}".encode()
    signature = hmac.digest(stored_key, auth_message, "sha512")
    client_key = bytes(a ^ b for a, b in zip(base64.b64decode(fields["p"]), signature, strict=True))
    assert hashlib.sha512(client_key).digest() == stored_key
    server_key = hmac.digest(salted, b"Server Key", "sha512")
    scram.verify(b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha512")), "refused")


def users_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "clickhouse_database": "engagement",
        "clickhouse_ingest_password": Secret("ingest-" + PASSWORD),
        "clickhouse_analyst_password": Secret("analyst-" + PASSWORD),
    }
    return Settings.from_env({}, **{**values, **overrides})


def test_users_xml_confines_both_users_to_the_database_with_hashed_passwords() -> None:
    xml = users_xml(users_settings(), networks=["10.0.0.0/8", "::1"])
    assert PASSWORD not in xml
    root = ET.fromstring(xml)
    assert root.tag == "yandex"
    profiles = root.find("profiles")
    assert profiles is not None
    assert {p.tag: p.findtext("readonly") for p in profiles} == {
        "engagement_ingest": "0",
        "engagement_analyst": "2",
    }
    for user, password in (("engagement_ingest", "ingest-"), ("engagement_analyst", "analyst-")):
        node = root.find(f"users/{user}")
        assert node is not None
        assert node.findtext("password_sha256_hex") == hashlib.sha256((password + PASSWORD).encode()).hexdigest()
        assert [d.text for d in node.findall("allow_databases/database")] == ["engagement"]
        assert [ip.text for ip in node.findall("networks/ip")] == ["10.0.0.0/8", "::1"]
        assert node.findtext("profile") == user
    with pytest.raises(SettingsError, match="ENGAGEMENT_CLICKHOUSE_ANALYST_PASSWORD"):
        users_xml(users_settings(clickhouse_analyst_password=Secret("short")))


def created_tables(ddl: str, qualifier: str = "") -> set[str]:
    return set(re.findall(r"^CREATE TABLE IF NOT EXISTS " + re.escape(qualifier) + r"(\w+)", ddl, re.M))


def test_pipeline_tables_are_the_tables_the_schemas_create() -> None:
    schemas = "\n".join(m.text for m in discover())
    assert created_tables(schemas) == set(SHARDING_KEYS)
    assert set(PIPELINE_TABLES) == created_tables(schemas) | {MIGRATIONS_TABLE}
    assert len(PIPELINE_TABLES) == len(set(PIPELINE_TABLES))


def test_users_sql_grants_every_table_the_ingest_user_touches() -> None:
    statements = users_sql(users_settings(clickhouse_database="pipeline_db"))
    assert all(PASSWORD not in s for s in statements)
    ingest_hash = hashlib.sha256(("ingest-" + PASSWORD).encode()).hexdigest()
    analyst_hash = hashlib.sha256(("analyst-" + PASSWORD).encode()).hexdigest()
    # re-running changes the passwords: every CREATE USER IF NOT EXISTS is followed by an ALTER USER
    assert statements[:4] == [
        f"CREATE USER IF NOT EXISTS `engagement_ingest` IDENTIFIED WITH sha256_hash BY '{ingest_hash}'",
        f"ALTER USER `engagement_ingest` IDENTIFIED WITH sha256_hash BY '{ingest_hash}'",
        f"CREATE USER IF NOT EXISTS `engagement_analyst` IDENTIFIED WITH sha256_hash BY '{analyst_hash}'"
        " SETTINGS readonly = 2",
        f"ALTER USER `engagement_analyst` IDENTIFIED WITH sha256_hash BY '{analyst_hash}' SETTINGS readonly = 2",
    ]
    grants = [s for s in statements if s.startswith("GRANT")]
    schemas = "\n".join(m.text for m in discover())
    assert grants == [
        *(f"GRANT SELECT, INSERT ON `pipeline_db`.{table} TO `engagement_ingest`" for table in PIPELINE_TABLES),
        "GRANT SELECT ON `pipeline_db`.* TO `engagement_analyst`",
    ]
    assert {g.split(".", 1)[1].split()[0] for g in grants[:-1]} == created_tables(schemas) | {MIGRATIONS_TABLE}
    assert (supports_access_control((18, 16)), supports_access_control((20, 5)), supports_access_control((26, 9))) == (
        False,
        True,
        True,
    )


def test_users_sql_on_a_cluster_grants_the_local_tables_on_every_node() -> None:
    # Every table the cluster DDL creates (the snapshot of tests/golden, checked against the renderer in
    # tests/unit/test_cluster_ddl.py): reads and inserts through a Distributed table reach its *_local table
    # as the calling user
    cluster_ddl = (Path(__file__).resolve().parent.parent / "golden" / "cluster_ddl.sql").read_text(encoding="utf-8")
    settings = users_settings(warehouse="server", clickhouse_cluster="engagement_cluster")
    statements = users_sql(settings)
    on_cluster = " ON CLUSTER 'engagement_cluster'"
    assert all(on_cluster in s for s in statements)
    ingest_grants = [s for s in statements if s.startswith("GRANT") and "engagement_ingest" in s]
    assert ingest_grants[-1] == f"GRANT{on_cluster} SELECT ON system.clusters TO `engagement_ingest`"
    granted = {s.split("`engagement`.", 1)[1].split()[0] for s in ingest_grants[:-1]}
    assert granted == created_tables(cluster_ddl, "`engagement`.")
    assert {t + LOCAL_SUFFIX for t in SHARDING_KEYS} <= granted
    plain = users_sql(replace(settings, clickhouse_cluster_engines="plain"))
    assert not any("ON CLUSTER" in s for s in plain)  # no ZooKeeper: `users create` runs them on every node
    assert set(plain) == {s.replace(on_cluster, "") for s in statements}
    assert (supports_access_control((18, 16)), supports_access_control((20, 5)), supports_access_control((26, 9))) == (
        False,
        True,
        True,
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM file('/etc/passwd', 'TSV', 'x String')",
        "SELECT * FROM url('http://169.254.169.254/latest/meta-data/', 'TSV', 'x String')",
        "SELECT * FROM remote('db:9000', system.one)",
        "SELECT * FROM `s3`('http://x/y', 'CSV')",
        "WITH t AS (SELECT * FROM executable('id', 'TSV', 'x String')) SELECT * FROM t",
        "SELECT * FROM engagement_events JOIN mysql('h:3306', 'd', 't', 'u', 'p') USING x",
        "SELECT * FROM /* hidden */ URL ('http://x')",
    ],
)
def test_table_functions_reaching_outside_are_refused(sql: str) -> None:
    with pytest.raises(ReadOnlyViolation, match=r"table function \w+\(\) is refused"):
        check_read_only(sql)


def test_reading_statements_that_only_mention_such_names_pass() -> None:
    for sql in (
        "SELECT 'file(x)', domain(url) AS host FROM engagement_events WHERE account_id = 'remote(1)'",
        "SELECT count() FROM engagement_dead_letters WHERE payload LIKE '%url(%'",
    ):
        check_read_only(sql)


def test_loopback_hosts() -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST")] == [True] * 6
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "worker.example", "", None)] == [False] * 6


def test_query_endpoints_answer_this_machine_only_unless_allowed() -> None:
    local = Settings.from_env({})
    assert local_endpoint_refusal(local, "127.0.0.1") is None
    assert local_endpoint_refusal(local, "10.0.0.5") == "this endpoint answers requests from this machine only"
    exposed = Settings.from_env({}, web_host="0.0.0.0")
    refusal = local_endpoint_refusal(exposed, "127.0.0.1")
    assert refusal is not None and "ENGAGEMENT_WEB_ALLOW_REMOTE_QUERY=1" in refusal
    allowed = Settings.from_env({}, web_host="0.0.0.0", web_allow_remote_query=True)
    assert local_endpoint_refusal(allowed, "10.0.0.5") is None


def test_clickhouse_connection_options() -> None:
    settings = Settings.from_env(
        {},
        clickhouse_user="engagement_ingest",
        clickhouse_password=Secret(PASSWORD),
        clickhouse_secure=True,
        clickhouse_ca_file="/etc/ca.pem",
        clickhouse_verify=False,
    )
    options = connection_options(settings)
    assert {k: options[k] for k in ("user", "password", "secure", "verify", "ca_certs")} == {
        "user": "engagement_ingest",
        "password": PASSWORD,
        "secure": True,
        "verify": False,
        "ca_certs": "/etc/ca.pem",
    }
    assert "settings" not in options
    session = connection_options(settings, read_only=True)
    assert (session["user"], session["settings"]) == ("engagement_ingest", {"readonly": 1})
    analyst = Settings.from_env(
        {}, clickhouse_readonly_user="engagement_analyst", clickhouse_readonly_password=Secret("a" + PASSWORD)
    )
    reader = connection_options(analyst, read_only=True)
    assert (reader["user"], reader["password"], "settings" in reader) == ("engagement_analyst", "a" + PASSWORD, False)


def test_server_errors_never_carry_the_password() -> None:
    warehouse = ServerWarehouse(Settings.from_env({}, clickhouse_password=Secret(PASSWORD)))  # connects lazily
    assert warehouse._scrub(f"could not log in with {PASSWORD} as x") == "could not log in with ******** as x"
    assert (
        ServerWarehouse(Settings.from_env({}))._scrub("no password: nothing to hide") == "no password: nothing to hide"
    )


class RecordingWarehouse:
    """A warehouse whose migrations table lists ``applied``; records every statement executed."""

    kind = "fake"
    database = "engagement"

    def __init__(self, applied: list[int] | None) -> None:
        self.applied = applied
        self.executed: list[str] = []

    def query(self, sql: str, params: Any = None) -> QueryResult:
        if self.applied is None:
            raise QueryError("Table engagement.engagement_schema_migrations doesn't exist", 60)
        return QueryResult(["version"], [(v,) for v in self.applied])

    def execute(self, sql: str, params: Any = None) -> None:
        self.executed.append(sql)
        if sql.startswith("CREATE TABLE IF NOT EXISTS") and self.applied is None:
            self.applied = []  # the migrations table exists from now on

    def insert(self, table: str, columns: Any) -> None:
        self.executed.append(f"INSERT {table}")

    def server_version(self) -> tuple[int, int]:
        return (26, 9)

    def close(self) -> None: ...


def test_migrate_runs_no_ddl_when_nothing_is_pending() -> None:
    everything = [m.version for m in discover()]
    done = RecordingWarehouse(everything)
    assert migrate(done, Settings.from_env({})) == [] and done.executed == []  # type: ignore[arg-type]
    fresh = RecordingWarehouse(None)
    assert [m.version for m in migrate(fresh, Settings.from_env({}))] == everything  # type: ignore[arg-type]
    assert fresh.executed[0] == "CREATE DATABASE IF NOT EXISTS `engagement`"


class DeniedWarehouse(RecordingWarehouse):
    """A warehouse where the migrations table exists but this user may not read it (code 497)."""

    def query(self, sql: str, params: Any = None) -> QueryResult:
        raise QueryError("engagement_ingest: Not enough privileges", 497)


def test_migrate_raises_when_the_migrations_table_cannot_be_read() -> None:
    # access denied is not "nothing applied yet": running the DDL would fail later and less clearly
    denied = DeniedWarehouse([])
    with pytest.raises(QueryError, match="Not enough privileges"):
        migrate(denied, Settings.from_env({}))  # type: ignore[arg-type]
    assert denied.executed == []


def test_an_unknown_engagement_variable_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    env = {"ENGAGEMENT_BATCH_MAX_EVENT": "5", "ENGAGEMENT_IMAGE": "engagement:dev", "OTHER": "x"}
    with caplog.at_level(logging.WARNING, logger="pipeline.settings"):
        settings = Settings.from_env(env)
        Settings.from_env(env)  # once per process
    assert settings.batch_max_events == Settings().batch_max_events
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        "ENGAGEMENT_BATCH_MAX_EVENT is not a setting and is ignored (did you mean ENGAGEMENT_BATCH_MAX_EVENTS?)"
    ]
