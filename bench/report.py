"""The account report over N raw events in the embedded store (chDB), against baselines of the same run.

Issue 3's target: "The account report over 10,000,000 raw events in the embedded store: under 2 s".

    .venv/bin/python bench/report.py [--events 10000000] [--base 1250000] [--runs 5] [--keep DIR] [--json]
    make bench-report

1. Builds the store: ``--base`` realistic events from :class:`~pipeline.generate.TrafficGenerator` over
   ``--weeks`` weeks (``--accounts`` accounts with power-law audiences; three of the largest are made to draw
   3 %, 6 % and 1.5 % of all events, as platform giants do), inserted in blocks of 250,000 rows in the sink's
   column layout; then copies of those events made inside ClickHouse (``INSERT ... SELECT``) until the table
   holds ``--events`` raw rows. Copy k renames every event id, reply target and user id (``user-…`` actors
   and the users that accounts answer) with a ``.ck`` suffix, so distinct counts grow with the copies; the
   accounts, times and types stay, so every account's traffic is multiplied. The build's SQL is bench-only
   and lives here; the report's own SQL is :mod:`pipeline.queries`'.
2. Picks three accounts: the most-followed (largest follower snapshot), the one with the most inbound
   events, and a small one (the median of inbound counts).
3. Times, on the store opened as the CLI opens it, with as_of defaulted (the newest event + 1 ms, one more
   full scan, as ``engagement report`` does) and the default 28 days:
   - ``full_scan_s`` (baseline): ``SELECT count(), uniqExact(actor_id) FROM engagement_events``, the whole
     table read and hashed once;
   - per account, ``account_scan_s`` (baseline): the account's events read once through FINAL
     (``count()``, ``uniqExact(actor_id)``, ``uniqExact(event_id)``);
   - per account, ``report_cold_s``: the first report in a new process that has just opened the store, as
     ``engagement report`` runs (empty mark and query caches; the OS page cache stays warm, it cannot be
     dropped without root), and ``open_s``, that process's opening of the store (not in the report's
     time); ``report_reopened_s``: the first report after this process closed and reopened the store (a
     reopened chDB session loads the tables on their first use, so this is slower than a new process:
     0.4-0.8 s more on the 10M store);
   - per account, ``report_s``: the median of ``--runs`` reports after one warm-up;
   - per account, ``statements_s``: each report statement alone (median of 3 after a warm-up), where the
     time goes;
   - ``leaderboard_cold_s``/``leaderboard_s``: ``engagement leaderboard`` (every account, ranked by
     engagement rate) on a fresh session, then the median of 3 after it.
   Each figure is printed with its ratio to the baselines. Benchmarks are not tests: nothing here fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import queries  # noqa: E402
from pipeline.decode import validate_event  # noqa: E402
from pipeline.events import Event  # noqa: E402
from pipeline.generate import TrafficGenerator, TrafficModel  # noqa: E402
from pipeline.leaderboard import leaderboard_with  # noqa: E402
from pipeline.report import Weights, account_report, default_as_of, report_params  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.sink import EVENTS_TABLE, event_columns  # noqa: E402
from pipeline.warehouse import Warehouse, open_warehouse  # noqa: E402
from pipeline.warehouse.migrate import migrate  # noqa: E402

BLOCK = 250_000
DAY_MS = 86_400_000
GIANT_SHARES = (0.03, 0.06, 0.015)  # of all events, for the three largest audiences in order
TARGET_S = 2.0

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[bench-report {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


# -- bench-only SQL: building the store and choosing the accounts ------------------------------------------

# Copy %(copy)s of the base events (source_partition 0), renamed (see the module docstring); the copy is
# marked by its source_partition. %(limit)s rows at most (the last copy may be partial).
COPY_EVENTS = """
INSERT INTO engagement_events
    (event_id, type, ts_ms, actor_id, account_id, post_id, in_reply_to, followers,
     source_topic, source_partition, source_offset, ingested_ms)
SELECT
    concat(event_id, %(suffix)s),
    type,
    ts_ms,
    if(startsWith(actor_id, 'user-'), concat(actor_id, %(suffix)s), actor_id),
    if(startsWith(account_id, 'user-'), concat(account_id, %(suffix)s), account_id),
    post_id,
    if(in_reply_to IS NULL, NULL, concat(assumeNotNull(in_reply_to), %(suffix)s)),
    followers,
    source_topic,
    toInt32(%(copy)s),
    source_offset,
    ingested_ms
