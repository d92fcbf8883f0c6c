"""The fault-test harness: a generated stream published to the embedded broker while real workers process
it, faults injected, then every ClickHouse result compared with the pure-Python reference, exactly.

A scenario builds a :class:`Stream`, starts a :class:`Cluster` (broker topics, workers as processes), runs
its fault, calls :meth:`Cluster.finish` (everything processed, open windows finalized) and then
:func:`assert_exact`. ``ENGAGEMENT_CHAOS_EVENTS`` sets the stream's size (100,000 by default).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline import queries
from pipeline.broker import EmbeddedBroker
from pipeline.decode import decode_message
from pipeline.drops import DropConfig, DropDetector, DropState
from pipeline.events import REKEY_TOPIC, SOURCE_TOPICS, TYPE_TOPIC, Event
from pipeline.kafka_admin import consumed_topics, ensure_topics, group_lag
from pipeline.partitioning import account_partitioner
from pipeline.poison import poison_stream
from pipeline.processes import free_port, spawn, stop, wait_for_port
from pipeline.query_client import run_query
from pipeline.reference import ReferenceRows, reference_rows
from pipeline.replay import worker_command
from pipeline.settings import Settings
from tests.integration.helpers import config_of, stored_windows

SERVER_SCRIPT = Path(__file__).resolve().parent.parent / "services" / "clickhouse-server.sh"
EVENTS = int(os.environ.get("ENGAGEMENT_CHAOS_EVENTS", "100000"))
SEED = int(os.environ.get("ENGAGEMENT_CHAOS_SEED", str(int(time.time()) % 100_000)))


@dataclass
class Stream:
    """Kafka messages to publish, in order, as ``(topic, partition, value)``, and what they must give: every
    valid event they carry (duplicates included) and the dead letters expected, as counts of
    ``(source topic, source partition, element index, reason)``."""

    messages: list[tuple[str, int, bytes]]
    events: list[Event] = field(default_factory=list)
    dead_letters: Counter[tuple[str, int, int, str]] = field(default_factory=Counter)

    def reasons(self) -> Counter[str]:
        """The expected dead letters by reason."""
        out: Counter[str] = Counter()
        for (_, _, _, reason), n in self.dead_letters.items():
            out[reason] += n
        return out

    @classmethod
    def of(cls, messages: list[tuple[str, int, bytes]], settings: Settings) -> Stream:
        """The stream of ``messages``, its expectations found by decoding each message as the worker does."""
        stream = cls(messages)
        kinds = {settings.topic(kind): kind for kind in SOURCE_TOPICS}
        for topic, partition, value in messages:
            events, rejections = decode_message(value, kinds[topic], settings.max_message_bytes)
            stream.events.extend(events)
            stream.dead_letters.update((topic, partition, r.index, r.reason.value) for r in rejections)
        return stream


def generated_events(count: int = EVENTS, seed: int = SEED, events_per_second: float = 150) -> list[dict[str, Any]]:
    """``count`` realistic events (duplicates, disorder within the lateness, self-engagement, Unicode), at
    ``events_per_second`` of event time."""
    from pipeline.generate import TrafficModel, generate

    model = TrafficModel(accounts=800, users=20_000, events_per_second=events_per_second, events=count, seed=seed)
    return list(generate(model))


def as_messages(
    objects: Iterable[dict[str, Any]],
    settings: Settings,
    batch: int = 100,
    stray_share: float = 0.03,
    seed: int = SEED,
) -> list[tuple[str, int, bytes]]:
    """Events as Kafka messages the way producers send them: JSON arrays of up to ``batch`` events of one
    topic and owning partition, in arrival order per account; ``stray_share`` of them alone on a random
    partition instead (the worker re-keys those to their owner)."""
    rnd = random.Random(seed)
    owner = account_partitioner(settings.partitions)
    buckets: dict[tuple[str, int], list[dict[str, Any]]] = {}
    out: list[tuple[str, int, bytes]] = []
    for count, obj in enumerate(objects, start=1):
        topic = settings.topic(TYPE_TOPIC[obj["type"]])
        if rnd.random() < stray_share:
            out.append((topic, rnd.randrange(settings.partitions), orjson.dumps(obj)))
        else:
            key = (topic, owner(obj["account_id"]))
            bucket = buckets.setdefault(key, [])
            bucket.append(obj)
            if len(bucket) >= batch:
                out.append((*key, orjson.dumps(buckets.pop(key))))
        if count % 2000 == 0:  # bounds how long a slow topic's events wait (well inside the lateness)
            out.extend((*key, orjson.dumps(bucket)) for key, bucket in buckets.items())
            buckets.clear()
    out.extend((*key, orjson.dumps(bucket)) for key, bucket in buckets.items())
    return out


def poisoned(stream: Stream, settings: Settings, share: float = 0.05, seed: int = SEED) -> Stream:
    """``stream`` with malformed messages mixed in (:mod:`pipeline.poison`) so that ``share`` of all
    messages are malformed, each right after the message it borrows from and on its partition; what they
    must give (dead letters by reason, the valid events of mixed arrays) from the poison contract."""
    kinds = {settings.topic(kind): kind for kind in SOURCE_TOPICS}
    by_topic: dict[str, list[int]] = {}
    for index, (topic, _, _) in enumerate(stream.messages):
        by_topic.setdefault(topic, []).append(index)
    following: dict[int, list[tuple[str, int, bytes]]] = {}
    out = Stream([], list(stream.events), Counter(stream.dead_letters))
    for topic, indexes in by_topic.items():
        values = [stream.messages[i][2] for i in indexes]
        for item in poison_stream(values, kinds[topic], share, seed, settings.max_message_bytes):
            if item.kind is None:
                continue
            origin = indexes[item.origin]
            partition = stream.messages[origin][1]
            following.setdefault(origin, []).append((topic, partition, item.value))
            out.dead_letters.update((topic, partition, d.index, d.reason.value) for d in item.dead_letters)
            out.events.extend(item.valid_events)
    for index, message in enumerate(stream.messages):
        out.messages.append(message)
        out.messages.extend(following.get(index, ()))
    return out


def chaos_settings(base: Settings, bootstrap_servers: str) -> Settings:
    """Settings for fault tests: 4 partitions, frequent persists and commits (so a fault finds states
    stored ahead of committed offsets), a short session timeout (a killed worker's partitions move
    after ~6 s instead of 10), and 10-second windows with a drop detector quick to arm, so the generated
    streams raise alerts (over 600 before the comparison's cutoff: firing and resolved, drops and
    silences). The allowed lateness is the default (300 s); the stream is published at about 10x its
    event-time pace, so a wall-clock delay is ten times longer in event time here than in production.
    """
    return replace(
        base,
        bootstrap_servers=bootstrap_servers,
        partitions=4,
        commit_interval=0.3,
        persist_interval_seconds=0.7,
        broker_session_timeout=6.0,
        window_seconds=10,  # 60 windows in a stream of ~10 minutes: enough for drops to arm and fire
        drop_warmup_windows=3,
        drop_half_life_windows=3.0,
        drop_min_baseline=2.0,
        drop_windows=2,
        dead_letter_brake_linger_seconds=1.0,  # a tripped worker's wait for a scrape: none here
    )


class Cluster:
    """Workers of one consumer group on ``settings``, as processes; the publisher of a stream."""

    def __init__(self, settings: Settings, directory: Path) -> None:
        self.settings = settings
        self.directory = directory
        self.workers: dict[str, tuple[subprocess.Popen[bytes], Settings]] = {}
        self.exits: list[tuple[str, int | None]] = []
        ensure_topics(settings)

    # -- publishing -------------------------------------------------------------------------------

    def publish(self, messages: Sequence[tuple[str, int, bytes]], seconds: float = 0.0) -> threading.Thread:
        """Publish ``messages`` in order, spread over about ``seconds`` (0: at once), on a thread; join it
        to know every message was acknowledged."""
        thread = threading.Thread(target=self._publish, args=(messages, seconds), daemon=True)
        thread.start()
        return thread

    def _publish(self, messages: Sequence[tuple[str, int, bytes]], seconds: float) -> None:
        producer = KafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            linger_ms=5,
            max_request_size=2 * self.settings.max_message_bytes,  # poison holds oversized messages
        )
        started = time.monotonic()
        for index, (topic, partition, value) in enumerate(messages):
            producer.send(topic, value=value, partition=partition)
            if seconds and index % 20 == 0:
                ahead = index / len(messages) * seconds - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
        producer.close()

    # -- workers ----------------------------------------------------------------------------------

    def start(self, name: str, **overrides: Any) -> Settings:
        """Start worker ``name`` (a process; logs in ``<directory>/worker-<name>.log``) and wait until its
        web server answers. Returns its settings. Workers of a ClickHouse server each get a data directory
        of their own; with the embedded store (chDB: one process at a time) they share the cluster's."""
        data_dir = (
            self.settings.data_dir if self.settings.warehouse == "embedded" else self.directory / f"worker-{name}"
        )
        settings = replace(self.settings, web_port=free_port(), data_dir=data_dir, **overrides)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        process = spawn(worker_command(), env=settings.to_env(), log_path=self.log(name))
        self.workers[name] = (process, settings)
        wait_for_port(settings.web_host, settings.web_port, 120, process)
        return settings

    def log(self, name: str) -> Path:
        return self.directory / f"worker-{name}.log"

    def kill(self, name: str) -> None:
        """``kill -9`` worker ``name``: no shutdown, no last commit."""
        process, _ = self.workers.pop(name)
        process.send_signal(signal.SIGKILL)
        self.exits.append((name, process.wait(timeout=30)))

    def stop(self, name: str) -> int | None:
        """Stop worker ``name`` cleanly (SIGTERM) and return its exit code."""
        process, _ = self.workers.pop(name)
        code = stop(process, timeout=60)
        self.exits.append((name, code))
        return code

    def wait_exit(self, name: str, timeout: float = 120.0) -> int:
        """Until worker ``name`` exits by itself; its exit code."""
        process, _ = self.workers.pop(name)
        code = process.wait(timeout=timeout)
        self.exits.append((name, code))
        return code

    def consumed(self, name: str) -> float:
        """Events worker ``name`` has consumed since it started (its Prometheus counter)."""
        return self.metric(name, "engagement_events_consumed_total")

    def metric(self, name: str, metric: str, having: str = "") -> float:
        """Prometheus metric ``metric`` of worker ``name`` since it started, summed over its labels (0
        before its first sample); a histogram's ``_count`` or ``_sum`` too. ``having``: only the samples
        whose line holds it (a label, ``kind="slice"``)."""
        _, settings = self.workers[name]
        url = f"http://{settings.web_host}:{settings.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((f"{metric}{{", f"{metric} ")) and having in line
        )

    def query(self, name: str, sql: str) -> list[list[Any]]:
        """Rows of ``sql`` read through worker ``name``'s ``/query`` endpoint."""
        _, settings = self.workers[name]
        url = f"http://{settings.web_host}:{settings.web_port}/query"
        request = urllib.request.Request(url, data=orjson.dumps({"sql": sql}))
        with urllib.request.urlopen(request, timeout=30) as response:
            rows: list[list[Any]] = orjson.loads(response.read())["rows"]
        return rows

    def committed(self) -> dict[tuple[str, int], int | None]:
        """The group's committed offset of every partition of every pipeline topic (None: nothing yet)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers, group_id=self.settings.app_id, enable_auto_commit=False
        )
        try:
            return {
                (topic, partition): consumer.committed(TopicPartition(topic, partition))
                for topic in consumed_topics(self.settings)
                for partition in range(self.settings.partitions)
            }
        finally:
            consumer.close()

    def dump_broker(self) -> Path:
        """Write what the in-memory broker holds and is gone with the test, for a failed check: the group's
        committed offsets, each pipeline topic's end offsets, and every record of the account-state
        changelog and of the re-key topic (partition, offset, timestamp, key, value). Returns the file
        (``broker-dump.json`` in the test's directory)."""
        from pipeline.state_records import is_chunk_key, parse_chunk_key
        from pipeline.worker import ACCOUNT_STATE_TABLE

        changelog = f"{self.settings.app_id}-{ACCOUNT_STATE_TABLE}-changelog"
        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers, auto_offset_reset="earliest", consumer_timeout_ms=3000
        )
        try:
            topics = [*consumed_topics(self.settings), changelog]
            tps = [TopicPartition(t, p) for t in topics for p in range(self.settings.partitions)]
            ends = {f"{tp.topic}:{tp.partition}": offset for tp, offset in consumer.end_offsets(tps).items()}
            rekey = self.settings.topic(REKEY_TOPIC)
            consumer.assign([tp for tp in tps if tp.topic in (changelog, rekey)])
            records, rekeyed = [], []
            for r in consumer:
                raw_key = bytes(r.key or b"")
                if is_chunk_key(raw_key):  # a slice of a large state's JSON: its size, not its text
                    generation, index, account = parse_chunk_key(raw_key)
                    key = f"chunk {index} of {generation} of {account.decode(errors='replace')}"
                    value: Any = None if r.value is None else len(r.value)
                else:
                    key, value = raw_key.decode(errors="replace"), orjson.loads(r.value or b"null")
                kept = records if r.topic == changelog else rekeyed
                kept.append([r.partition, r.offset, r.timestamp, key, value])
        finally:
            consumer.close()
        committed = {f"{topic}:{partition}": offset for (topic, partition), offset in self.committed().items()}
        path = self.directory / "broker-dump.json"
        path.write_bytes(orjson.dumps({"committed": committed, "ends": ends, "changelog": records, "rekeyed": rekeyed}))
        return path

    def wait_consuming(self, name: str, timeout: float = 120.0) -> None:
        """Until worker ``name`` has consumed events (its group join is done and data flows)."""
        deadline = time.monotonic() + timeout
        while self.consumed(name) == 0:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {name} consumed nothing in {timeout:.0f}s; see {self.log(name)}")
            time.sleep(0.1)

    def wait_logged(self, name: str, text: str, times: int = 1, timeout: float = 120.0) -> None:
        """Until worker ``name``'s log holds ``text`` ``times`` times (a step of its life that no metric shows)."""
        deadline = time.monotonic() + timeout
        while self.log(name).read_text(errors="replace").count(text) < times:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {name} did not log {text!r} in {timeout:.0f}s; see {self.log(name)}")
            time.sleep(0.1)

    def check_alive(self) -> None:
        for name, (process, _) in self.workers.items():
            if process.poll() is not None:
                raise AssertionError(f"worker {name} died (code {process.returncode}); see {self.log(name)}")

    def wait_processed(self, timeout: float = 300.0) -> None:
        """Until the group has committed every message of every pipeline topic."""
        deadline = time.monotonic() + timeout
        topics = consumed_topics(self.settings)
        while lag := {tp: n for tp, n in group_lag(self.settings, topics).items() if n}:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"messages still uncommitted after {timeout:.0f}s: {lag}")
            time.sleep(0.3)

    def finish(self, timeout: float = 300.0) -> None:
        """Wait until everything is processed, finalize every open window on every worker, stop them all
        cleanly (each must exit 0)."""
        self.wait_processed(timeout)
        for _, settings in self.workers.values():
            url = f"http://{settings.web_host}:{settings.web_port}/admin/flush"
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=300).read()
        for name in list(self.workers):
            code = self.stop(name)
            assert code in (0, -signal.SIGTERM), f"worker {name} exited with {code}; see {self.log(name)}"

    def shutdown(self) -> None:
        for name in list(self.workers):
            self.stop(name)


