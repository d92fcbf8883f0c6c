"""Kafka security against the embedded tansu broker.

- TLS: ``engagement ingest`` and a real worker (Faust/aiokafka) through TLS, trusting a test CA
  (ENGAGEMENT_KAFKA_SECURITY_PROTOCOL=SSL, _SSL_CAFILE). tansu 0.6's own TLS cannot be switched on (its
  command line refuses ``--cert`` together with ``--key``), so TLS is terminated in front of it, as a load
  balancer would; the broker advertises the terminator. A CA that did not sign the broker fails in seconds.
- SASL: tansu with ``--authentication`` offers SCRAM-SHA-256 and SCRAM-SHA-512 (not PLAIN). Its in-memory
  storage never keeps SCRAM credentials (``tansu user create`` answers OK, logins then fail with
  ``unknown-user``), so a login that succeeds cannot be shown on it; refused logins are: ingest, the worker
  and the generator stop within seconds with an error naming the authentication failure, and no output
  holds the password.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.events import Event
from pipeline.processes import free_port
from pipeline.settings import Secret, Settings
from tests.integration.helpers import opened_store, run_cli, running_worker, wait_processed
from tests.tls import TlsFiles, TlsTerminator, make_tls

pytestmark = pytest.mark.integration

PASSWORD = "Kafka-Pw-Distinctive-8xQ!"  # configured everywhere below; must never be printed
T0 = 1_767_225_600_000


@pytest.fixture()
def tls_broker(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, TlsFiles]]:
    files = make_tls(tmp_path / "tls")
    port = free_port()
    with (
        EmbeddedBroker(log_path=tmp_path / "tansu.log", advertised_port=port) as broker,
        TlsTerminator(files, broker.port, port),
    ):
        yield broker, files


def events_file(path: Path, accounts: int = 5, likes: int = 4) -> Path:
    lines = [
        orjson.dumps(Event(f"e-{a}-{i}", "like", T0 + i * 1000, f"fan-{i}", f"acct-{a}").to_json_dict())
        for a in range(accounts)
        for i in range(likes)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_ingest_and_worker_over_tls(tls_broker: tuple[EmbeddedBroker, TlsFiles], embedded_settings: Settings) -> None:
    broker, files = tls_broker
    settings = replace(
        embedded_settings,
        bootstrap_servers=broker.bootstrap_servers,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(files.ca),
        kafka_sasl_password=Secret(PASSWORD),  # configured but unused with SSL: it must not leak either
        clickhouse_password=Secret(PASSWORD),
        partitions=2,
        web_port=free_port(),
        web_host="0.0.0.0",  # /query must then refuse to answer
        commit_interval=0.3,
    )
    ingested = run_cli(settings, "ingest", str(events_file(settings.data_dir.parent / "events.jsonl")), "--quiet")
    assert ingested.returncode == 0, ingested.stderr
    assert "published 20 events" in ingested.stdout
    with running_worker(settings):
        wait_processed(settings)  # the worker's group committed everything, read through TLS
        base = f"http://127.0.0.1:{settings.web_port}"
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "engagement_events_consumed_total" in metrics and PASSWORD not in metrics
        request = urllib.request.Request(base + "/query", data=orjson.dumps({"sql": "SELECT 1"}))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403 and "ENGAGEMENT_WEB_HOST=0.0.0.0" in refused.value.read().decode()
    with opened_store(settings, migrated=False) as store:
        rows = store.query("SELECT account_id, sum(likes) FROM engagement_windows FINAL GROUP BY account_id")
    assert sorted(rows.rows) == [(f"acct-{a}", 4) for a in range(5)]
    log = (settings.data_dir.parent / "worker.log").read_text(errors="replace")
    assert PASSWORD not in log + ingested.stdout + ingested.stderr


def test_an_untrusted_broker_certificate_fails_fast(
    tls_broker: tuple[EmbeddedBroker, TlsFiles], embedded_settings: Settings, tmp_path: Path
) -> None:
    broker, _ = tls_broker
    other = make_tls(tmp_path / "other", prefix="other-")
    settings = replace(
        embedded_settings,
        bootstrap_servers=broker.bootstrap_servers,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(other.ca),
    )
    started = time.monotonic()
    result = run_cli(settings, "ingest", str(events_file(tmp_path / "e.jsonl")), "--quiet")
    assert time.monotonic() - started < 20
    assert result.returncode == 3, result.stderr
    assert "TLS handshake with Kafka" in result.stderr and "certificate verify failed" in result.stderr


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_a_refused_sasl_login_stops_ingest_worker_and_generator_fast(
    tmp_path: Path, embedded_settings: Settings, mechanism: str
) -> None:
    with EmbeddedBroker(log_path=tmp_path / "tansu.log", authentication=True) as broker:
        settings = replace(
            embedded_settings,
            bootstrap_servers=broker.bootstrap_servers,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism=mechanism,  # type: ignore[arg-type]
            kafka_sasl_username="pipeline",
            kafka_sasl_password=Secret(PASSWORD),
        )
        commands = [
            ("ingest", str(events_file(tmp_path / "e.jsonl")), "--quiet"),
            ("worker",),
            ("generate", "--events", "10"),
        ]
        for command in commands:
            started = time.monotonic()
            try:
                result = run_cli(settings, *command)
            except subprocess.TimeoutExpired:
                pytest.fail(f"engagement {command[0]} hung on a refused login")
            assert time.monotonic() - started < 30, command
            assert result.returncode == 3, (command, result.stderr[-800:])
            assert "Kafka" in result.stderr and "authentication failed" in result.stderr, result.stderr
            reason = "is the mechanism enabled" if mechanism == "PLAIN" else "refused user 'pipeline'"
            assert reason in result.stderr, result.stderr
            assert PASSWORD not in result.stdout + result.stderr
