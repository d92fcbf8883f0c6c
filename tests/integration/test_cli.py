"""The ``engagement`` command as a user runs it: ingest, generate, migrate, config, demo (and Ctrl-C)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer

from pipeline.broker import EmbeddedBroker
from pipeline.settings import Settings

pytestmark = pytest.mark.integration
# Every secret setting, set to a distinctive value: none may ever be printed or logged
SECRET_ENV = {
    f"ENGAGEMENT_{name}": f"pw-{name.lower()}-Zq7#{i}"
    for i, name in enumerate(
        ("CLICKHOUSE_PASSWORD", "CLICKHOUSE_READONLY_PASSWORD", "CLICKHOUSE_INGEST_PASSWORD",
         "CLICKHOUSE_ANALYST_PASSWORD", "KAFKA_SASL_PASSWORD")
    )
}  # fmt: skip


def leaked(*outputs: str) -> list[str]:
    """The secret values of SECRET_ENV found in ``outputs``."""
    return [value for value in SECRET_ENV.values() if any(value in output for output in outputs)]


def engagement(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_ingest_reports_invalid_lines_and_dead_letters_them(broker: EmbeddedBroker, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    good = {"event_id": "e1", "type": "like", "ts": "2026-01-01T00:00:00Z", "actor_id": "u", "account_id": "a"}
    path.write_bytes(
        b"\n".join(
            [
                orjson.dumps(good),
                b"{not json",
                orjson.dumps({**good, "event_id": "e2", "type": "follow"}),
                orjson.dumps({**good, "ts": "2026-01-01T00:00:00"}),
                b"",
                orjson.dumps([{**good, "event_id": "e3", "type": "mention"}, {"type": "like"}]),
            ]
        )
        + b"\n"
    )
    env = {"ENGAGEMENT_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
    result = engagement("ingest", str(path), "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert "line 2: invalid_json" in result.stderr and "line 4: invalid_ts" in result.stderr
    assert "line 6: missing_field" in result.stderr
    assert "published 3 events" in result.stdout and "3 invalid lines" in result.stdout

    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers, auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    consumer.subscribe(["likes", "follows", "mentions", "engagement-dead-letters"])
    seen: dict[str, list[object]] = {}
    deadline = time.monotonic() + 30
    while sum(len(v) for v in seen.values()) < 6 and time.monotonic() < deadline:
        for message in consumer:
            seen.setdefault(message.topic, []).append(orjson.loads(message.value))
    consumer.close()
    assert [m["event_id"] for m in seen["likes"]] == ["e1"]  # type: ignore[index]
    assert [m["event_id"] for m in seen["follows"]] == ["e2"]  # type: ignore[index]
    letters = sorted((d["source_offset"], d["reason"]) for d in seen["engagement-dead-letters"])  # type: ignore[index]
    assert letters == [(2, "invalid_json"), (4, "invalid_ts"), (6, "missing_field")]


def test_generate_to_file_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = engagement("generate", "--out", str(tmp_path / name), "--events", "3000", "--accounts", "50")
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert len((tmp_path / "a").read_bytes().splitlines()) == 3000


def test_migrate_and_config_show(tmp_path: Path) -> None:
    env = {"ENGAGEMENT_DATA_DIR": str(tmp_path), **SECRET_ENV}
    first = engagement("migrate", env=env)
    assert first.returncode == 0 and "applied 001_engagement_events" in first.stdout
    assert "schema is up to date" in engagement("migrate", env=env).stdout
    shown = engagement("config", "show", env=env)
    for name in SECRET_ENV:
        assert f"{name}=Secret('********')" in shown.stdout
    assert leaked(first.stdout, first.stderr, shown.stdout, shown.stderr) == []


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker.encode() in blob and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def test_demo_prints_both_leaderboards_and_the_sql_command(tmp_path: Path) -> None:
    data = tmp_path / "var"
    result = engagement(
        "demo", "--duration", "60", "--rate", "500", "--accounts", "400", "--data-dir", str(data),
        env={**SECRET_ENV, "ENGAGEMENT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "ENGAGEMENT_KAFKA_SASL_USERNAME": "u"},
        timeout=360,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # the demo's own broker is plaintext on loopback whatever Kafka security is configured; no secret shows
    assert leaked(result.stdout, result.stderr, (data / "worker.log").read_text(errors="replace")) == []
    # the staged drop: firing while silent, resolved after it returns
    staged = result.stdout.split("Engagement drop staged for acct-drop-demo")[1].splitlines()
    assert [line.split()[2:4] for line in staged[3:5]] == [["firing", "silence"], ["resolved", "recovered"]], staged
    assert "TOP 10 BY FOLLOWERS" in result.stdout and "TOP 10 BY ENGAGEMENT RATE" in result.stdout
    followed = re.search(r"^most followed: (\S+)$", result.stdout, re.M)
    engaged = re.search(r"^most engaged \(engagement rate, >= 100 followers\): (\S+)$", result.stdout, re.M)
    assert followed is not None and engaged is not None, result.stdout
    leaders = result.stdout.split("TOP 10 BY ENGAGEMENT RATE\n")[1].splitlines()[1].split()  # the first row
    assert (leaders[0], leaders[4]) == (followed.group(1)[:22], engaged.group(1)[:22])  # both boards' leaders
    assert result.stdout.count("ACCOUNT REPORT") == 2
    reports = re.findall(r"^ACCOUNT REPORT  (\S+)$", result.stdout, re.M)
    assert reports == [followed.group(1), engaged.group(1)]
    command = re.search(r"(\.venv/bin/engagement sql .*)$", result.stdout, re.M)
    assert command is not None
    follow_up = engagement(
        "sql", "SELECT count() AS n FROM engagement_events", "--data-dir", str(data), "--format", "csv"
    )
    assert follow_up.returncode == 0 and int(follow_up.stdout.splitlines()[1]) > 1000
    assert _processes_with(str(data)) == []


def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "var"
    demo = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "demo", "--duration", "120", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    lines = []
    for line in demo.stdout:
        lines.append(line)
        if "live traffic" in line:
            break
    broker_port = re.search(r"broker 127\.0\.0\.1:(\d+)", "".join(lines))
    assert broker_port is not None
    time.sleep(3)
    demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=60) == 130
    time.sleep(1)
    assert _processes_with(str(data)) == []
    assert _processes_with(f"tcp://127.0.0.1:{broker_port.group(1)}") == []


def test_settings_errors_are_reported_not_raised() -> None:
    result = engagement("config", "show", env={"ENGAGEMENT_WINDOW_SECONDS": "soon"})
    assert result.returncode == 2 and "ENGAGEMENT_WINDOW_SECONDS" in result.stderr
    Settings.from_env({})  # the defaults are valid
