"""The benchmark harness: our pipeline against the physical limit and against its peers, in one run.

Everything runs on the same generated data, the same embedded broker (tansu) and embedded ClickHouse
(chDB); every figure is reported with its ratio to baselines measured in the same run (absolute numbers
drift between machines; ratios hold).

    .venv/bin/python bench/harness.py [--quick] [--json] [--events N]
    .venv/bin/python bench/harness.py --workers-scaling [--events N] [--json]   (1 vs 2 workers, ClickHouse server)
    make bench                     (the full run; results go to bench/RESULTS.md by hand, with the command)

Figures: raw_consume_eps (aiokafka reading the messages, doing nothing), naive_faust_eps (textbook Faust
agent), peer_eps (Quix Streams), single_eps / batch_eps (our full pipeline, one event per message / JSON
arrays), p50/p99_latency_s (produce -> row visible in ClickHouse at half of batch_eps), peak_rss_mb (worker
in the batch run), rss_1m_accounts_mb (worker RSS with 1,000,000 distinct accounts in open windows);
with ``machine`` (cores, Python, platform, the compiled hot path, and ``loop_10m_s``: this interpreter's
seconds for 10,000,000 additions at the run's start and end, the machine's speed around it) and ``events``.
``--workers-scaling``: workers_1_eps, workers_2_eps (JSON arrays, one consumer group, a ClickHouse server)
and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kafka import KafkaAdminClient, KafkaProducer  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from pipeline import compiled  # noqa: E402
from pipeline.broker import EmbeddedBroker  # noqa: E402
from pipeline.events import SOURCE_TOPICS  # noqa: E402
from pipeline.generate import TrafficModel, lines  # noqa: E402
from pipeline.ingest import ingest_lines  # noqa: E402
from pipeline.kafka_admin import consumed_topics, ensure_topics, group_lag  # noqa: E402
from pipeline.partitioning import account_partitioner  # noqa: E402
from pipeline.processes import free_port, spawn, stop, wait_for_port  # noqa: E402
from pipeline.replay import worker_command  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

PARTITIONS = 4
KEYS = (
    "raw_consume_eps",
    "naive_faust_eps",
    "peer_eps",
    "single_eps",
    "batch_eps",
    "p50_latency_s",
    "p99_latency_s",
    "peak_rss_mb",
    "rss_1m_accounts_mb",
)


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


class Collector:
    """A stand-in producer that keeps what ``ingest_lines`` would send, to replay it later."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, int | None]] = []

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.sent.append((topic, key, value, partition))

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def flush(self) -> None:
        pass


def encode(data: list[bytes], settings: Settings, batch: int) -> list[tuple[str, bytes, bytes, int | None]]:
    collector = Collector()
    ingest_lines(data, settings, collector, "bench", batch_events=batch)  # type: ignore[arg-type]
    return collector.sent


def producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20, acks=1, max_request_size=4 << 20
    )


def publish(bootstrap: str, messages: Iterable[tuple[str, bytes, bytes, int | None]]) -> int:
    out = producer(bootstrap)
    count = 0
    for topic, key, value, partition in messages:
        out.send(topic, key=key, value=value, partition=partition)
        count += 1
    out.flush()
    out.close()
    return count


# -- baselines ------------------------------------------------------------------------------------


