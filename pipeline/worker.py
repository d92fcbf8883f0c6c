"""The Faust worker: agents, table, web endpoints. ``engagement worker`` runs :func:`run_worker`.

Agents and tasks:
- ``aggregate`` (an app task) takes the four source topics and the re-key topic in batches straight from
  the consumer (:mod:`pipeline.intake`, below Faust's per-message stream path) and hands each batch to
  :class:`~pipeline.processor.BatchProcessor`. A batch is acknowledged (its offsets become committable)
  only once its rows are durable and the account states it changed are in the table's changelog; states
  are persisted every ``ENGAGEMENT_PERSIST_INTERVAL_SECONDS`` under load, all of them once the input
  pauses (:mod:`pipeline.acks`). When the dead-letter brake trips (:mod:`pipeline.brake`), the worker
  logs why, answers 503 on ``/healthz`` while it lingers, and exits with code 65 without acknowledging
  the batch; any other failure of a batch is a bug: it exits with code 70, also unacked.
- ``dead_letters`` copies the dead-letter topic into ``engagement_dead_letters``.

Web (bound to ``ENGAGEMENT_WEB_HOST``, localhost by default): ``/metrics``, ``/healthz``, and for the
embedded store ``/query`` (read-only SQL, since only this process may open chDB's directory) and
``/admin/flush`` (finalize all open windows: the end of a replay). These two answer only on a loopback
``ENGAGEMENT_WEB_HOST`` and to this machine (:func:`local_endpoint_refusal`). The pages are served from
a thread of their own (:mod:`pipeline.web`), so that they answer while this loop works through a batch.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, NoReturn, cast

import faust
import orjson
from aiohttp import web
from prometheus_client import generate_latest

from pipeline import brake, compiled, metrics
from pipeline.acks import Acknowledgements
from pipeline.deadletter import DeadLetter
from pipeline.events import DEAD_LETTER_TOPIC, REASON_CODES, REKEY_TOPIC, SOURCE_TOPICS, Reason, Rejection
from pipeline.intake import IntakeApp, IntakeBuffer, IntakeConsumer
from pipeline.kafka_admin import ensure_topics
from pipeline.kafka_security import faust_credentials
from pipeline.partitioning import account_partitioner
from pipeline.processor import BatchFailed, BatchProcessor, StagedStore
from pipeline.query_client import LOCK_FILE
from pipeline.readonly_sql import ReadOnlyViolation, check_read_only
from pipeline.settings import Settings
from pipeline.sink import DEAD_LETTERS_TABLE, WarehouseWriter, dead_letter_columns
from pipeline.state_records import Record
from pipeline.warehouse import QueryError, Warehouse, WarehouseError, open_warehouse
from pipeline.warehouse.merge_priority import MergePriority
from pipeline.warehouse.migrate import migrate
from pipeline.web import Route, WebThread, json_response, on_loop

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4"


class KafkaOutbox:
    """Sends through the Faust app's producer; each send completes when the broker acknowledged."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> Any:
        pending = await self.app.producer.send(topic, key, value, partition, None, None)
        return await pending


async def produce_in_batches(producer: Any, topic: str, records: list[Record]) -> list[asyncio.Future[Any]]:
    """Queue ``(key, value, partition)`` records (a value None: a tombstone) on an aiokafka ``producer`` as
    whole record batches (one per partition and size limit: no per-record send path). Returns one future
    per batch, done when the broker acknowledged it. Blocks (awaits) until every batch is queued, which
    takes about as many produce round trips as the partition with the most batches has batches.

    aiokafka queues one batch per partition at a time (the next waits until the one before is taken
    into a produce request), and one request per broker is in flight: so the batches go out
    partition after partition in turn (the first of each, then the second of each...), so that a
    request carries one batch of every partition instead of one batch in all.

    A partition's last record goes in a batch of its own: the embedded broker (tansu 0.6) reports a
    partition's end offset as its last batch's base offset + 1, and Faust's recovery reads a changelog
    only up to that end, so the other records of a last batch would never be recovered."""
    by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
    for key, value, partition in records:
        by_partition.setdefault(partition, []).append((key, value))
    queues: list[tuple[int, list[Any]]] = []
    for partition, items in by_partition.items():
        batches = [batch for part in (items[:-1], items[-1:]) if part for batch in _fill_batches(producer, part)]
        queues.append((partition, batches))
    futures: list[asyncio.Future[Any]] = []
    for turn in range(max((len(batches) for _, batches in queues), default=0)):
        for partition, batches in queues:
            if turn < len(batches):
                futures.append(await producer.send_batch(batches[turn], topic, partition=partition))
    return futures


