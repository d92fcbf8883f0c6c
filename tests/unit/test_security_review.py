"""Security fixes of a code review, without a network: no secret in DEBUG logs of the Kafka clients, the
credential check's socket closed and malformed answers reported as KafkaAuthError, names that go into SQL,
XML and ZooKeeper paths validated, the users' networks narrowed from the command line.

The fake brokers are in-process socket pairs: check_credentials' connection is one end, a thread the other.
"""

from __future__ import annotations

import gc
import logging
import socket
import ssl
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaConfigurationError

from pipeline import cli, kafka_security
from pipeline.kafka_security import KafkaAuthError, _Scram, bootstrap_address, check_credentials, kafka_python_config
from pipeline.log_redaction import MASK
from pipeline.settings import Secret, Settings, SettingsError
from tests.tls import make_tls

PASSWORD = "Kafka-Debug-Pw-5150!"


def test_kafka_admin_client_debug_log_has_no_password(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env(
        {},
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="pipeline",
        kafka_sasl_password=Secret(PASSWORD),
    )
    config = kafka_python_config(settings)
    assert config["sasl_plain_password"] == PASSWORD  # the client still gets the password itself
    caplog.set_level(logging.DEBUG, logger="kafka")
    # kafka-python logs its keyword arguments before it checks them: an unknown one stops it there, offline
    with pytest.raises(KafkaConfigurationError):
        KafkaAdminClient(**config, not_a_kafka_option=1)
    logged = [r for r in caplog.records if "Starting KafkaAdminClient with configuration" in r.getMessage()]
    assert logged, "kafka-python no longer logs its configuration: adapt this test"
    assert PASSWORD not in caplog.text and f"'sasl_plain_password': '{MASK}'" in caplog.text


def test_secrets_are_masked_in_every_logger() -> None:
    secret = Secret("another-Secret-Value-42")
    secret.reveal()
    record = logging.getLogger("any.library").makeRecord(
        "any.library", logging.INFO, "f", 1, "pw=%s", (secret.reveal(),), None
    )
    assert record.getMessage() == f"pw={MASK}"
    plain = logging.getLogger("x").makeRecord("x", logging.INFO, "f", 1, "nothing %d", (5,), None)
    assert plain.getMessage() == "nothing 5" and plain.args == (5,)


@contextmanager
def fake_broker(
    monkeypatch: pytest.MonkeyPatch, serve: Callable[[socket.socket], None]
) -> Iterator[list[tuple[str, int]]]:
    """check_credentials connects to ``serve`` (run in a thread on the other end of a socket pair); yields
    the (host, port) it was asked for."""
    asked: list[tuple[str, int]] = []
    client, server = socket.socketpair()

    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        asked.append(address)
        return client

    monkeypatch.setattr(kafka_security.socket, "create_connection", connect)
    thread = threading.Thread(target=serve, args=(server,), daemon=True)
    thread.start()
    try:
        yield asked
    finally:
        thread.join(5)
        server.close()


def answer(sock: socket.socket, body: bytes) -> None:
    """Read one Kafka request frame and answer it with ``body`` (after the correlation id)."""
    (size,) = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))
    request = sock.recv(size, socket.MSG_WAITALL)
    correlation = request[4:8]
    sock.sendall(struct.pack(">i", 4 + len(body)) + correlation + body)


def test_credential_check_closes_its_tls_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = make_tls(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.cert, files.key)

    def serve(sock: socket.socket) -> None:
        with server_context.wrap_socket(sock, server_side=True) as tls:
            try:
                while tls.recv(1):
                    pass
            except (OSError, ssl.SSLError):
                pass

    settings = Settings.from_env(
        {}, bootstrap_servers="localhost:9093", kafka_security_protocol="SSL", kafka_ssl_cafile=str(files.ca)
    )
    with warnings.catch_warnings(record=True) as caught, fake_broker(monkeypatch, serve) as asked:
        warnings.simplefilter("always")
        check_credentials(settings)  # the handshake succeeds: nothing to raise
        gc.collect()
    assert asked == [("localhost", 9093)]
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