async def _raw_consume(bootstrap: str, topics: list[str], expected: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=16 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        started = 0.0
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                if records and not started:
                    started = time.perf_counter()
                seen += len(records)
        return expected / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def raw_consume_eps(bootstrap: str, topics: list[str], expected: int) -> float:
    return asyncio.run(_raw_consume(bootstrap, topics, expected))


def _child_rate(args: list[str], env: dict[str, str], result: Path, timeout: float, log_path: Path) -> float:
    process = spawn(args, env=env, log_path=log_path)
    deadline = time.monotonic() + timeout
    try:
        while not result.exists():
            if process.poll() is not None and not result.exists():
                raise RuntimeError(f"{args[-1]} exited with {process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{args[-1]} did not finish within {timeout:.0f}s; see {log_path}")
            time.sleep(0.2)
        time.sleep(0.1)
        data = orjson.loads(result.read_bytes())
        return float(data["events"] / data["seconds"])
    finally:
        stop(process, timeout=10)


def _peer_env(bootstrap: str, topic: str, expected: int, result: Path, **extra: str) -> dict[str, str]:
    """The environment of a peer baseline process (see bench/finish_line.py)."""
    return {
        "BENCH_BOOTSTRAP": bootstrap,
        "BENCH_TOPIC": topic,
        "BENCH_EVENTS": str(expected),
        "BENCH_RESULT": str(result),
        **extra,
    }


def naive_faust_eps(bootstrap: str, topic: str, expected: int, work: Path) -> float:
    result = work / "naive.json"
    env = _peer_env(
        bootstrap, topic, expected, result, BENCH_WEB_PORT=str(free_port()), BENCH_DATADIR=str(work / "naive")
    )
    return _child_rate([sys.executable, str(ROOT / "bench" / "naive_faust.py")], env, result, 1800, work / "naive.log")


def peer_eps(bootstrap: str, topic: str, expected: int, work: Path) -> tuple[float | None, str]:
    try:
        import quixstreams  # noqa: F401
    except ImportError as exc:
        return None, f"quixstreams is not installed ({exc}); `make bench` installs it"
    result = work / "quix.json"
    env = _peer_env(bootstrap, topic, expected, result, BENCH_STATE_DIR=str(work / "quix-state"))
    try:
        return _child_rate(
            [sys.executable, str(ROOT / "bench" / "peer_quix.py")], env, result, 900, work / "quix.log"
        ), ""
    except (RuntimeError, TimeoutError) as exc:
        return None, str(exc)


# -- our pipeline ---------------------------------------------------------------------------------


def _metrics_text(settings: Settings) -> str:
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def _metric(text: str, name: str) -> float:
    """The sum of a metric's samples in ``text``; ``name`` may carry labels (``rows{table="t"}``)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + "{", name + " ")))


def _scrape(settings: Settings, name: str) -> float:
    return _metric(_metrics_text(settings), name)


EVENT_ROWS = 'engagement_rows_written_total{table="engagement_events"}'
TAKEN = "engagement_messages_taken_total"


@dataclass(frozen=True)
class Drain:
    """One worker draining a backlog, on the harness's clock (``time.perf_counter``).

    ``processed_s`` runs from the first message taken into a batch to the moment the last raw-event row
    was durable in ClickHouse: every event decoded, validated, deduplicated, windowed and written. It is
    the clock the baselines are timed by (first event read to last event processed; the peer and the
    naive agent do not wait for their state to be committed either). ``committed_s`` runs on until every
    message's offset is committed (the account states in the changelog first): a tail of 0.5-0.75 s
    before the worker sees the input paused and persists the states (the pause, checked every 0.25 s), the
    changelog write and Faust's 1 s commit interval, reported beside it, not hidden in it.
    """

    processed_s: float
    committed_s: float


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Worker:
    """Our worker as a child process, with its settings."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.process = spawn(worker_command(), env=settings.to_env(), log_path=log_path)
        wait_for_port(settings.web_host, settings.web_port, 120, self.process)

    def wait_drained(self, timeout: float = 1800) -> Drain:
        """Until every message is committed; see :class:`Drain` for the two clocks. The start is the first
        message taken into a batch, not the first one *processed*: the consumed counters move at the end of
        a batch, and a draining worker's first batch holds up to ``batch_max_bytes`` of messages, a large
        share of the run, which the clock would then leave out. The baselines start at their first event
        read, so does this, to within the 50 ms poll: the start is when the last poll answered with nothing
        taken was sent. A poll with no answer (a worker busy in a long chunk holds /metrics past the 2 s
        timeout) tells nothing and moves neither clock; before, it read as "nothing taken" and put the
        start late by its timeout. The end of ``processed_s`` is the first poll (every 0.1 s) that saw the
        raw-event row count at its final value."""
        deadline = time.monotonic() + timeout
        started = None
        asked = time.perf_counter()  # when the last poll answered with nothing taken yet was sent
        rows, rows_at = -1.0, 0.0
        topics = consumed_topics(self.settings)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("worker died")
            if time.monotonic() > deadline:
                raise TimeoutError("worker did not drain")
            now = time.perf_counter()
            text = _metrics_text(self.settings)
            if TAKEN not in text:  # no answer: nothing learnt
                time.sleep(0.05)
                continue
            if started is None:
                if _metric(text, TAKEN) > 0:
                    started = asked
                else:
                    asked = now
            written = _metric(text, EVENT_ROWS)
            if written != rows:
                rows, rows_at = written, now
            if started is not None and sum(group_lag(self.settings, topics).values()) == 0:
                final = _scrape(self.settings, EVENT_ROWS)  # rows of the last batch may land with the commit
                end = rows_at if final == rows else time.perf_counter()
                return Drain(end - started, now - started)
            time.sleep(0.05 if started is None else 0.1)

    def wait_assigned(self, timeout: float = 120) -> None:
        """Until the worker owns every partition (its consumer group has joined)."""
        url = f"http://{self.settings.web_host}:{self.settings.web_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if len(orjson.loads(response.read())["partitions"]) == PARTITIONS:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("worker never got its partitions")

    def stop(self) -> None:
        stop(self.process, timeout=30)


def worker_settings(bootstrap: str, work: Path, name: str) -> Settings:
    return Settings.from_env(
        {},
        bootstrap_servers=bootstrap,
        topic_prefix=f"{name}.",
        app_id=f"bench-{name}",
        partitions=PARTITIONS,
        data_dir=work / name,
        web_port=free_port(),
    )


@dataclass(frozen=True)
class PipelineDrain:
    """What :func:`pipeline_eps` measured of one drain."""

    events: int
    drain: Drain  # the harness's two clocks
    peak_rss_mb: float
    batch_s: float  # the worker's time in batches (engagement_batch_seconds_sum)
    waited_s: float  # of it, waiting for deliveries: inserts, sends (engagement_delivery_wait_seconds_total)

    @property
    def processed_s(self) -> float:
        return self.drain.processed_s

    @property
    def eps(self) -> float:
        """Events/s to the last event processed (see :class:`Drain`)."""
        return self.events / self.drain.processed_s

    @property
    def committed_eps(self) -> float:
        """Events/s to every message committed."""
        return self.events / self.drain.committed_s


def pipeline_eps(settings: Settings, expected: int, work: Path) -> PipelineDrain:
    """Our worker draining ``expected`` events: events/s to the last event processed, events/s to every
    message committed (see :class:`Drain`), its peak RSS (MB), and its own clock of the drain: the time
    it spent in batches and, of that, waiting for the chunks' deliveries (which half set the rate).

    Checked against the worker's own clock: it cannot have drained faster than it processes batches
    (events over the seconds its batches took, persists and waits left out). A start taken too late
    (the bug that overstated batch_eps 3.7x: the clock started once the first batch was processed)
    fails this check instead of printing a figure."""
    worker = Worker(settings, work / f"{settings.app_id}.log")
    try:
        drain = worker.wait_drained()
        busy = _scrape(settings, "engagement_batch_seconds_sum")
        waited = _scrape(settings, "engagement_delivery_wait_seconds_total")
        measured = PipelineDrain(expected, drain, _rss_mb(worker.process.pid, "VmHWM"), busy, waited)
        if busy > 0 and measured.eps > 1.05 * expected / busy:
            raise RuntimeError(
                f"{settings.app_id}: {measured.eps:,.0f} events/s from the harness's clock, but the worker "
                f"spent {busy:.2f} s in batches ({expected / busy:,.0f} events/s at most): the clock is wrong"
            )
        return measured
    finally:
        worker.stop()


def latency(
    settings: Settings,
    messages: list[tuple[str, bytes, bytes, int | None]],
    rate_eps: float,
    seconds: float,
    events_per_message: float,
) -> ProbeDelays:
    """Produce ``messages`` at ``rate_eps`` events/s with a probe every 100 ms; seconds from send to the
    probe's row being visible in ClickHouse (through the worker's /query, polled every 50 ms).

    A probe is timed at the stream's event time (that of the message sent just before it), so it is
    never late: one timed at the stream's start was dropped as late once the stream's event time ran
    more than the window and the allowed lateness ahead (~16 s into a run at ~53,000 events/s), and
    was then left out of the percentiles, the slowest probes with it. A probe never seen (30 s after
    the last send) counts as never visible: infinitely late."""
    worker = Worker(settings, settings.data_dir.parent / "latency-worker.log")
    out = producer(settings.bootstrap_servers)
    sent: dict[str, float] = {}
    visible: dict[str, float] = {}
    done = threading.Event()

    def poll() -> None:
        url = f"http://{settings.web_host}:{settings.web_port}/query"
        while not done.is_set() or len(visible) < len(sent):
            body = orjson.dumps({"sql": "SELECT event_id FROM engagement_events WHERE account_id = 'probe'"})
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as response:
                    rows = orjson.loads(response.read())["rows"]
            except OSError:
                rows = []
            now = time.perf_counter()
            for (event_id,) in rows:
                visible.setdefault(event_id, now)
            if done.is_set() and time.perf_counter() - stop_at > 30:
                return
            time.sleep(0.05)  # 20 queries/s: finer polling loaded the worker it measures (~9 % of chDB's time at 50/s)

    try:
        worker.wait_assigned()
        poller = threading.Thread(target=poll, daemon=True)
        stop_at = float("inf")
        poller.start()
        began = time.perf_counter()
        sent_events = 0.0
        last_probe = 0.0
        iterator = iter(messages)
        while time.perf_counter() - began < seconds:
            topic, key, value, partition = next(iterator)
            out.send(topic, key=key, value=value, partition=partition)
            sent_events += events_per_message
            now = time.perf_counter()
            if now - last_probe >= 0.1:
                last_probe = now
                probe_id = f"probe-{len(sent)}"
                first = orjson.loads(value)
                probe = {
                    "event_id": probe_id,
                    "type": "like",
                    "ts": (first[0] if isinstance(first, list) else first)["ts"],  # the stream's event time now
                    "actor_id": "bench",
                    "account_id": "probe",
                }
                out.send(settings.topic("likes"), key=b"probe", value=orjson.dumps(probe))
                out.flush()
                sent[probe_id] = time.perf_counter()
            ahead = sent_events / rate_eps - (time.perf_counter() - began)
            if ahead > 0:
                time.sleep(ahead)
        out.flush()
        done.set()
        stop_at = time.perf_counter()
        poller.join(timeout=60)
    finally:
        out.close()
        worker.stop()
    return ProbeDelays([visible[k] - sent[k] if k in visible else math.inf for k in sent])


@dataclass(frozen=True)
class ProbeDelays:
    """What :func:`latency` measured: every probe's delay in the order sent (``math.inf``: never visible)."""

    in_order: list[float]

    @property
    def missing(self) -> int:
        return sum(1 for delay in self.in_order if delay == math.inf)

    def quantile(self, q: float, part: slice = slice(None)) -> float | None:
        """The ``q`` quantile (nearest rank) of the delays of the probes in ``part`` (of the order sent),
        None if there are none or it falls on a probe never visible."""
        delays = sorted(self.in_order[part])
        if not delays:
            return None
        delay = delays[min(len(delays) - 1, round(q * (len(delays) - 1)))]
        return None if delay == math.inf else delay

    def halves(self) -> str:
        """p50 and p99 of the run's first half of probes against its second: steady, or rising (the
        worker past its knee at this rate, the delays growing with the backlog or the states)."""
        middle = len(self.in_order) // 2

        def shown(part: slice) -> str:
            p50, p99 = self.quantile(0.5, part), self.quantile(0.99, part)
            return " / ".join("never" if v is None else f"{v:.2f}" for v in (p50, p99))

        return f"first half {shown(slice(None, middle))} s, second half {shown(slice(middle, None))} s"


def rss_with_accounts(bootstrap: str, work: Path, accounts: int) -> float:
    """Worker RSS (MB) once ``accounts`` distinct accounts each have an open window."""
    settings = worker_settings(bootstrap, work, "rss")
    ensure_topics(settings)
    owner = account_partitioner(PARTITIONS)
    start = 1_767_225_600_000
    buckets: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    messages: list[tuple[str, bytes, bytes, int]] = []
    for i in range(accounts):
        account = f"account-{i:07d}"
        event = orjson.dumps(
            {
                "event_id": f"r{i}",
                "type": "like",
                "ts": start + i % 50_000,
                "actor_id": f"u{i % 997}",
                "account_id": account,
            }
        )
        p = owner(account)
        buckets[p].append(event)
        if len(buckets[p]) == 500:
            messages.append((settings.topic("likes"), b"x", b"[" + b",".join(buckets[p]) + b"]", p))
            buckets[p] = []
    messages += [(settings.topic("likes"), b"x", b"[" + b",".join(v) + b"]", p) for p, v in buckets.items() if v]
    out = producer(bootstrap)
    for topic, key, value, p in messages:
        out.send(topic, key=key, value=value, partition=p)
    out.flush()
    out.close()
    worker = Worker(settings, work / "rss-worker.log")
    try:
        worker.wait_drained()
        return _rss_mb(worker.process.pid, "VmRSS")
    finally:
        worker.stop()


# -- the run --------------------------------------------------------------------------------------


def make_flat_topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    configs = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
    admin.create_topics([NewTopic(name, PARTITIONS, 1, topic_configs=configs)])
    admin.close()


def flat_messages(data: list[bytes]) -> Iterator[tuple[str, bytes, bytes, int | None]]:
    for line in data:
        obj = orjson.loads(line)
        yield "flat", obj["account_id"].encode(), line, None


def loop_seconds() -> float:
    """Seconds this interpreter takes for 10,000,000 additions in a loop, the best of three: the machine's
    speed at the moment, which moves by up to 2x from one hour to the next on a shared machine and every
    figure with it (bench/RESULTS.md compares runs by it)."""
    # At module level, on global names, as `python -c` runs it: the figure RESULTS.md has quoted since run
    # 30 (in a function, on local names, the same loop takes about half as long).
    code = compile("x = 0\nfor i in range(10_000_000):\n    x += i\n", "<loop>", "exec")
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        exec(code, {})
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def run(quick: bool, events: int | None) -> dict[str, Any]:
    n = events or (30_000 if quick else 300_000)
    accounts = 5_000 if quick else 20_000
    results: dict[str, Any] = dict.fromkeys(KEYS)
    notes: dict[str, str] = {}
    committed: dict[str, float] = {}  # the same drains timed to every offset committed (see Drain)
    loop = {"start": loop_seconds()}  # and "end": the machine's speed around the run
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "compiled": compiled.STATUS.active,  # the hot path built by mypyc (pipeline/compiled.py)
        "loop_10m_s": loop,
    }
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        work = Path(tmp)
        bootstrap = broker.bootstrap_servers
        log(f"generating {n:,} events over {accounts:,} accounts")
        model = TrafficModel(accounts=accounts, users=accounts * 10, events_per_second=2000, events=n, seed=1)
        data = list(lines(model))
        single = worker_settings(bootstrap, work, "single")
        batch = worker_settings(bootstrap, work, "batch")
        for settings in (single, batch):
            ensure_topics(settings)
        make_flat_topic(bootstrap, "flat")
        log("publishing: flat (one event per message), single (one per message), batch (JSON arrays)")
        publish(bootstrap, flat_messages(data))
        publish(bootstrap, encode(data, single, batch=1))
        batch_messages = encode(data, batch, batch=100)
        publish(bootstrap, batch_messages)

        log("raw_consume_eps: aiokafka reading the single-event messages")
        results["raw_consume_eps"] = raw_consume_eps(bootstrap, [single.topic(t) for t in SOURCE_TOPICS], n)
        log("naive_faust_eps: the textbook Faust agent")
        results["naive_faust_eps"] = naive_faust_eps(bootstrap, "flat", n, work)
        log("peer_eps: Quix Streams")
        results["peer_eps"], reason = peer_eps(bootstrap, "flat", n, work)
        if reason:
            notes["peer_eps"] = reason
        log("single_eps: our pipeline, one event per message")
        single_drain = pipeline_eps(single, n, work)
        results["single_eps"], committed["single_eps"] = single_drain.eps, single_drain.committed_eps
        log("batch_eps: our pipeline, JSON-array messages")
        batch_drain = pipeline_eps(batch, n, work)
        results["batch_eps"], committed["batch_eps"] = batch_drain.eps, batch_drain.committed_eps
        results["peak_rss_mb"] = batch_drain.peak_rss_mb
        drains = {"single_eps": single_drain, "batch_eps": batch_drain}

        log("latency at half of batch_eps")
        lat = worker_settings(bootstrap, work, "latency")
        ensure_topics(lat)
        rate, seconds = results["batch_eps"] / 2, 10 if quick else 20
        live_events = int(rate * seconds * 1.2) + 10_000  # enough to keep producing for the whole run
        live_model = replace(model, seed=2, events=None, seconds=600, start_ms=model.start_ms + 3_600_000)
        live = encode(list(lines(replace(live_model, events=live_events))), lat, batch=100)
        per_message = live_events / max(1, len(live))
        probes = latency(lat, live, rate, seconds, per_message)
        results["p50_latency_s"], results["p99_latency_s"] = probes.quantile(0.5), probes.quantile(0.99)
        notes["latency probes"] = f"p50 / p99 in the {probes.halves()}"
        if probes.missing:
            never = f"{probes.missing} of {len(probes.in_order)} probes"
            notes["p99_latency_s"] = f"{never} never visible (30 s after the last was sent)"
        if quick:
            notes["rss_1m_accounts_mb"] = "not measured with --quick"
        else:
            log("rss_1m_accounts_mb: 1,000,000 accounts with open windows")
            results["rss_1m_accounts_mb"] = rss_with_accounts(bootstrap, work, 1_000_000)
    loop["end"] = loop_seconds()
    return {**results, "machine": machine, "events": n, "_notes": notes, "_committed": committed, "_drains": drains}