def _fill_batches(producer: Any, items: list[tuple[bytes, bytes | None]]) -> list[Any]:
    """``items`` in closed record batches of the producer, in order, each as full as its size allows."""
    batches: list[Any] = []
    batch = producer.create_batch()
    for key, value in items:
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: close it, start another
            batch.close()
            batches.append(batch)
            batch = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes does not fit in a producer batch")
    batch.close()
    batches.append(batch)
    return batches


async def produce_in_phases(producer: Any, topic: str, phases: list[list[Record]]) -> list[asyncio.Future[Any]]:
    """:func:`produce_in_batches` for each phase in turn, a phase only once every batch of the one before
    was acknowledged (raises what a send of an earlier phase raised, and queues nothing more). Returns
    the futures of the last phase's batches. aiokafka's producer is not idempotent: a lost batch does not
    stop the later batches of its partition, so what must never be stored without what comes before it
    (a main record without its chunks) waits for that to be acknowledged."""
    futures: list[asyncio.Future[Any]] = []
    for phase in phases:
        if futures:
            await asyncio.gather(*futures)
        futures = await produce_in_batches(producer, topic, phase)
    return futures


def queue_holding(
    producer: Any, topic: str, phases: list[list[Record]], lock: asyncio.Lock
) -> asyncio.Task[list[asyncio.Future[Any]]]:
    """Start :func:`produce_in_phases` as a task that holds ``lock`` (acquired by the caller) until it
    ends, however it ends (cancelled before it started included)."""
    queued = asyncio.ensure_future(produce_in_phases(producer, topic, phases))
    queued.add_done_callback(lambda _: lock.release())
    return queued


async def acknowledged(queued: asyncio.Future[list[asyncio.Future[Any]]]) -> None:
    """Completes once every batch of a queued write was acknowledged; raises what queueing or sending
    raised. Cancelling it leaves the queueing running (a write is never queued in part)."""
    await asyncio.gather(*await asyncio.shield(queued))


def exit_without_committing(what: str, exc: BaseException | None = None) -> NoReturn:
    """Log ``what`` failed and end the process at once with code 70, nothing more acknowledged or
    committed: whatever was not committed is replayed by the next owner."""
    log.critical("%s failed; exiting without committing", what, exc_info=exc or True)
    os._exit(70)


# The producer's record batch size (Faust's default is 16 KiB). Account states are written to the
# changelog in bulk, and aiokafka sends one batch per partition per produce round trip: with 16 KiB
# batches, the 20 MB of states a loaded worker persists every few seconds took ~1,200 round trips, about
# a second during which no batch was processed. Below Kafka's default limit on a record batch
# (message.max.bytes, 1 MiB + 12 bytes), with room for the batch's own framing.
PRODUCER_BATCH_BYTES = 900 * 1024


ACCOUNT_STATE_TABLE = "account-state"  # the Faust table of account states

GC_MIDDLE_EVERY = 4  # young-generation collections per middle-generation collection (run_worker)

GIL_SWITCH_INTERVAL_SECONDS = 0.001  # how soon the main thread hands the interpreter's lock over (run_worker)

FLUSH_SETTLE_SECONDS = 60.0  # how long /admin/flush waits for a rebalance to end

SETTLE_CHECK_SECONDS = 0.25  # how often the timer checks for a pause (settle_due)
ANNOUNCE_SECONDS = 1.0  # how often the timer announces watermarks and writes deferred upserts
# /healthz answers 503 once the worker's loop has not run for this long (a chunk of 50,000 events takes a
# few seconds on two cores, a full collection ~1 s; the Kubernetes liveness probe restarts a worker after
# four failures, 15 s apart).
LOOP_STALL_SECONDS = 60.0