def test_bootstrap_address_defaults_the_port() -> None:
    assert bootstrap_address("localhost") == ("localhost", 9092)
    assert bootstrap_address(" broker:9093 ") == ("broker", 9093)
    assert bootstrap_address("[::1]:9094") == ("::1", 9094)
    assert bootstrap_address("[::1]") == ("::1", 9092)
    assert bootstrap_address("::1") == ("::1", 9092)
    for bad in ("broker:x", "broker:0", "broker:70000", "broker:", "[::1]:"):
        with pytest.raises(KafkaAuthError, match="no valid port"):
            bootstrap_address(bad)


def test_credential_check_without_a_port_uses_9092(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, int]] = []

    def unreachable(address: tuple[str, int], timeout: float) -> socket.socket:
        asked.append(address)
        raise ConnectionRefusedError

    monkeypatch.setattr(kafka_security.socket, "create_connection", unreachable)
    settings = Settings.from_env(
        {}, bootstrap_servers="localhost", kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u"
    )
    check_credentials(settings)  # an unreachable broker is left to the clients
    assert asked == [("localhost", 9092)]


def test_malformed_broker_answers_are_auth_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env(
        {},
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="pipeline",
        kafka_sasl_password=Secret(PASSWORD),
    )
    # SaslHandshake v1 refused (UNSUPPORTED_SASL_MECHANISM), offering a name that is not UTF-8
    offered = b"\xff\xfeX"
    body = struct.pack(">hi", 33, 1) + struct.pack(">h", len(offered)) + offered
    with (
        fake_broker(monkeypatch, lambda sock: answer(sock, body)),
        pytest.raises(KafkaAuthError, match="does not offer SCRAM-SHA-256"),
    ):
        check_credentials(settings)
    scram = _Scram("user", "pencil", "SCRAM-SHA-256", nonce="abc")
    for server_first in (b"r=abcdef,s=AAAA,i=many", b"r=abcdef,s=not*base64!,i=4096", b"r=abcdef,s=AAAA,i=0"):
        with pytest.raises(KafkaAuthError, match="unexpected server message"):
            scram.final(server_first, "refused")
    with pytest.raises(KafkaAuthError, match="signature does not match"):
        scram.verify(b"v=***", "refused")


def test_names_that_reach_sql_xml_and_zookeeper_are_validated() -> None:
    for database in ("odd`db", "a/b", "x'y", "", "1st", "db name"):
        with pytest.raises(SettingsError, match="ENGAGEMENT_CLICKHOUSE_DATABASE"):
            Settings.from_env({}, clickhouse_database=database)
    for user in ("a<b", "x y", "", "-x", "u&v"):
        with pytest.raises(SettingsError, match="ENGAGEMENT_CLICKHOUSE_INGEST_USER"):
            Settings.from_env({}, clickhouse_ingest_user=user)
        with pytest.raises(SettingsError, match="ENGAGEMENT_CLICKHOUSE_ANALYST_USER"):
            Settings.from_env({"ENGAGEMENT_CLICKHOUSE_ANALYST_USER": user})
    fine = Settings.from_env({}, clickhouse_database="t_scale_out2", clickhouse_ingest_user="svc.ingest-1")
    assert (fine.clickhouse_database, fine.clickhouse_ingest_user) == ("t_scale_out2", "svc.ingest-1")


def test_users_xml_networks_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ENGAGEMENT_CLICKHOUSE_INGEST_PASSWORD", "ingest-" + PASSWORD)
    monkeypatch.setenv("ENGAGEMENT_CLICKHOUSE_ANALYST_PASSWORD", "analyst-" + PASSWORD)
    assert cli.main(["users", "xml", "--network", "10.0.0.0/8", "--network", "::1"]) == 0
    out = capsys.readouterr().out
    assert out.count("<networks><ip>10.0.0.0/8</ip><ip>::1</ip></networks>") == 2 and "::/0" not in out
    assert cli.main(["users", "xml"]) == 0
    assert capsys.readouterr().out.count("<networks><ip>::/0</ip></networks>") == 2  # the default: anywhere
    assert cli.main(["users", "xml", "--network", "10.0.0.0/8</ip><ip>::/0"]) == 2
    assert "not an IP address or network" in capsys.readouterr().err
