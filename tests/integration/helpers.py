"""Helpers of the integration tests: read back ClickHouse results in the reference's shape."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import queries
from pipeline.aggregator import WindowConfig
from pipeline.decode import decode_line
from pipeline.events import Event
from pipeline.kafka_admin import consumed_topics, group_lag
from pipeline.processes import spawn, stop, wait_for_port
from pipeline.query_client import run_query
from pipeline.reference import ReferenceRows
from pipeline.replay import worker_command
from pipeline.settings import Settings
from pipeline.warehouse import Warehouse, open_warehouse
from pipeline.warehouse.merge_priority import MERGE_THREAD_PREFIX
from pipeline.warehouse.migrate import migrate


def events_of(path: Path) -> tuple[list[Event], int]:
    """The valid events of a JSON-lines file, and how many inputs were invalid."""
    events: list[Event] = []
    invalid = 0
    with path.open("rb") as handle:
        for line in handle:
            valid, rejected = decode_line(line.strip())
            events.extend(valid)
            invalid += len(rejected)
    return events, invalid


def stored_windows(settings: Settings) -> ReferenceRows:
    """``engagement_windows`` FINAL, keyed and shaped like :func:`pipeline.reference.reference_rows`."""
    rows: ReferenceRows = {}
    for row in run_query(settings, queries.FINAL_WINDOWS).rows:
        values = list(row)
        values[1] = int(values[1]) * 1000
        values[2] = int(values[2]) * 1000
        rows[(str(values[0]), int(values[1]))] = tuple(values)
    return rows


def config_of(settings: Settings) -> WindowConfig:
    return WindowConfig(
        window_ms=settings.window_seconds * 1000,
        lateness_ms=settings.allowed_lateness_seconds * 1000,
        conversation_horizon_ms=settings.conversation_horizon_seconds * 1000,
    )


@contextmanager
def running_worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``engagement worker`` process for ``settings``; stopped (SIGTERM) on exit."""
    worker = spawn(worker_command(), env=settings.to_env(), log_path=settings.data_dir.parent / "worker.log")
    try:
        wait_for_port(settings.web_host, settings.web_port, 120, worker)
        yield worker
    finally:
        stop(worker, timeout=60)


def wait_processed(settings: Settings, timeout: float = 120) -> None:
    """Until the worker's group has committed every message of every pipeline topic."""
    deadline = time.monotonic() + timeout
    topics = consumed_topics(settings)
    while sum(group_lag(settings, topics).values()) != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"lag still {group_lag(settings, topics)}")
        time.sleep(0.3)


@contextmanager
def opened_store(settings: Settings, migrated: bool = True) -> Iterator[Warehouse]:
    """The warehouse of ``settings``, migrated first unless ``migrated`` is False; closed on exit."""
    warehouse = open_warehouse(settings)
    try:
        if migrated:
            migrate(warehouse, settings)
        yield warehouse
    finally:
        warehouse.close()


def run_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``engagement ARGS`` in a subprocess with ``settings`` (and ``env``) in its environment; text output."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env={**os.environ, **settings.to_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def merge_thread_nice(pid: int | None = None) -> dict[int, int]:
    """The chDB merge threads of process ``pid`` (this one by default): thread id -> nice value (Linux)."""
    tasks = Path(f"/proc/{pid if pid is not None else 'self'}/task")
    found = {}
    for task in tasks.iterdir():
        try:
            if (task / "comm").read_text().startswith(MERGE_THREAD_PREFIX):
                found[int(task.name)] = os.getpriority(os.PRIO_PROCESS, int(task.name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found
