"""``engagement demo`` (what ``make demo`` runs): the whole pipeline on one machine, then the answer.

Starts the embedded broker, a worker writing to the embedded store under the data directory, and live
synthetic traffic; shows progress; after ``duration`` seconds prints the top accounts by followers next
to the top accounts by engagement rate, and the command to dig further; then the account report of the
most-followed account and of the most-engaged one (the first row of each ranking). Ctrl-C stops everything
cleanly.

It also stages an engagement drop: :data:`DROP_ACCOUNT` gets steady likes, falls silent from 20 s to 35 s,
then comes back; the demo shows the detector's alert firing while it is silent and resolving after it
returns. For that to happen within a minute it runs 5-second windows with 8 s of allowed lateness (the
defaults, 60 s and 300 s, suit real traffic) and a short warm-up (:func:`demo_settings`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from pipeline import queries
from pipeline.broker import EmbeddedBroker
from pipeline.generate import TrafficModel, lines, paced
from pipeline.ingest import ingest_lines, make_producer
from pipeline.kafka_admin import consumed_topics, ensure_topics, group_lag
from pipeline.processes import free_port, spawn, stop, wait_for_port
from pipeline.query_client import format_result, reading, run_query
from pipeline.replay import worker_command
from pipeline.report import DEFAULT_DAYS, Weights, default_as_of, report_with
from pipeline.report_format import visible
from pipeline.report_render import MIN_WIDTH, render_terminal
from pipeline.settings import Settings
from pipeline.warehouse import QueryResult

DROP_ACCOUNT = "acct-drop-demo"
DROP_SILENT_FROM_S = 20.0  # seconds into the traffic
DROP_SILENT_UNTIL_S = 35.0
DROP_LIKES_PER_SECOND = 8.0


def demo_settings(settings: Settings) -> Settings:
    """The demo's windows and drop detector: short enough to show a drop firing and resolving in a minute."""
    return replace(
        settings,
        window_seconds=5,
        allowed_lateness_seconds=8,
        drop_warmup_windows=3,
        drop_half_life_windows=4.0,
        drop_min_baseline=5.0,
        drop_windows=2,
        drop_watch=DROP_ACCOUNT,
    )


def _scrape(settings: Settings) -> dict[str, float]:
    """Sum every sample of the worker's metrics by name (labels folded)."""
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
            if "table" in sample.labels:
                key = f"{sample.name}:{sample.labels['table']}"
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def _status(totals: dict[str, float], elapsed: float, duration: float, produced: int) -> str:
    consumed = totals.get("engagement_events_consumed_total", 0)
    rows = totals.get("engagement_rows_written_total:engagement_windows", 0)
    dead = totals.get("engagement_rows_written_total:engagement_dead_letters", 0)
    lag = totals.get("engagement_consumer_lag_messages", 0)
    return (
        f"\r  {elapsed:5.0f}/{duration:.0f}s  produced {produced:>9,}  consumed {consumed:>9,.0f}  "
        f"window rows {rows:>9,.0f}  dead letters {dead:>6,.0f}  lag {lag:>6,.0f} msgs "
    )


def _side_by_side(left: QueryResult, right: QueryResult) -> str:
    def cells(result: QueryResult) -> list[list[str]]:
        out = []
        for row in result.rows:
            account, followers, engagers, rate = row
            out.append([str(account)[:22], f"{followers:,}", f"{engagers:,}", "-" if rate is None else f"{rate:.2%}"])
        return out

    header = ["account", "followers", "engagers", "rate"]
    widths = [22, 11, 9, 8]

    def render(row: list[str]) -> str:
        return " ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    lines_out = [
        f"{'TOP 10 BY FOLLOWERS':<53}   {'TOP 10 BY ENGAGEMENT RATE'}",
        f"{render(header)}   {render(header)}",
    ]
    a, b = cells(left), cells(right)
    for i in range(max(len(a), len(b))):
        la = render(a[i]) if i < len(a) else " " * 53
        lb = render(b[i]) if i < len(b) else ""
        lines_out.append(f"{la}   {lb}")
    return "\n".join(lines_out)


