"""``engagement replay``: one file through the whole embedded pipeline, run to completion.

Starts a fresh embedded broker, ingests the file, runs a worker until every message of every pipeline
topic is committed (so every row is durable), asks the worker to finalize all open windows, and stops
everything. The same file on a fresh data directory always gives the same rows.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from pipeline.broker import EmbeddedBroker
from pipeline.ingest import IngestReport, ingest_lines, make_producer, read_lines
from pipeline.kafka_admin import consumed_topics, ensure_topics, group_lag
from pipeline.processes import free_port, spawn, stop, wait_for_port
from pipeline.settings import Settings


class ReplayError(RuntimeError):
    """The replay could not complete (the worker died, or did not catch up in time)."""


@dataclass
class ReplayReport:
    ingest: IngestReport
    window_rows_flushed: int
    seconds: float


def worker_command() -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "worker"]


def replay(
    path: str,
    settings: Settings,
    timeout: float = 600.0,
    log: Callable[[str], None] = lambda message: None,
) -> ReplayReport:
    """Replay ``path`` into ``settings.data_dir`` (embedded broker; the configured warehouse)."""
    started = time.monotonic()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_path=settings.data_dir / "tansu.log") as broker:
        settings = replace(
            broker.client_settings(settings),
            web_port=free_port(),
            commit_interval=min(settings.commit_interval, 0.5),
            dead_letter_brake_linger_seconds=0,  # nobody scrapes a replay's worker: a trip ends it at once
        )
        ensure_topics(settings)
        log(f"ingesting {path} into {broker.bootstrap_servers}")
        producer = make_producer(settings)
        try:
            report = ingest_lines(read_lines(path), settings, producer, source_name=path)
        finally:
            producer.close()
        log(f"ingested {report.events:,} events ({report.invalid:,} invalid lines); starting the worker")
        worker = spawn(worker_command(), env=settings.to_env(), log_path=settings.data_dir / "worker.log")
        try:
            wait_for_port(settings.web_host, settings.web_port, 120, worker)
            _wait_until_committed(settings, worker, timeout, log)
            flushed = _post(settings, "/admin/flush")["rows"]
            log(f"flushed {flushed:,} open windows as final")
        finally:
            code = stop(worker, timeout=60)
        if code not in (0, None, -15):
            raise ReplayError(f"the worker exited with code {code}; see {settings.data_dir / 'worker.log'}")
    return ReplayReport(report, int(flushed), time.monotonic() - started)


def _wait_until_committed(settings: Settings, worker: object, timeout: float, log: Callable[[str], None]) -> None:
    deadline = time.monotonic() + timeout
    topics = consumed_topics(settings)
    last_report = 0.0
    while True:
        if getattr(worker, "poll")() is not None:  # noqa: B009
            raise ReplayError(f"the worker died; see {settings.data_dir / 'worker.log'}")
        lag = group_lag(settings, topics)
        remaining = sum(lag.values())
        if remaining == 0:
            return
        if time.monotonic() > deadline:
            raise ReplayError(f"{remaining} messages still unprocessed after {timeout:.0f}s")
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            log(f"waiting for the worker: {remaining:,} messages to go")
        time.sleep(0.5)


def _post(settings: Settings, path: str) -> dict[str, int]:
    request = urllib.request.Request(f"http://{settings.web_host}:{settings.web_port}{path}", data=b"{}")
    with urllib.request.urlopen(request, timeout=600) as response:
        result: dict[str, int] = orjson.loads(response.read())
        return result


def default_data_dir() -> Path:
    return Path("var") / "replay"