FROM engagement_events
WHERE source_partition = 0
LIMIT %(limit)s
"""

RAW_ROWS = "SELECT count() AS rows FROM engagement_events"

STORE_SHAPE = """
SELECT count() AS rows, uniqExact(account_id) AS accounts, uniqExact(actor_id) AS actors,
       toString(toDateTime(intDiv(min(ts_ms), 1000), 'UTC')) AS first_event,
       toString(toDateTime(intDiv(max(ts_ms), 1000), 'UTC')) AS last_event
FROM engagement_events
"""

ACTIVE_PARTS = """
SELECT count() AS parts FROM system.parts
WHERE active AND database = currentDatabase() AND table = 'engagement_events'
"""

MERGES_RUNNING = "SELECT count() AS merges FROM system.merges WHERE database = currentDatabase()"

MOST_FOLLOWED = """
SELECT account_id FROM engagement_events
WHERE type = 'followers'
GROUP BY account_id
ORDER BY max(followers) DESC, account_id
LIMIT 1
"""

# Raw inbound rows per account (duplicates included: the choice needs no exactness).
INBOUND_PER_ACCOUNT = """
SELECT account_id, count() AS inbound
FROM engagement_events
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id AND startsWith(account_id, 'acct-')
GROUP BY account_id
ORDER BY inbound DESC, account_id
"""

# -- baselines ------------------------------------------------------------------------------------------------

FULL_SCAN = "SELECT count() AS rows, uniqExact(actor_id) AS actors FROM engagement_events"

ACCOUNT_SCAN = """
SELECT count() AS rows, uniqExact(actor_id) AS actors, uniqExact(event_id) AS events
FROM engagement_events FINAL
WHERE account_id = %(account)s
"""


# -- building the store -----------------------------------------------------------------------------------------


def base_events(count: int, accounts: int, weeks: int, seed: int) -> Iterator[Event]:
    """About ``count`` events over ``weeks`` weeks of traffic, in arrival order: ticks of 20 events at
    seconds spread evenly at random over the span, three giants boosted (see the module docstring)."""
    model = TrafficModel(accounts=accounts, users=accounts * 10, bot_share=0.0002, events=None, seed=seed)
    gen = TrafficGenerator(model)
    _boost_giants(gen)
    rnd = random.Random(seed)
    span_s = weeks * 7 * 86_400 - 7_200
    per_tick = 20
    gen.snapshot_all(model.start_ms)
    produced = 0
    for second in sorted(rnd.sample(range(span_s), min(span_s, max(1, count // per_tick)))):
        now = model.start_ms + second * 1000
        gen.tick(now, per_tick)
        for obj in gen.drain_until(now):
            yield validate_event(obj, None)
            produced += 1
            if produced >= count:
                return
    for obj in gen.drain_all():
        yield validate_event(obj, None)
        produced += 1
        if produced >= count:
            return


def _boost_giants(gen: TrafficGenerator) -> None:
    """Give the three largest audiences :data:`GIANT_SHARES` of the account draws (the generator picks an
    account with probability propensity x followers: its ``cumulative`` table is rebuilt to match)."""
    ranked = sorted(gen.accounts, key=lambda a: -a.followers)
    giants = ranked[: len(GIANT_SHARES)]
    rest = sum(a.propensity * a.followers for a in gen.accounts if a not in giants)
    for account, share in zip(giants, GIANT_SHARES, strict=False):
        account.propensity = rest * share / (1 - sum(GIANT_SHARES)) / max(account.followers, 1)
    total = sum(a.propensity * a.followers for a in gen.accounts)
    acc = 0.0
    gen.cumulative = []
    for account in gen.accounts:
        acc += account.propensity * account.followers / total
        gen.cumulative.append(acc)


def build(warehouse: Warehouse, events: int, base: int, accounts: int, weeks: int, seed: int) -> dict[str, float]:
    """Fill an empty, migrated store with ``events`` raw rows; seconds spent on each step."""
    began = time.perf_counter()
    block: list[tuple[Any, ...]] = []
    inserted = 0
    for event in base_events(base, accounts, weeks, seed):
        block.append((*event, "bench", 0, inserted))
        inserted += 1
        if len(block) == BLOCK:
            warehouse.insert(EVENTS_TABLE, event_columns(block, ingested_ms=1))
            block = []
            log(f"  base: {inserted:,} events")
    if block:
        warehouse.insert(EVENTS_TABLE, event_columns(block, ingested_ms=1))
    generated = time.perf_counter()
    log(f"base: {inserted:,} generated events in {generated - began:.1f}s; copying inside ClickHouse")
    copy = 1
    rows = _rows(warehouse)
    while rows < events:
        warehouse.execute(COPY_EVENTS, {"copy": copy, "suffix": f".c{copy}", "limit": min(inserted, events - rows)})
        rows = _rows(warehouse)
        log(f"  copy {copy}: {rows:,} rows")
        copy += 1
    copied = time.perf_counter()
    _wait_for_merges(warehouse, timeout=180)
    return {
        "generate_insert_s": generated - began,
        "copy_s": copied - generated,
        "merge_wait_s": time.perf_counter() - copied,
    }


def _rows(warehouse: Warehouse) -> int:
    return int(warehouse.query(RAW_ROWS).rows[0][0])


def _wait_for_merges(warehouse: Warehouse, timeout: float) -> None:
    """Until no merge runs (background merges after the inserts), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and int(warehouse.query(MERGES_RUNNING).rows[0][0]):
        time.sleep(1.0)