def run_demo(settings: Settings, duration: float = 60.0, rate: float = 1000.0, accounts: int = 3000) -> int:
    """Run the demo (see the module docstring). Returns the exit code."""
    out = sys.stdout
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"engagement demo: embedded Kafka (tansu) + embedded ClickHouse (chDB) in {settings.data_dir}/", file=out)
    worker = None
    stop_traffic = threading.Event()
    produced = [0]
    with EmbeddedBroker(log_path=settings.data_dir / "tansu.log") as broker:
        settings = replace(broker.client_settings(demo_settings(settings)), web_port=free_port())
        try:
            ensure_topics(settings)
            worker = spawn(worker_command(), env=settings.to_env(), log_path=settings.data_dir / "worker.log")
            print(f"  broker {broker.bootstrap_servers}; worker pid {worker.pid} (log: {settings.data_dir}/worker.log)")
            wait_for_port(settings.web_host, settings.web_port, 120, worker)
            print(f"  metrics: http://{settings.web_host}:{settings.web_port}/metrics")
            started_ms = int(time.time() * 1000)
            model = TrafficModel(
                accounts=accounts,
                users=max(20_000, accounts * 20),
                events_per_second=rate,
                start_ms=started_ms,
                seconds=duration,
                events=None,
                max_delay_s=3.0,
                drain_tail=False,
                seed=started_ms % 100_000,
            )
            traffic = threading.Thread(
                target=_produce_live, args=(settings, model, stop_traffic, produced), daemon=True
            )
            traffic.start()
            drop = threading.Thread(
                target=_produce_drop, args=(settings, started_ms, duration, stop_traffic), daemon=True
            )
            drop.start()
            print(f"  live traffic: {accounts:,} accounts, ~{rate:,.0f} events/s for {duration:.0f}s (Ctrl-C stops)\n")
            began = time.monotonic()
            while traffic.is_alive() and time.monotonic() - began < duration + 30:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited ({worker.returncode}); see {settings.data_dir}/worker.log")
                out.write(_status(_scrape(settings), time.monotonic() - began, duration, produced[0]))
                out.flush()
                time.sleep(1.0)
            _drain(settings, out, duration, began, produced)
            print("\n")
            _report(settings, started_ms, out)
            return 0
        except KeyboardInterrupt:
            print("\n  interrupted: stopping traffic, worker and broker...", file=out)
            return 130
        finally:
            stop_traffic.set()
            stop(worker, timeout=30)


def _produce_live(settings: Settings, model: TrafficModel, halt: threading.Event, produced: list[int]) -> None:
    producer = make_producer(settings)
    stream = paced(lines(model, invalid_share=0.002), model.events_per_second, halt, produced)
    try:
        ingest_lines(stream, settings, producer, "demo", batch_events=20)
    finally:
        producer.close()