def cut_short_by_stop(app: Any, what: str) -> bool:
    """Call on an exception in a task of ``app``: whether a clean stop caused it (the producer closes
    while a task still sends to it), which is then logged and nothing more. ``what`` names the work lost,
    which nothing acknowledged: its input is replayed by the next owner. False: a real failure."""
    if not app.should_stop:
        return False
    log.info("stopping: %s were cut short", what)
    return True


def internal_topics(settings: Settings) -> dict[str, int]:
    """The topics Faust creates itself for the worker, name -> partitions: the account-state table's changelog
    (compacted, ``settings.partitions`` partitions, named after ``app_id``, not ``topic_prefix``) and the
    leader assignor's topic (1 partition). Deployments that create every topic ahead (Strimzi ``KafkaTopic``)
    declare these next to :func:`pipeline.kafka_admin.pipeline_topics`."""
    return {
        f"{settings.app_id}-{ACCOUNT_STATE_TABLE}-changelog": settings.partitions,
        f"{settings.app_id}-__assignor-__leader": 1,
    }


def create_app(settings: Settings, warehouse: Warehouse) -> tuple[IntakeApp, BatchProcessor]:
    """Build the Faust app for ``settings`` writing to ``warehouse`` (already migrated); its web pages are
    ``app.pages`` (served by :func:`run_worker`)."""
    app = IntakeApp(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        broker_credentials=faust_credentials(settings),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=0,
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.broker_session_timeout / 3),
        broker_commit_interval=settings.commit_interval,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        web_enabled=False,  # the pages are served on a thread of their own (pipeline.web, run_worker)
        web_host=settings.web_host,  # Faust's canonical URL of this worker, in the group's assignment
        web_port=settings.web_port,
        datadir=str(settings.data_dir / "faust"),
        stream_wait_empty=False,  # on shutdown, unprocessed batches are simply not committed
        # Faust's check that a recovery never read past a changelog's end protects stores kept on disk
        # (RocksDB) from a topic emptied under them. Ours is in memory and dies with the process, so the
        # check protects nothing, and the embedded broker trips it: a worker killed between the record
        # batches of one changelog write leaves a last batch of several records, whose first offset + 1
        # tansu reports as the end; a worker that recovered the partition (reading the whole batch) then
        # crashed at its next rebalance. That write's batches were never committed: whether a recovery
        # reads its records or not, their sources are replayed (tests/chaos: cut_short).
        recovery_consistency_check=False,
    )
    sources = [settings.topic(t) for t in SOURCE_TOPICS]
    rekey = settings.topic(REKEY_TOPIC)

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(
            *names,
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    source_topic = raw_topic(*sources, rekey)
    dead_letter_topic = raw_topic(settings.topic(DEAD_LETTER_TOPIC))
    table = app.Table(
        ACCOUNT_STATE_TABLE,
        partitions=settings.partitions,
        use_partitioner=True,
        key_type=bytes,  # bytes types make Faust use the "raw" codec for the changelog and its recovery
        value_type=bytes,
    )

    # /query reads on a thread of its own: chDB's session takes concurrent calls; a server gets a
    # read-only connection of its own (clickhouse-driver's client does not).
    def reader() -> Warehouse:
        return warehouse if warehouse.kind == "embedded" else open_warehouse(settings, read_only=True)

    writer = WarehouseWriter(lambda: warehouse, settings.insert_retry_max_seconds, open_reader=reader)
    partition_of = account_partitioner(settings.partitions)
    our_topics = {*sources, rekey}
    for topic in our_topics:  # at 0 from the start, so that an alert on its increase sees the first one
        metrics.RECORDS_EXPIRED.labels(topic)

    def highwater(topic: str, partition: int) -> int | None:
        """The partition's log end, short of a transaction marker after its last record."""
        tp = faust.types.TP(topic, partition)
        try:
            value = app.consumer.highwater(tp)
        except Exception:
            return None
        return cast(IntakeConsumer, app.consumer).records_end(tp, int(value)) if value is not None else None

    def fetched_at(topic: str, partition: int) -> int | None:
        """Wall-clock ms of the consumer's last fetch of the partition (when its highwater was read)."""
        try:
            aiokafka_consumer = app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
            value = aiokafka_consumer.last_poll_timestamp(faust.types.TP(topic, partition))
        except Exception:
            return None
        return int(value) if value is not None else None

    def committed(topic: str, partition: int) -> int | None:
        value = app.consumer._committed_offset.get(faust.types.TP(topic, partition))  # type: ignore[attr-defined]
        return int(value) if value is not None else None

    async def write_changelog(phases: list[list[Record]]) -> Awaitable[object]:
        """Store account states locally and start producing them to the table's changelog, in bulk, phase
        after phase (:func:`produce_in_phases`); returns what completes once the broker acknowledged them
        all (and raises if a record could not be queued or sent; one that could not be queued, or a send
        of a phase before the last that failed, also ends the worker at once, exit code 70).
        Returns before the records are queued: the producer takes a record batch of a partition only once
        the one before it left in a produce request, and waiting for that took a loaded worker ~0.3 s
        every persist, during which no batch was processed.

        ``table[key] = value`` would send each change through Faust's per-message producer buffer, which
        caps a worker at a few thousand account updates per second; this produces the same changelog
        records (raw key and value, the key's murmur2 partition) as record batches of the producer, and
        records them in the in-memory store the way Faust's recovery does. Faust flushes the producer
        before it commits offsets.

        No write may be in flight while a rebalance recovers the table: Faust's recovery re-reads the
        changelog of partitions kept up to its end at that moment, and a record of ours landing after
        that would leave an older state of ours in the table. So a write waits while a rebalance runs,
        and holds the changelog lock until every record of it is queued (when a rebalance begins, the
        consumer takes that lock, so it waits for a write in progress to be queued, then Faust flushes
        the producer); it then drops the states of partitions this worker no longer owns: their
        batches are not committed here, the new owner replays them. Writes are queued in the order they
        were made: the next takes the lock only once the one before is queued, and the producer keeps a
        partition's batches in order.
        """
        topic = cast(Any, table).changelog_topic_name
        lock = app.changelog_lock
        while True:
            while app.rebalancing:
                await asyncio.sleep(0.05)
            await lock.acquire()
            if not app.rebalancing:
                break
            lock.release()
        try:
            owned = owned_partitions()
            kept = [[record for record in phase if record[2] in owned] for phase in phases]
            kept = [phase for phase in kept if phase]
            producer = cast(Any, app.producer)._ensure_producer()
            store: Any = table.data
            data, key_partition = store.data, store._key_partition
            for key, value, partition in (record for phase in kept for record in phase):
                if value is None:  # a deletion (tombstone), as Faust's recovery applies it
                    data.pop(key, None)
                    key_partition.pop(key, None)
                else:
                    data[key] = value
                    key_partition[key] = partition
        except BaseException:
            lock.release()
            raise
        queued = queue_holding(producer, topic, kept, lock)
        queued.add_done_callback(exit_if_not_queued)
        return asyncio.ensure_future(acknowledged(queued))

    def exit_if_not_queued(queued: asyncio.Future[Any]) -> None:
        """A write that could not be queued ends the worker at once (as when the write was awaited), not
        once the acknowledgements before it are through: later writes would queue after a part of it."""
        if queued.cancelled() or queued.exception() is None or app.should_stop:
            return
        exit_without_committing("queueing account states on the changelog", queued.exception())

    def settled() -> bool:
        """Whether the table is whole: no rebalance (Faust's recovery writing into it) in progress."""
        return not app.rebalancing and bool(app.tables.recovery.completed.is_set())  # type: ignore[attr-defined]

    processor = BatchProcessor(
        settings,
        StagedStore(table, write_changelog, partition_of, contents=cast(Any, table).data.data, settled=settled),
        writer,
        KafkaOutbox(app),
        partition_of,
        highwater,
        committed,
        fetched_at,
    )

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic in our_topics}

    # The source topics bypass Faust's per-message stream path (see pipeline.intake); registering the
    # topic with the conductor makes the consumer subscribe to it and enables acks for its offsets.
    app.intake = IntakeBuffer(
        our_topics, settings.batch_max_messages, settings.batch_max_seconds, max_bytes=settings.batch_max_bytes
    )
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.topics.add(source_topic)

    processing = False  # a batch is being processed (aggregate)

    def ack_batches(batches: list[list[Any]]) -> None:
        """Acknowledge ``batches`` with the consumer: their offsets may now be committed; but not those of
        a consumer generation that ended: a rebalance forgot every partition's acks and offsets, and a
        late ack would put back offsets of a partition that moved (its states were dropped here), ahead
        of what its next owner stored, or behind what it committed (then Faust never commits that
        partition again). Those messages are fetched again from the committed offsets, and skipped where
        the stored states hold them."""
        generation = app.consumer_generation_id
        consumer = cast(IntakeConsumer, app.consumer)
        for batch in batches:
            consumer.ack_batch(m for m in batch if m.generation_id == generation)

    def lost(exc: BaseException) -> NoReturn:
        exit_without_committing("writing account states to the changelog", exc)

    # Batches processed but not yet acknowledged (acked, Faust may commit their offsets); see pipeline.acks.
    acks = Acknowledgements(processor, ack_batches, lambda: bool(app.should_stop), lost)

    def persist_due() -> bool:
        """Whether every batch processed so far should be persisted (and acked) now (settle_due)."""
        idle = not processing and (app.intake is None or len(app.intake) == 0)
        return acks.settle_due(idle, settings.persist_interval_seconds)

    # Set when the dead-letter brake trips: the worker then only serves its web pages until it exits.
    halted = asyncio.Event()

    async def linger_then_exit(code: int) -> None:
        """Serve /metrics (nothing else runs) for ENGAGEMENT_DEAD_LETTER_BRAKE_LINGER_SECONDS, so that
        Prometheus scrapes why the worker stops, then exit with ``code``; at once if the app is stopped
        meanwhile. Never returns."""
        linger = settings.dead_letter_brake_linger_seconds
        log.critical("serving /metrics for %.0f s, then exiting with code %d", linger, code)
        try:
            await asyncio.sleep(linger)
        finally:
            os._exit(code)

    @app.task  # type: ignore[untyped-decorator]
    async def aggregate() -> None:
        nonlocal processing
        assert app.intake is not None
        while True:
            batch = await app.take_batch()
            try:
                processing = True
                try:
                    await processor.take_assignment(owned_partitions(), app.consumer_generation_id)
                    await processor.process(batch, persist=False)  # Faust's messages, as they are
                finally:
                    processing = False
                acks.processed(batch, processor.aggregator.touch_position)
                if persist_due():
                    await acks.settle()
                else:
                    acks.ack_covered()
            except brake.DeadLetterBrakeTripped as exc:  # bad input upstream: stop before it is all dead-lettered
                halted.set()  # from now on nothing is processed, persisted or acknowledged
                log.critical("%s", exc)
                await linger_then_exit(brake.EXIT_CODE)
            except Exception:
                if cut_short_by_stop(app, f"{len(acks.unacked) + 1} processed batches, not acknowledged,"):
                    return  # they are replayed
                # a bug, not bad input: stop before the batch is acknowledged
                log.critical("batch processing failed; exiting without committing", exc_info=True)
                os._exit(70)

    @app.agent(dead_letter_topic, name="dead-letters")
    async def dead_letters(stream: Any) -> None:
        async for batch in stream.take_events(1000, within=0.5):
            letters = []
            for event in batch:
                message = event.message
                try:
                    letter = DeadLetter.from_json(message.value)
                    if letter.rejected_before_kafka:  # counted here; a worker's own were counted by it
                        known = letter.reason in REASON_CODES  # the label's values stay the reasons we have
                        metrics.DEAD_LETTERS.labels(letter.reason if known else "other").inc()
                    letters.append(letter)
                except Exception as exc:
                    rejection = Rejection(
                        Reason.INVALID_JSON, f"unreadable dead letter: {exc!r}"[:300], -1, bytes(message.value or b"")
                    )
                    metrics.DEAD_LETTERS.labels(rejection.reason.value).inc()
                    letters.append(
                        DeadLetter.from_rejection(
                            rejection,
                            message.topic,
                            message.partition,
                            message.offset,
                            settings.dead_letter_payload_bytes,
                        )
                    )
            await writer.write(DEAD_LETTERS_TABLE, dead_letter_columns(letters))

    announced_at = 0.0  # monotonic

    @app.timer(interval=SETTLE_CHECK_SECONDS)  # type: ignore[untyped-decorator]
    async def announce_watermarks() -> None:
        """Every ANNOUNCE_SECONDS: announce the partitions' watermarks and write the deferred upserts
        (neither waits for the last batch's delivery in flight, so the next batch starts beside it).
        Every tick: settle once the input paused (settle_due), so that what was processed is acknowledged
        soon after a pause."""
        nonlocal announced_at
        if app.should_stop or app.rebalancing or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return
        if halted.is_set():  # a tripped brake: the states of the batch it stopped must never be persisted
            return
        try:
            now = time.monotonic()
            if now - announced_at >= ANNOUNCE_SECONDS:
                announced_at = now
                await processor.announce_watermarks(owned_partitions(), generation=app.consumer_generation_id)
                await processor.write_deferred()
            if acks.unacked and persist_due():
                await acks.settle()
            if not processing:
                processor.collector.sweep_if_due()  # also soon after the input pauses (pipeline.collector)
        except BatchFailed:  # nothing is acknowledged any more
            if halted.is_set() or app.should_stop:  # the brake, or a stop: the worker is exiting
                return
            # A batch's failure exits the worker itself; a flush's or a timer's would leave it idle.
            exit_without_committing("the processor (see the error above)")
        except Exception:
            if not cut_short_by_stop(app, "the timer's announcements and persist, not acknowledged,"):
                raise

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def update_lag() -> None:
        for topic, lag in processor.lag().items():
            metrics.CONSUMER_LAG.labels(topic).set(lag)

    # The pages run on a thread of their own (pipeline.web), which may not touch the consumer: this loop
    # publishes the partitions owned, whole, and when it last ran (see health).
    owned_now: frozenset[int] = frozenset()
    ticked_at: float | None = None  # monotonic

    @app.timer(interval=SETTLE_CHECK_SECONDS)  # type: ignore[untyped-decorator]
    async def publish_for_pages() -> None:
        nonlocal owned_now, ticked_at
        owned_now = frozenset(owned_partitions())
        ticked_at = time.monotonic()

    async def metrics_page(request: web.Request) -> web.Response:
        # aiohttp takes the charset apart from the content type; Prometheus' text format is UTF-8.
        return web.Response(body=generate_latest(metrics.REGISTRY), content_type=PROMETHEUS_TEXT)

    async def healthz(request: web.Request) -> web.Response:
        status, body = health(halted.is_set(), ticked_at, time.monotonic(), owned_now)
        return json_response(body, status=status)

    async def query_page(request: web.Request) -> web.Response:
        """Read-only SQL on the warehouse writer's reader (its own executor: safe from the web thread)."""
        refused = local_endpoint_refusal(settings, request.remote)
        if refused:
            return json_response({"error": refused}, status=403)
        try:
            sql, params = query_request(await request.read())
        except BadQueryRequest as exc:
            return json_response({"error": str(exc)}, status=400)
        except ReadOnlyViolation as exc:
            return json_response({"error": str(exc)}, status=403)
        try:
            check_read_only(sql, params)  # the statement as ClickHouse receives it, parameters bound
            result = await writer.query(sql, params)
        except ReadOnlyViolation as exc:
            return json_response({"error": str(exc)}, status=403)
        except QueryError as exc:
            return json_response({"error": str(exc)}, status=400)
        except WarehouseError as exc:
            return json_response({"error": str(exc)}, status=503)
        return json_response({"columns": result.columns, "rows": [list(r) for r in result.rows]})

    async def flush_on_worker_loop() -> tuple[int, dict[str, Any]]:
        """/admin/flush's work, on the worker's loop: the status and the body to answer."""
        if halted.is_set():
            return 503, {"error": "the dead-letter brake tripped: this worker writes nothing more"}
        for _ in range(int(FLUSH_SETTLE_SECONDS / 0.1)):  # the table must be whole: no recovery running
            if settled():
                break
            await asyncio.sleep(0.1)
        else:
            return 503, {"error": "the worker is rebalancing: try again"}
        try:
            rows = await processor.flush(owned_partitions(), app.consumer_generation_id)
        except BatchFailed as exc:  # the brake tripped while this waited
            return 503, {"error": str(exc)}
        except Exception as exc:  # its states may be lost: the processor refuses all work now
            if app.should_stop:
                raise
            exit_without_committing("/admin/flush", exc)
        return 200, {"rows": rows}

    def pages(worker_loop: asyncio.AbstractEventLoop) -> list[Route]:
        async def flush_page(request: web.Request) -> web.Response:
            refused = local_endpoint_refusal(settings, request.remote)
            if refused:
                return json_response({"error": refused}, status=403)
            status, body = await on_loop(worker_loop, flush_on_worker_loop())
            return json_response(body, status=status)

        return [
            Route("GET", "/metrics", metrics_page),
            Route("GET", "/healthz", healthz),
            Route("POST", "/query", query_page),
            Route("POST", "/admin/flush", flush_page),
        ]

    app.pages = pages
    return app, processor