# -- scale-out: 1 vs 2 workers ----------------------------------------------------------------------

SERVER_SCRIPT = ROOT / "tests" / "services" / "clickhouse-server.sh"


def _owned(settings: Settings) -> list[int]:
    url = f"http://{settings.web_host}:{settings.web_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return list(orjson.loads(response.read())["partitions"])
    except OSError:
        return []


def wait_shared(members: list[Settings], timeout: float = 120) -> None:
    """Until every member owns partitions, all of them together own each partition once, and that held
    for a second (the group is stable: no rebalance left to pay for in the measurement)."""
    deadline = time.monotonic() + timeout
    stable = 0
    while stable < 2:
        owned = [_owned(member) for member in members]
        settled = all(owned) and sorted(p for o in owned for p in o) == list(range(PARTITIONS))
        stable = stable + 1 if settled else 0
        if time.monotonic() > deadline:
            raise TimeoutError(f"the group never shared the partitions: {owned}")
        time.sleep(0.5)


def group_eps(
    settings: Settings, count: int, messages: list[tuple[str, bytes, bytes, int | None]], expected: int, work: Path
) -> float:
    """Events/s of ``count`` workers of one group: started, the partitions shared out, then ``messages``
    (``expected`` events) published; from the first event any of them consumed to every message
    committed."""
    processes = []
    members = []
    for index in range(count):
        member = replace(settings, web_port=free_port(), data_dir=work / f"{settings.app_id}-{index}")
        member.data_dir.mkdir(parents=True)
        members.append(member)
        processes.append(spawn(worker_command(), env=member.to_env(), log_path=work / f"{member.app_id}-{index}.log"))
    try:
        for member, process in zip(members, processes, strict=True):
            wait_for_port(member.web_host, member.web_port, 120, process)
        wait_shared(members)
        threading.Thread(target=publish, args=(settings.bootstrap_servers, messages), daemon=True).start()
        topics = consumed_topics(settings)
        started = None
        deadline = time.monotonic() + 1800
        while True:
            if any(process.poll() is not None for process in processes):
                raise RuntimeError(f"a worker died; see {work}")
            now = time.perf_counter()
            if started is None and any(_scrape(m, "engagement_messages_taken_total") > 0 for m in members):
                started = now
            if started is not None and sum(group_lag(settings, topics).values()) == 0:
                return expected / (now - started)
            if time.monotonic() > deadline:
                raise TimeoutError("the workers did not drain")
            time.sleep(0.05 if started is None else 0.2)
    finally:
        for process in processes:
            stop(process, timeout=30)


