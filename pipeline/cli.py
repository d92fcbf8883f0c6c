"""The ``engagement`` command: worker, ingest, replay, sql, report, leaderboard, migrate, users, generate, demo,
bench, compile, config."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pipeline.extras import MissingExtra
from pipeline.kafka_security import KafkaAuthError
from pipeline.settings import Settings, SettingsError
from pipeline.warehouse.base import WarehouseError

if TYPE_CHECKING:
    from pipeline.query_client import Reader

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "bootstrap_servers", None):
        overrides["bootstrap_servers"] = args.bootstrap_servers
    return Settings.from_env(None, **overrides)


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.worker import run_worker

    return run_worker(_settings(args), loglevel=args.loglevel)


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.deadletter import payload_preview
    from pipeline.events import Rejection
    from pipeline.ingest import IngestError, ingest_lines, make_producer, print_progress, read_lines
    from pipeline.kafka_admin import ensure_topics

    settings = _settings(args)
    if not readable_input(args.file):
        print(f"error: {args.file} is not a readable file", file=sys.stderr)
        return 2
    ensure_topics(settings)
    producer = make_producer(settings)

    def on_invalid(line_no: int, rejection: Rejection) -> None:
        sys.stderr.write(
            f"\rline {line_no}: {rejection.reason.value}: {rejection.detail} "
            f"[{payload_preview(rejection.payload, 60)}] -> dead-letter topic\n"
        )

    progress = print_progress(sys.stderr) if not args.quiet else None
    try:
        report = ingest_lines(read_lines(args.file), settings, producer, args.file, args.batch, on_invalid, progress)
    except (IngestError, OSError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        producer.close()
    sys.stderr.write("\n")
    print(
        f"published {report.events:,} events in {report.messages:,} messages "
        f"({', '.join(f'{t}: {n:,}' for t, n in sorted(report.by_topic.items()))}); "
        f"{report.invalid:,} invalid lines dead-lettered; {report.seconds:.1f}s"
    )
    return 0


def readable_input(path: str) -> bool:
    """Whether ``path`` names input to read: ``-`` (standard input), a file, or a pipe (``/dev/stdin``,
    ``<(zcat events.gz)``), not a directory or nothing."""
    return path == "-" or (Path(path).exists() and not Path(path).is_dir())


def cmd_replay(args: argparse.Namespace) -> int:
    from pipeline import queries
    from pipeline.ingest import IngestError
    from pipeline.query_client import format_result, run_query
    from pipeline.replay import ReplayError, replay

    settings = _settings(args)
    try:
        report = replay(args.file, settings, timeout=args.timeout, log=lambda m: print(f"replay: {m}", file=sys.stderr))
    except (IngestError, ReplayError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_result(run_query(settings, queries.COUNT_TABLE_ROWS), "table"))
    print(f"replayed {report.ingest.events:,} events in {report.seconds:.1f}s into {settings.data_dir}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from pipeline.query_client import format_result, run_query
    from pipeline.readonly_sql import ReadOnlyViolation
    from pipeline.warehouse import WarehouseError

    settings = _settings(args)
    params: dict[str, object] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            print(f"--param takes NAME=VALUE (NAME: letters, digits, _), got {item!r}", file=sys.stderr)
            return 2
        params[name] = value
    try:
        result = run_query(settings, args.query, params or None)
    except ReadOnlyViolation as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    except WarehouseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_result(result, args.format))
    return 0


def parse_as_of(text: str) -> int:
    """``--as-of``: epoch milliseconds (digits) or an RFC 3339 date-time with a zone, as events' ``ts``."""
    from pipeline.decode import parse_ts

    stripped = text.strip()
    value: int | str = int(stripped) if stripped.isascii() and stripped.isdigit() else stripped
    try:
        return parse_ts(value)
    except Exception as exc:  # decode's rejection type is private; its message says what is wrong
        raise argparse.ArgumentTypeError(f"{text!r}: {exc} (epoch ms, or RFC 3339 with Z or ±hh:mm)") from exc


def _read(settings: Settings, read: Callable[[Reader], T], empty_store: str) -> tuple[T | None, int]:
    """``read`` run with one read-only connection (the worker's ``/query`` while a worker holds the
    embedded store): ``(result, 0)``, or ``(None, exit code)`` once the error is printed: 1 for an empty
    store (``empty_store`` says what that means here) or ClickHouse failing, 2 for a bad period."""
    from pipeline.query_client import reading
    from pipeline.report import EmptyStore
    from pipeline.warehouse import WarehouseError

    try:
        with reading(settings) as run:
            return read(run), 0
    except EmptyStore:
        print(f"error: {empty_store}", file=sys.stderr)
        return None, 1
    except ValueError as exc:  # a period starting before 1970
        print(f"error: {exc}", file=sys.stderr)
        return None, 2
    except WarehouseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, 1