# -- timing -------------------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def warm_median(fn: Callable[[], object], runs: int) -> float:
    """The median of ``runs`` timed calls after one untimed warm-up."""
    fn()
    return statistics.median(timed(fn) for _ in range(runs))


def choose_accounts(warehouse: Warehouse) -> dict[str, tuple[str, int]]:
    """role -> (account, raw inbound rows): most_followed, most_inbound, small (the median inbound)."""
    inbound = [(str(a), int(n)) for a, n in warehouse.query(INBOUND_PER_ACCOUNT).rows]
    counts = dict(inbound)
    followed = str(warehouse.query(MOST_FOLLOWED).rows[0][0])
    small = inbound[len(inbound) // 2]
    return {
        "most_followed": (followed, counts.get(followed, 0)),
        "most_inbound": inbound[0],
        "small": small,
    }


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    settings = Settings.from_env({}, data_dir=directory)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "events": args.events,
        "base_events": args.base,
        "runs": args.runs,
    }
    warehouse = open_warehouse(settings)
    try:
        if _has_events(warehouse, settings):
            log(f"reusing the store in {directory} ({_rows(warehouse):,} rows)")
        else:
            log(f"building {args.events:,} raw events in {directory}")
            migrate(warehouse, settings)
            results["build"] = build(warehouse, args.events, args.base, args.accounts, args.weeks, args.seed)
        results["store"] = warehouse.query(STORE_SHAPE).as_dicts()[0]
        results["store"]["active_parts"] = int(warehouse.query(ACTIVE_PARTS).rows[0][0])
        chosen = choose_accounts(warehouse)
    finally:
        warehouse.close()
    log(f"store: {results['store']}")

    accounts: dict[str, Any] = {}
    warehouse = open_warehouse(settings)
    try:
        log("baseline: full scan")
        results["full_scan_s"] = warm_median(lambda: warehouse.query(FULL_SCAN), args.runs)
    finally:
        warehouse.close()
    for role, (account, inbound) in chosen.items():
        log(f"{role}: {account} ({inbound:,} raw inbound rows)")
        open_s, cold = cold_report(directory, account)  # no session of ours is open: chDB admits one process
        warehouse = open_warehouse(settings)  # a reopened session: see report_reopened_s
        try:
            report_once = partial(account_report, warehouse, account)
            reopened = timed(report_once)
            report = report_once()
            warm = warm_median(report_once, args.runs)
            scan = warm_median(partial(warehouse.query, ACCOUNT_SCAN, {"account": account}), args.runs)
            statements = statement_times(warehouse, account)
        finally:
            warehouse.close()
        accounts[role] = {
            "account_id": account,
            "raw_inbound_rows": inbound,
            "followers": report.followers,
            "engagers": report.engagers,
            "open_s": open_s,
            "report_cold_s": cold,
            "report_reopened_s": reopened,
            "report_s": warm,
            "account_scan_s": scan,
            "statements_s": statements,
        }
    results["accounts"] = accounts
    warehouse = open_warehouse(settings)
    try:
        log("leaderboard")
        board = partial(leaderboard_with, warehouse.query, "engagement_rate", 10)
        results["leaderboard_cold_s"] = timed(board)
        results["leaderboard_s"] = warm_median(board, 3)
    finally:
        warehouse.close()
    return results