def health(halted: bool, ticked_at: float | None, now: float, partitions: frozenset[int]) -> tuple[int, dict[str, Any]]:
    """What ``/healthz`` answers (status, body): 200 while the worker runs; 503 once the dead-letter brake
    tripped (it only lingers for the scrape of /metrics, then exits), so that a readiness probe takes it
    out at once; 503 too once the worker's loop last ran (``ticked_at``, monotonic; None before its
    first tick, which start-up may delay) more than ``LOOP_STALL_SECONDS`` ago: the pages answer from a
    thread of their own, so they must tell a liveness probe that the loop is stuck."""
    if halted:
        return 503, {"status": "halted", "reason": "the dead-letter brake tripped (see the log): exiting"}
    if ticked_at is not None and now - ticked_at > LOOP_STALL_SECONDS:
        stalled = f"the worker's event loop has not run for {now - ticked_at:.0f} s"
        return 503, {"status": "stalled", "reason": stalled}
    return 200, {"status": "ok", "partitions": sorted(partitions)}


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name or an address) is this machine only: ``localhost``, 127.0.0.0/8, ``::1``."""
    if not host:
        return False
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def local_endpoint_refusal(settings: Settings, peer: str | None) -> str | None:
    """Why ``/query`` or ``/admin/flush`` must not answer ``peer``, or None when it may.

    Both run on the worker's own ClickHouse connection (the ingest user), so they answer only when the web
    server is bound to a loopback ENGAGEMENT_WEB_HOST and the request comes from this machine, unless
    ENGAGEMENT_WEB_ALLOW_REMOTE_QUERY=1. ``/metrics`` and ``/healthz`` are not restricted.
    """
    if settings.web_allow_remote_query:
        return None
    if not is_loopback(settings.web_host):
        return (
            f"this endpoint is off: ENGAGEMENT_WEB_HOST={settings.web_host} is not a loopback address "
            "(set ENGAGEMENT_WEB_ALLOW_REMOTE_QUERY=1 to serve it anyway; see SECURITY.md)"
        )
    if not is_loopback(peer):
        return "this endpoint answers requests from this machine only"
    return None


def _write_lock(settings: Settings) -> Path:
    path = settings.data_dir / LOCK_FILE
    path.write_bytes(orjson.dumps({"pid": os.getpid(), "web_host": settings.web_host, "web_port": settings.web_port}))
    return path


class BadQueryRequest(ValueError):
    """A ``/query`` body that is not ``{"sql": "...", "params": {...}}`` (HTTP 400)."""


_SCALARS = (str, int, float, bool, type(None))


def query_request(raw: bytes) -> tuple[str, dict[str, Any] | None]:
    """The SQL and the parameters of a ``/query`` body ``{"sql": "...", "params": {"name": value}}``, each
    value a JSON scalar or an array of scalars. Raises :class:`BadQueryRequest` for any other body, and
    :class:`~pipeline.readonly_sql.ReadOnlyViolation` when ``params`` is not an object (HTTP 403, as every
    refusal of the read-only guard)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadQueryRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadQueryRequest('the body must be a JSON object: {"sql": "...", "params": {...}}')
    sql = body.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise BadQueryRequest("sql must be a non-empty string")
    params = body.get("params")
    if params is None or params == {}:
        return sql, None
    if not isinstance(params, dict):
        raise ReadOnlyViolation("params must be a JSON object")
    for name, value in params.items():
        if not (
            isinstance(value, _SCALARS) or (isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value))
        ):
            raise BadQueryRequest(f"parameter {name!r} must be a JSON scalar or an array of scalars")
    return sql, params