def cmd_report(args: argparse.Namespace) -> int:
    import shutil

    import orjson

    from pipeline.report import Weights, default_as_of, report_with
    from pipeline.report_html import render_html
    from pipeline.report_model import AccountReport
    from pipeline.report_render import MIN_WIDTH, render_terminal

    settings = _settings(args)

    def read(run: Reader) -> AccountReport:
        newest = default_as_of(run)  # EmptyStore, even with --as-of: a report of nothing is a mistake
        as_of = newest if args.as_of is None else args.as_of
        return report_with(run, args.account, as_of, args.days, settings.burst_threshold, Weights.of(settings))

    where = f"{settings.warehouse}{f', {settings.data_dir}' if settings.warehouse == 'embedded' else ''}"
    report, code = _read(settings, read, f"the store holds no events ({where}): nothing to report")
    if report is None:
        return code
    said = sys.stderr if args.json else sys.stdout
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report.to_json_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    elif not args.html:
        width = max(MIN_WIDTH, shutil.get_terminal_size().columns)
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        sys.stdout.write(render_terminal(report, width=width, color=color))
    if args.html:
        path = Path(args.html)
        try:
            path.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"wrote the report of {report.account_id} to {path.resolve()}", file=said)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    import orjson

    from pipeline.leaderboard import LeaderboardRow, leaderboard_with
    from pipeline.leaderboard_render import render_leaderboard
    from pipeline.report import default_as_of

    def read(run: Reader) -> tuple[int, list[LeaderboardRow]]:
        as_of = default_as_of(run) if args.as_of is None else args.as_of
        return as_of, leaderboard_with(run, args.by, args.limit, as_of, args.days)

    result, code = _read(_settings(args), read, "the store holds no events: pass --as-of to rank nothing")
    if result is None:
        return code
    as_of, rows = result
    if args.json:
        board = {"by": args.by, "as_of": as_of, "days": args.days, "rows": [r.to_json_dict() for r in rows]}
        sys.stdout.buffer.write(orjson.dumps(board, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    else:
        sys.stdout.write(render_leaderboard(rows, args.by, as_of, args.days))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from pipeline.warehouse import open_warehouse
    from pipeline.warehouse.migrate import migrate

    settings = _settings(args)
    warehouse = open_warehouse(settings)
    try:
        applied = migrate(warehouse, settings)
    finally:
        warehouse.close()
    if applied:
        for migration in applied:
            print(f"applied {migration.version:03d}_{migration.name}")
    else:
        print("schema is up to date")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    from pipeline.clickhouse_users import supports_access_control, users_sql, users_xml
    from pipeline.warehouse import open_warehouse
    from pipeline.warehouse.cluster import ClusterLayout
    from pipeline.warehouse.migrate import every_node

    settings = _settings(args)
    if args.action == "xml":
        print(users_xml(settings, args.network or ("::/0",)), end="")
        return 0
    if args.network:
        print("--network applies to `engagement users xml` only", file=sys.stderr)
        return 2
    if args.action == "sql":
        print(";\n".join(users_sql(settings)) + ";")
        return 0
    if settings.warehouse != "server":
        print("the embedded store (chDB) has no users: nothing to create", file=sys.stderr)
        return 2
    statements = users_sql(settings)  # checks the passwords before connecting
    warehouse = open_warehouse(settings)
    try:
        version = warehouse.server_version()
        if not supports_access_control(version):
            print(
                f"ClickHouse {version[0]}.{version[1]} has no SQL access control: install the output of "
                "`engagement users xml` as users.d/engagement.xml on the server instead (see SECURITY.md)",
                file=sys.stderr,
            )
            return 2
        layout = ClusterLayout.of(settings)
        if layout is None or layout.replicated:  # one node, or ON CLUSTER statements
            for statement in statements:
                warehouse.execute(statement)
        else:
            with every_node(warehouse, settings, layout) as nodes:
                for node in nodes:
                    for statement in statements:
                        node.execute(statement)
    finally:
        warehouse.close()
    print(f"users {settings.clickhouse_ingest_user} and {settings.clickhouse_analyst_user} are in place")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.generate import TrafficModel, lines, paced

    start_ms = int(time.time() * 1000) if args.live else args.start_ms
    model = TrafficModel(
        accounts=args.accounts,
        users=args.users,
        events_per_second=args.rate,
        start_ms=start_ms,
        seconds=args.seconds,
        events=args.events,
        seed=args.seed,
        drain_tail=not args.live,
    )
    stream = lines(model, args.invalid_share)
    if args.live:
        stream = paced(stream, args.rate)
    if args.out:
        handle = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
        count = 0
        try:
            for line in stream:
                handle.write(line + b"\n")
                count += 1
        finally:
            if handle is not sys.stdout.buffer:
                handle.close()
        print(f"wrote {count:,} lines to {args.out}", file=sys.stderr)
        return 0
    from pipeline.ingest import ingest_lines, make_producer, print_progress
    from pipeline.kafka_admin import ensure_topics

    settings = _settings(args)
    ensure_topics(settings)
    producer = make_producer(settings)
    try:
        report = ingest_lines(
            stream, settings, producer, "generate", 20 if args.live else 100, on_progress=print_progress(sys.stderr)
        )
    finally:
        producer.close()
    print(f"\npublished {report.events:,} events, {report.invalid:,} invalid lines dead-lettered", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    return run_demo(_settings(args), duration=args.duration, rate=args.rate, accounts=args.accounts)


def cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    harness = Path(__file__).resolve().parent.parent / "bench" / "harness.py"
    if not harness.exists():
        print(f"the benchmark harness is not here ({harness}); run it from a source checkout", file=sys.stderr)
        return 2
    extra = [*(["--quick"] if args.quick else []), *(["--json"] if args.json else [])]
    return subprocess.call([sys.executable, str(harness), *extra])


def cmd_compile(args: argparse.Namespace) -> int:
    """Build the compiled hot path when it is missing or stale (or always, ``--force``); ``--check`` only
    says whether the build matches. Exit 0 when it does (after building), 1 when not or the build failed."""
    from pipeline import compiled

    status = compiled.check()
    if args.check or (status.active and not args.force):
        print(("compiled: " if status.active else "source: ") + status.reason)
        return 0 if status.active else 1
    try:
        status = compiled.build()
    except compiled.BuildFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"compiled: {status.reason}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    for name, value in _settings(args).masked().items():
        print(f"ENGAGEMENT_{name.upper()}={value}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    from pipeline.report_reference import RANK_BY

    parser = argparse.ArgumentParser(prog="engagement", description="Connected vs engaged: engagement analytics.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, data_dir: bool = True) -> None:
        if data_dir:
            p.add_argument("--data-dir", help="embedded store directory (ENGAGEMENT_DATA_DIR, default ./var)")
        p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (ENGAGEMENT_BOOTSTRAP_SERVERS)")

    def period(p: argparse.ArgumentParser) -> None:
        """The period a report or a ranking covers: [as-of - days, as-of)."""
        p.add_argument(
            "--as-of",
            type=parse_as_of,
            default=None,
            help="end of the period, exclusive: epoch ms or RFC 3339 with a zone (default: newest event + 1 ms)",
        )
        p.add_argument("--days", type=_positive, default=28, help="length of the period in days (default 28)")

    p = sub.add_parser("worker", help="run the Faust worker (production entry point)")
    common(p)
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("ingest", help="publish JSON-lines events (FILE or -) to their topics")
    common(p, data_dir=False)
    p.add_argument("file")
    p.add_argument("--batch", type=int, default=100, help="events per Kafka message (JSON array)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("replay", help="run FILE through an embedded broker and worker to completion")
    common(p)
    p.add_argument("file")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("sql", help="run a read-only SQL query on the warehouse")
    common(p)
    p.add_argument("query", help="one reading statement; %%(NAME)s placeholders take the --param values")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind VALUE (a string, quoted and escaped) to %%(NAME)s in the query; repeatable",
    )
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("report", help="the account report: connected vs engaged, for one account")
    common(p)
    p.add_argument("account", help="the account_id")
    period(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML page to FILE")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("leaderboard", help="rank every account: followers next to engagement")
    common(p)
    p.add_argument(
        "--by", choices=RANK_BY, default="engagement_rate", help="the ranking metric (default engagement_rate)"
    )
    p.add_argument("--limit", type=_positive, default=20, help="accounts shown (default 20)")
    period(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("migrate", help="apply the DDL in schemas/")
    common(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("users", help="the least-privilege ClickHouse users: create them, or print SQL or XML")
    common(p, data_dir=False)
    p.add_argument(
        "action",
        choices=["create", "sql", "xml"],
        help="create: run CREATE USER/GRANT on the server (20.5+); sql: print them; xml: print users.d XML",
    )
    p.add_argument(
        "--network",
        action="append",
        metavar="CIDR",
        help="xml: an address or network the users may connect from (repeatable; default ::/0, anywhere)",
    )
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("generate", help="synthetic traffic to Kafka, or to a JSON-lines file with --out")
    common(p, data_dir=False)
    p.add_argument("--out", help="write JSON lines to this file (- for stdout) instead of Kafka")
    p.add_argument("--events", type=int, default=None, help="stop after this many events")
    p.add_argument("--seconds", type=float, default=None, help="simulated seconds of traffic")
    p.add_argument("--rate", type=float, default=200.0, help="events per (simulated) second")
    p.add_argument("--accounts", type=int, default=2000)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--start-ms", type=int, default=1_767_225_600_000, help="simulated start (epoch ms)")
    p.add_argument("--live", action="store_true", help="real time: ts = now, paced to the wall clock")
    p.add_argument("--invalid-share", type=float, default=0.0, help="share of malformed lines mixed in")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="embedded broker + store, worker and live traffic; then the answer")
    common(p)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=1000.0, help="events per second")
    p.add_argument("--accounts", type=int, default=3000)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="the benchmark harness (bench/harness.py): ratios against baselines")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compile", help="build the compiled hot path (mypyc) if missing or stale")
    p.add_argument("--check", action="store_true", help="only say whether the build matches the source")
    p.add_argument("--force", action="store_true", help="rebuild even if the build matches")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("config", help="show the effective settings (secrets masked)")
    p.add_argument("action", choices=["show"])
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KafkaAuthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except WarehouseError as exc:  # e.g. ClickHouse refused the user or password (messages hold no secret)
        print(f"error: ClickHouse: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