def cold_report(directory: Path, account: str) -> tuple[float, float]:
    """``(open_s, report_s)`` of a new process opening the store in ``directory`` and reporting on
    ``account`` once, as ``engagement report`` does (this script with ``--cold-report``)."""
    done = subprocess.run(
        [sys.executable, __file__, "--cold-report", account, "--keep", str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    timing = orjson.loads(done.stdout.strip().splitlines()[-1])
    return float(timing["open_s"]), float(timing["report_s"])


def _cold_report_here(directory: Path, account: str) -> dict[str, float]:
    """The child's side of :func:`cold_report`."""
    began = time.perf_counter()
    warehouse = open_warehouse(Settings.from_env({}, data_dir=directory))
    opened = time.perf_counter()
    try:
        account_report(warehouse, account)
        return {"open_s": opened - began, "report_s": time.perf_counter() - opened}
    finally:
        warehouse.close()


REPORT_STATEMENTS = ("REPORT_DAILY", "REPORT_INBOUND", "REPORT_RESPONSES", "REPORT_OUTBOUND")


def statement_times(warehouse: Warehouse, account: str) -> dict[str, float]:
    """Each statement of the report alone with the report's default parameters: median of 3, warm."""
    params = report_params(account, default_as_of(warehouse.query), 28, 30, Weights())
    return {
        name: warm_median(partial(warehouse.query, getattr(queries, name), params), 3) for name in REPORT_STATEMENTS
    }


def _has_events(warehouse: Warehouse, settings: Settings) -> bool:
    found = warehouse.query(
        "SELECT count() FROM system.tables WHERE database = %(d)s AND name = 'engagement_events'",
        {"d": settings.clickhouse_database},
    )
    return bool(int(found.rows[0][0])) and _rows(warehouse) > 0


def report_table(results: dict[str, Any]) -> str:
    store = results["store"]
    full = results["full_scan_s"]
    out = [
        f"raw events: {store['rows']:,} ({store['accounts']:,} accounts, {store['actors']:,} actors, "
        f"{store['first_event']} .. {store['last_event']}, {store['active_parts']} active parts)",
        f"machine: {results['machine']}",
    ]
    if "build" in results:
        build_s = results["build"]
        out.append(
            "build: "
            + ", ".join(f"{k} {v:.1f}" for k, v in build_s.items())
            + f"  (base {results['base_events']:,} generated events)"
        )
    out += [
        "",
        f"baseline full_scan_s (count + uniqExact(actor_id) over every row): {full:.3f} s",
        "",
        f"{'account':<16}{'id':<14}{'inbound rows':>13}{'followers':>11}"
        f"{'scan s':>9}{'open s':>9}{'cold s':>9}{'reopen s':>9}{'warm s':>9}{'/ full':>8}{'/ scan':>8}",
    ]
    for role, a in results["accounts"].items():
        out.append(
            f"{role:<16}{a['account_id'][:13]:<14}{a['raw_inbound_rows']:>13,}{a['followers']:>11,}"
            f"{a['account_scan_s']:>9.3f}{a['open_s']:>9.3f}{a['report_cold_s']:>9.3f}{a['report_reopened_s']:>9.3f}"
            f"{a['report_s']:>9.3f}{a['report_s'] / full:>7.2f}x{a['report_s'] / a['account_scan_s']:>7.2f}x"
        )
    out += [
        "",
        "each statement alone (s, warm median of 3):",
        f"{'statement':<22}" + "".join(f"{role:>15}" for role in results["accounts"]),
    ]
    for name in REPORT_STATEMENTS:
        out.append(f"{name:<22}" + "".join(f"{a['statements_s'][name]:>15.3f}" for a in results["accounts"].values()))
    out += [
        "",
        f"leaderboard (every account, by engagement rate): cold {results['leaderboard_cold_s']:.3f} s, "
        f"warm {results['leaderboard_s']:.3f} s ({results['leaderboard_s'] / full:.2f}x full scan)",
    ]
    worst_warm = max(a["report_s"] for a in results["accounts"].values())
    worst_cold = max(a["report_cold_s"] for a in results["accounts"].values())
    out += [
        "",
        f"warm = median of {results['runs']} after one warm-up; cold = first report in a new process that opened "
        "the store (open s, not counted), as `engagement report` runs; reopen = first report after this process "
        "reopened the store; / full, / scan: warm report over the baselines",
        f"  [{'x' if worst_warm < TARGET_S else ' '}] report < {TARGET_S:g} s warm (slowest {worst_warm:.3f} s)",
        f"  [{'x' if worst_cold < TARGET_S else ' '}] report < {TARGET_S:g} s cold (slowest {worst_cold:.3f} s)",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="raw rows in the store")
    parser.add_argument("--base", type=int, default=1_250_000, help="generated events (the rest are copies)")
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--weeks", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5, help="timed warm runs per figure (after one warm-up)")
    parser.add_argument("--keep", type=Path, default=None, help="build (or reuse) the store in DIR and keep it")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--cold-report", metavar="ACCOUNT", help="(internal) one cold report on the --keep store")
    args = parser.parse_args(argv)
    if args.cold_report is not None:
        print(orjson.dumps(_cold_report_here(args.keep, args.cold_report)).decode())
        return 0
    args.base = min(args.base, args.events)
    if args.keep is not None:
        results = run(args, args.keep)
    else:
        directory = Path(tempfile.mkdtemp(prefix="bench-report-"))
        try:
            results = run(args, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        print(orjson.dumps(results).decode())
    else:
        print(report_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