def workers_scaling(events: int | None) -> dict[str, Any]:
    """Throughput of 1 and of 2 workers of one consumer group over the same JSON-array messages (4
    partitions), both writing to one private ClickHouse server (tests/services/clickhouse-server.sh; two
    workers cannot share the embedded store). ``workers_2_ratio`` is the 2-worker figure over the 1-worker
    one; on a machine with fewer cores than workers + broker + ClickHouse it stays below 2."""
    n = events or 200_000
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        work = Path(tmp)
        port = free_port()
        server = spawn([str(SERVER_SCRIPT), "start", str(work / "clickhouse"), str(port)], log_path=work / "ch.log")
        try:
            wait_for_port("127.0.0.1", port, 60, server)
            log(f"generating {n:,} events")
            model = TrafficModel(accounts=20_000, users=200_000, events_per_second=2000, events=n, seed=1)
            data = list(lines(model))
            results: dict[str, Any] = {"events": n, "machine": {"cpus": os.cpu_count()}}
            for count in (1, 2):
                settings = replace(
                    worker_settings(broker.bootstrap_servers, work, f"scale{count}"),
                    warehouse="server",
                    clickhouse_port=port,
                    clickhouse_database=f"bench_scale{count}",
                )
                ensure_topics(settings)
                log(f"workers_{count}_eps: {count} worker(s) of one group")
                messages = encode(data, settings, batch=100)
                results[f"workers_{count}_eps"] = group_eps(settings, count, messages, n, work)
            results["workers_2_ratio"] = results["workers_2_eps"] / results["workers_1_eps"]
            return results
        finally:
            stop(server, timeout=30)