class ClickHouseServer:
    """A private ClickHouse server (``tests/services/clickhouse-server.sh start``) that a scenario may kill
    and start again: on the same data directory and port, so its databases survive and clients reconnect.
    The session's server is shared with other tests and must never be stopped; a fault takes its own."""

    host = "127.0.0.1"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections (its tables are loaded by then)."""
        command = [str(SERVER_SCRIPT), "start", str(self.directory), str(self.port)]
        self.process = spawn(command, log_path=self.directory / "stdout.log")  # the script execs the server
        wait_for_port(self.host, self.port, timeout, self.process)

    def kill(self) -> int:
        """``kill -9`` the server: no shutdown, inserts in progress cut off. Returns its exit code."""
        assert self.process is not None, "the server is not running"
        process, self.process = self.process, None
        process.send_signal(signal.SIGKILL)
        return process.wait(timeout=30)

    def stop(self) -> int | None:
        """Stop the server (SIGTERM) if it runs; returns its exit code."""
        process, self.process = self.process, None
        return stop(process, timeout=30)


def assert_exact(settings: Settings, stream: Stream, alerts: bool = True) -> None:
    """Every ClickHouse result equals what the reference computes from the stream's valid events: the
    final windows, the raw events (each exactly once), the dead letters by reason and (``alerts``) the
    drop alerts, of which there must be some."""
    ids = {row[0] for row in run_query(settings, "SELECT event_id FROM engagement_events FINAL").rows}
    valid = {e.event_id for e in stream.events}
    assert ids == valid, explain_missing(settings, stream, valid - ids, ids - valid)
    counts = run_query(settings, queries.COUNT_TABLE_ROWS).as_dicts()[0]
    assert counts["events"] == len(ids)  # each event exactly once
    expected = reference_rows(stream.events, config_of(settings))
    stored = stored_windows(settings)
    missing = [k for k in expected if k not in stored][:3]
    wrong = [(expected[k], stored[k]) for k in expected if k in stored and stored[k] != expected[k]][:3]
    extra = [k for k in stored if k not in expected][:3]
    assert not (missing or wrong or extra), f"missing {missing}; wrong {wrong}; extra {extra}"
    assert counts["final_windows"] == counts["windows"] == len(expected)
    letters = run_query(
        settings,
        "SELECT source_topic, source_partition, element_index, reason, count() FROM engagement_dead_letters FINAL"
        " GROUP BY source_topic, source_partition, element_index, reason",
    )
    stored_letters = Counter({(str(t), int(p), int(i), str(r)): int(n) for t, p, i, r, n in letters.rows})
    assert stored_letters == stream.dead_letters, (
        stored_letters - stream.dead_letters,
        stream.dead_letters - stored_letters,
    )
    if alerts:
        assert_alerts_exact(settings, stream, expected)


def explain_missing(settings: Settings, stream: Stream, missing: set[str], unexpected: set[str]) -> str:
    """A failure message for raw events that differ from the reference: how many, from which messages
    (topic, partition, offsets) and owning partitions, and where the first ones went (rows before FINAL,
    dead letters holding them)."""
    owner = account_partitioner(settings.partitions)
    kinds = {settings.topic(kind): kind for kind in SOURCE_TOPICS}
    sources: dict[tuple[str, int], list[int]] = {}
    owners: Counter[int] = Counter()
    offsets: Counter[tuple[str, int]] = Counter()
    for topic, partition, value in stream.messages:
        offset = offsets[(topic, partition)]
        offsets[(topic, partition)] += 1
        for event in decode_message(value, kinds[topic], settings.max_message_bytes)[0]:
            if event.event_id in missing:
                sources.setdefault((topic, partition), []).append(offset)
                owners[owner(event.account_id)] += 1
    lines = [
        f"{len(missing)} missing events {sorted(missing)[:5]}, {len(unexpected)} unexpected {sorted(unexpected)[:5]}",
        f"missing by owning partition: {dict(sorted(owners.items()))}",
        "missing by source partition (events, offsets): "
        + ", ".join(f"{t}:{p} {len(o)} @{min(o)}-{max(o)}" for (t, p), o in sorted(sources.items())),
    ]
    for event_id in sorted(missing)[:3]:
        rows = run_query(settings, "SELECT count() FROM engagement_events WHERE event_id = %(id)s", {"id": event_id})
        letters = run_query(
            settings,
            "SELECT reason, source_topic, source_partition, source_offset, detail FROM engagement_dead_letters"
            " WHERE position(payload, %(id)s) > 0",
            {"id": event_id},
        )
        lines.append(f"{event_id}: {rows.rows[0][0]} rows before FINAL; dead letters {letters.rows[:3]}")
    return "\n".join(lines)


Alert = tuple[str, int, str, str, float, float]  # account, window start (ms), state, reason, observed, baseline


def assert_alerts_exact(settings: Settings, stream: Stream, windows: ReferenceRows) -> None:
    """The drop alerts equal the detector's over the reference's final windows, up to a cutoff that every
    partition's event-time frontier passed before the end: the newest event of the partition that ends
    first, less the allowed lateness and 5 windows of slack (after it, silence was observed up to wherever
    each partition's frontier happened to stop, which the reference does not model)."""
    config = DropConfig.of(settings)
    owner = account_partitioner(settings.partitions)
    newest: dict[int, int] = {}
    for event in stream.events:
        partition = owner(event.account_id)
        newest[partition] = max(newest.get(partition, event.ts_ms), event.ts_ms)
    cutoff = (min(newest.values()) - settings.allowed_lateness_seconds * 1000) // config.window_ms * config.window_ms
    cutoff -= 5 * config.window_ms
    expected = {a for a in reference_alerts(windows, config, cutoff) if a[1] + config.window_ms <= cutoff}
    rows = run_query(
        settings,
        "SELECT account_id, toInt64(toUInt32(window_start)) * 1000, state, reason, observed, baseline"
        " FROM engagement_alerts FINAL",
    ).rows
    stored = {(str(a), int(s), str(st), str(r), float(o), float(b)) for a, s, st, r, o, b in rows}
    stored = {a for a in stored if a[1] + config.window_ms <= cutoff}
    # exactly, baselines included: however a worker's frontier cut a silence, its decay is applied in one
    # power (DropState.decay), as in the reference's single step
    assert stored == expected, (sorted(stored - expected)[:3], sorted(expected - stored)[:3])
    assert expected, "the scenario raised no alert before the cutoff: the comparison proves nothing"


def reference_alerts(windows: ReferenceRows, config: DropConfig, silent_until: int) -> list[Alert]:
    """The detector over each account's final windows in order (gaps scoring 0), then over the silence of
    every account up to ``silent_until`` (the worker's timer watches only accounts whose silence can
    still raise an alert: observing all of them here checks that choice)."""
    detector = DropDetector(config)
    states: dict[str, DropState] = {}
    raised = []
    for account, start in sorted(windows):
        state = states.setdefault(account, DropState())
        raised += detector.observe(account, state, start, windows[(account, start)][11])
    for account, state in states.items():
        raised += detector.silence(account, state, silent_until)
    return [(a.account_id, a.window_start, a.state, a.reason, a.observed, a.baseline) for a in raised]


def random_pauses(rnd: random.Random, count: int, low: float, high: float) -> Iterator[float]:
    """``count`` random delays in [low, high) s: when the faults strike."""
    for _ in range(count):
        yield rnd.uniform(low, high)


def running_cluster(settings: Settings, broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Cluster]:
    """A fixture's body: a :class:`Cluster` of ``settings`` (made chaos settings) on ``broker``, shut down after."""
    running = Cluster(chaos_settings(settings, broker.bootstrap_servers), tmp_path)
    try:
        yield running
    finally:
        running.shutdown()


def generated_stream(cluster: Cluster, events: list[dict[str, Any]] | None = None) -> Stream:
    """The generated events (``ENGAGEMENT_CHAOS_EVENTS`` of them unless given) as the cluster's messages."""
    messages = as_messages(generated_events() if events is None else events, cluster.settings)
    return Stream.of(messages, cluster.settings)
