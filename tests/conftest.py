"""Shared fixtures. Integration fixtures start real services: the embedded broker (tansu), chDB, and a
private ClickHouse 18.16 server (Debian package; ``make test`` installs it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import log_redaction
from pipeline.broker import EmbeddedBroker
from pipeline.clickhouse_users import users_xml
from pipeline.kafka_admin import ensure_topics
from pipeline.processes import free_port, spawn, stop, wait_for_port
from pipeline.settings import Secret, Settings

ROOT = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = ROOT / "tests" / "services" / "clickhouse-server.sh"
# The least-privilege users of the private server (pipeline.clickhouse_users), confined to this database
USERS_DATABASE = "engagement_users_test"
USERS_SETTINGS: dict[str, object] = {
    "clickhouse_database": USERS_DATABASE,
    "clickhouse_ingest_password": Secret("ingest-Pw-7Qz!k3'\\x"),
    "clickhouse_analyst_password": Secret('analyst-Pw-9Rw#m4"y'),
}


@pytest.fixture(autouse=True)
def _forget_secrets_revealed_by_the_test() -> Iterator[None]:
    """A revealed secret is masked in every later log record of the process (pipeline.log_redaction): a
    test's made-up secret ("short") would mask that word in the log text another test checks."""
    before = set(log_redaction._secrets)
    yield
    log_redaction._secrets.intersection_update(before)


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A private ClickHouse server on a free port for the whole session: (host, port). Besides ``default``
    (no password), it has the pipeline's ingest and analyst users of ``USERS_SETTINGS`` (users.d XML)."""
    if not Path("/usr/sbin/clickhouse-server").exists():
        pytest.fail("clickhouse-server is not installed: run `tests/services/clickhouse-server.sh install`")
    directory = tmp_path_factory.mktemp("clickhouse")
    (directory / "users.d").mkdir()
    users = users_xml(Settings.from_env({}, **USERS_SETTINGS), networks=["127.0.0.1"])
    (directory / "users.d" / "engagement.xml").write_text(users, encoding="utf-8")
    port = free_port()
    process = spawn([str(SERVER_SCRIPT), "start", str(directory), str(port)], log_path=directory / "stdout.log")
    try:
        wait_for_port("127.0.0.1", port, 60, process)
        yield ("127.0.0.1", port)
    finally:
        stop(process, timeout=30)


@pytest.fixture(scope="session")
def clickhouse_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, Path]]:
    """A second private ClickHouse server with TLS: (plain port, secure port, the CA file that signed it)."""
    from tests.tls import make_tls

    directory = tmp_path_factory.mktemp("clickhouse-tls")
    files = make_tls(directory / "tls")
    port, secure = free_port(), free_port()
    command = [str(SERVER_SCRIPT), "start", str(directory), str(port), str(secure), str(files.cert), str(files.key)]
    process = spawn(command, log_path=directory / "stdout.log")
    try:
        wait_for_port("127.0.0.1", secure, 60, process)
        yield port, secure, files.ca
    finally:
        stop(process, timeout=30)


@pytest.fixture()
def server_settings(clickhouse_server: tuple[str, int], tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for the server warehouse, with a database of this test's own."""
    host, port = clickhouse_server
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:60]
    return Settings.from_env(
        {},
        warehouse="server",
        clickhouse_host=host,
        clickhouse_port=port,
        clickhouse_database=name,
        data_dir=tmp_path / "data",
    )


@pytest.fixture()
def embedded_settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, warehouse="embedded", data_dir=tmp_path / "data")


@pytest.fixture(params=["embedded", "server"])
def backend_settings(request: pytest.FixtureRequest) -> Settings:
    """The settings of each backend in turn: chDB 26.x (embedded) and the ClickHouse 18.16 server."""
    chosen: Settings = request.getfixturevalue(f"{request.param}_settings")
    return chosen


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as running:
        yield running


@pytest.fixture()
def live_settings(broker: EmbeddedBroker, embedded_settings: Settings) -> Settings:
    """Settings for a real worker on the embedded broker and store: 2 partitions, topics created."""
    settings = replace(
        embedded_settings,
        bootstrap_servers=broker.bootstrap_servers,
        partitions=2,
        web_port=free_port(),
        commit_interval=0.3,
    )
    ensure_topics(settings)
    return settings