def scaling_report(results: dict[str, Any]) -> str:
    one = results["workers_1_eps"]
    rows = [f"events: {results['events']:,}   cpus: {results['machine']['cpus']}", ""]
    rows.append(f"{'figure':<22}{'value':>14}  {'/ 1 worker':>10}")
    for count in (1, 2):
        value = results[f"workers_{count}_eps"]
        rows.append(f"workers_{count}_eps{'':<10}{value:>14,.0f}  {value / one:>9.2f}x")
    return "\n".join(rows)


def report(results: dict[str, Any]) -> str:
    raw = results["raw_consume_eps"]
    naive = results["naive_faust_eps"]
    peer = results["peer_eps"]

    def ratio(value: float | None, base: float | None) -> str:
        return "-" if value is None or not base else f"{value / base:6.2f}x"

    lines_out = [f"events: {results['events']:,}   machine: {results['machine']}", ""]
    lines_out.append(f"{'figure':<22}{'value':>14}  {'/ raw':>8}  {'/ naive':>8}  {'/ peer':>8}")
    for key in ("raw_consume_eps", "naive_faust_eps", "peer_eps", "single_eps", "batch_eps"):
        value = results[key]
        shown = "null" if value is None else f"{value:,.0f}"
        lines_out.append(
            f"{key:<22}{shown:>14}  {ratio(value, raw):>8}  {ratio(value, naive):>8}  {ratio(value, peer):>8}"
        )
    for key, value in results.get("_committed", {}).items():  # the same drains, to every offset committed
        name = f"{key} (committed)"
        lines_out.append(
            f"{name:<22}{value:>14,.0f}  {ratio(value, raw):>8}  {ratio(value, naive):>8}  {ratio(value, peer):>8}"
        )
    for key in ("p50_latency_s", "p99_latency_s", "peak_rss_mb", "rss_1m_accounts_mb"):
        value = results[key]
        lines_out.append(f"{key:<22}{'null' if value is None else f'{value:,.3f}':>14}")
    lines_out.append("")
    drains = results.get("_drains", {})
    for key, drain in drains.items():  # where the drain's time went, on the worker's own clock
        seconds = drain.processed_s
        waited = drain.waited_s / drain.batch_s if drain.batch_s else 0.0
        lines_out.append(
            f"  {key} drain: {seconds:.2f} s, in batches {drain.batch_s:.2f} s ({drain.batch_s / seconds:.0%}),"
            f" {waited:.0%} of that waiting for deliveries"
        )
    if drains:
        lines_out.append("  (batches most of the drain, waiting little: the worker's own work set its rate; waiting")
        lines_out.append("  much: the inserts and sends did; batches little of it: the intake between them did)")
        lines_out.append("")
    targets = [
        ("batch_eps >= 0.25 x raw_consume_eps", results["batch_eps"] >= 0.25 * raw),
        ("single_eps >= 3 x naive_faust_eps", results["single_eps"] >= 3 * naive),
        ("single_eps >= peer_eps", peer is not None and results["single_eps"] >= peer),
        ("batch_eps >= 5 x peer_eps", peer is not None and results["batch_eps"] >= 5 * peer),
        ("p99_latency_s <= 2", results["p99_latency_s"] is not None and results["p99_latency_s"] <= 2),
        (
            "rss_1m_accounts_mb <= 2048",
            results["rss_1m_accounts_mb"] is not None and results["rss_1m_accounts_mb"] <= 2048,
        ),
    ]
    lines_out += [f"  [{'x' if ok else ' '}] {name}" for name, ok in targets]
    for key, note in results["_notes"].items():
        lines_out.append(f"  note: {key}: {note}")
    return "\n".join(lines_out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, no 1M-account RSS run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--rss-only", action="store_true", help="only the 1,000,000-account RSS figure")
    parser.add_argument(
        "--workers-scaling", action="store_true", help="only 1 vs 2 workers of one group on a ClickHouse server"
    )
    args = parser.parse_args(argv)
    if args.workers_scaling:
        scaling = workers_scaling(args.events)
        print(orjson.dumps(scaling).decode() if args.json else scaling_report(scaling))
        return 0
    if args.rss_only:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp, EmbeddedBroker() as broker:
            print(f"rss_1m_accounts_mb {rss_with_accounts(broker.bootstrap_servers, Path(tmp), 1_000_000):,.1f}")
        return 0
    results = run(args.quick, args.events)
    if args.json:
        print(orjson.dumps({k: v for k, v in results.items() if not k.startswith("_")}).decode())
    else:
        print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