def _produce_drop(settings: Settings, started_ms: int, duration: float, halt: threading.Event) -> None:
    """Likes to :data:`DROP_ACCOUNT`, live, except from DROP_SILENT_FROM_S to DROP_SILENT_UNTIL_S (each moved
    to the next window boundary, so the silent windows are wholly silent)."""
    producer = make_producer(settings)
    window_ms = settings.window_seconds * 1000

    def boundary(seconds: float) -> int:
        return -(-(started_ms + int(seconds * 1000)) // window_ms) * window_ms

    silent_from, silent_until = boundary(DROP_SILENT_FROM_S), boundary(DROP_SILENT_UNTIL_S)

    def likes() -> Any:
        n = 0
        while not halt.is_set():
            now = int(time.time() * 1000)
            if now - started_ms > duration * 1000:
                return
            if not silent_from <= now < silent_until:
                n += 1
                yield orjson.dumps(
                    {"event_id": f"drop-demo-{started_ms}-{n}", "type": "like", "ts": now,
                     "actor_id": f"fan-{n % 40}", "account_id": DROP_ACCOUNT}
                )  # fmt: skip
            halt.wait(1 / DROP_LIKES_PER_SECOND)

    try:
        ingest_lines(likes(), settings, producer, "demo-drop", batch_events=1)
    finally:
        producer.close()


def _drain(settings: Settings, out: Any, duration: float, began: float, produced: list[int]) -> None:
    deadline = time.monotonic() + 60
    topics = consumed_topics(settings)
    while time.monotonic() < deadline:
        out.write(_status(_scrape(settings), time.monotonic() - began, duration, produced[0]))
        out.flush()
        if sum(group_lag(settings, topics).values()) == 0:
            return
        time.sleep(1.0)


def _report(settings: Settings, started_ms: int, out: Any) -> None:
    since = started_ms // 1000 - 60
    until = int(time.time()) + 3600
    params = {"since": since, "until": until, "limit": 10, "min_followers": 100}
    by_followers = run_query(settings, queries.TOP_BY_FOLLOWERS, params)
    by_rate = run_query(settings, queries.TOP_BY_ENGAGEMENT_RATE, params)
    print(_side_by_side(by_followers, by_rate), file=out)
    print(
        "\nFollower count is cheap: the biggest audiences are rarely the most engaged ones "
        "(rate = distinct engagers / followers, accounts with >= 100 followers).",
        file=out,
    )
    print("\nTables written:", file=out)
    print(format_result(run_query(settings, queries.COUNT_TABLE_ROWS), "table"), file=out)
    example = (
        "SELECT account_id, sum(likes) AS likes, sum(replies) AS replies, sum(responses) AS responses, "
        "max(followers) AS followers FROM engagement_windows FINAL GROUP BY account_id "
        "ORDER BY likes DESC LIMIT 10"
    )
    print("\nDig further:", file=out)
    data_dir = shlex.quote(str(settings.data_dir))
    print(f"  .venv/bin/engagement sql {shlex.quote(example)} --data-dir {data_dir}", file=out)
    print(f"  .venv/bin/engagement report ACCOUNT [--json] [--html FILE] --data-dir {data_dir}", file=out)
    _account_reports(settings, _first_account(by_followers), _first_account(by_rate), out)
    _drop_alerts(settings, out)


def _drop_alerts(settings: Settings, out: Any) -> None:
    """The staged drop's alerts, as the detector wrote them to ``engagement_alerts``."""
    alerts = run_query(settings, queries.ACCOUNT_ALERTS, {"account": DROP_ACCOUNT})
    print(
        f"\nEngagement drop staged for {DROP_ACCOUNT} (silent from {DROP_SILENT_FROM_S:.0f} s to "
        f"{DROP_SILENT_UNTIL_S:.0f} s of the traffic; 5-second windows, a drop = 2 windows below half the "
        "baseline), as engagement_alerts holds it:",
        file=out,
    )
    print(format_result(alerts, "table"), file=out)
    states = [str(row[alerts.columns.index("state")]) for row in alerts.rows]
    if states[:2] != ["firing", "resolved"]:
        print("  (the drop did not complete within the run: try a longer --duration)", file=out)


def _first_account(ranking: QueryResult) -> str | None:
    return str(ranking.rows[0][0]) if ranking.rows else None


def _account_reports(settings: Settings, most_followed: str | None, most_engaged: str | None, out: Any) -> None:
    """The terminal reports of the most-followed and the most-engaged accounts (the leaders of the two
    rankings above; one report if they are the same account), over the default period up to the newest
    event, read as ``engagement report`` reads: one read-only connection, here the worker's ``/query``."""
    chosen = [(f"most followed: {visible(most_followed)}", most_followed)] if most_followed else []
    if most_engaged and most_engaged != most_followed:
        chosen.append((f"most engaged (engagement rate, >= 100 followers): {visible(most_engaged)}", most_engaged))
    elif most_engaged:
        chosen = [(f"most followed and most engaged: {visible(most_engaged)}", most_engaged)]
    if not chosen:
        return
    width = max(MIN_WIDTH, min(shutil.get_terminal_size().columns, 120))
    color = out.isatty() and "NO_COLOR" not in os.environ
    with reading(settings) as run:
        as_of = default_as_of(run)
        for title, account in chosen:
            report = report_with(run, account, as_of, DEFAULT_DAYS, settings.burst_threshold, Weights.of(settings))
            print(f"\n{title}\n", file=out)
            out.write(render_terminal(report, width=width, color=color))