def run_worker(settings: Settings, loglevel: str = "info") -> int:
    """Create topics and tables if missing, then run the worker until SIGTERM/SIGINT, then exit the
    process with the worker's exit code (it does not return after a run)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    warehouse = open_warehouse(settings)  # first: a missing embedded extra fails before Kafka is touched
    ensure_topics(settings)
    migrate(warehouse, settings)
    app, processor = create_app(settings, warehouse)
    metrics.HOT_PATH_COMPILED.set(1 if compiled.STATUS.active else 0)
    if not compiled.STATUS.active:
        log.warning("the hot path runs from source, not compiled: %s", compiled.STATUS.reason)
    # The hot path allocates many short-lived objects next to a large, long-lived state: collect the
    # young generation less often, and move everything alive at start-up out of the collector's sight
    # (as the processor does after every chunk, pipeline.collector). Between chunks, the middle
    # generation is collected every GC_MIDDLE_EVERY young collections: at 20, each of its collections
    # went through ~1M surviving objects and stopped the worker for ~0.3 s (the live p99 at 25,000
    # events/s: 3.8-5.0 s); at 4, 0.05-0.08 s (p99 2.7-2.9 s), for ~4 % of the drain rate (both measured
    # before the chunks froze their survivors).
    gc.set_threshold(50_000, GC_MIDDLE_EVERY, 100)
    gc.freeze()
    # The main thread holds the interpreter's lock nearly all the time; the warehouse thread needs it in
    # short spells (building each block, chDB reading it), each of which waited for the main thread's
    # switch interval: 5 ms by default. Each such wait held back the insert the main thread would next
    # await: at 1 ms the batch drain was ~8 % faster (six interleaved pairs, each faster; bench/RESULTS.md).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    lock = _write_lock(settings) if settings.warehouse == "embedded" else None
    merges = (
        MergePriority(settings.embedded_merge_nice)
        if settings.warehouse == "embedded" and settings.embedded_merge_nice
        else None
    )
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    assert app.pages is not None
    pages = WebThread(settings.web_host, settings.web_port, app.pages(worker.loop))
    code = 0
    try:
        try:
            pages.start()
        except OSError as exc:  # the port is taken, or the host is not this machine's
            log.critical("cannot serve the worker's pages on %s:%d: %s", settings.web_host, settings.web_port, exc)
            code = 1
        else:
            if merges is not None:
                merges.start()
            worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        pages.stop()
        if merges is not None:
            merges.stop()
        processor.abandon()  # the last batch's delivery, if still in flight: not acknowledged, replayed
        processor.writer.close()  # the warehouse (chDB) is closed on its own thread, before exit
        if lock is not None:
            lock.unlink(missing_ok=True)
    # chDB's native threads can crash the interpreter's own teardown after a clean stop: everything is
    # closed and committed by now, so leave without it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_worker(Settings.from_env()))
