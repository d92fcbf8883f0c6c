"""One batch of Kafka messages through the pipeline: decode → route → aggregate → write → persist state.

:meth:`BatchProcessor.process` is the whole data path, in the order that keeps results exact under
at-least-once delivery:

1. decode and validate every message; bad input becomes dead letters (never an exception);
2. events of accounts owned by another partition, and responses, are re-keyed to the owner's partition;
3. the aggregator counts events, moves the event-time frontier and finalizes windows;
4. dead letters and re-keyed messages are produced and acknowledged by Kafka;
5. raw events and window rows are inserted into ClickHouse (retried until durable);
6. only then are account states written to the Faust table (changelog) — Faust commits the source
   offsets after the batch returns, flushing the changelog first.

A crash anywhere before 6 replays the batch from the previous state: the same rows are written again and
absorbed by ReplacingMergeTree. The method blocks (awaits) while ClickHouse is down, pausing consumption.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from pipeline import metrics
from pipeline.aggregator import NO_FRONTIER, Aggregator, Outcome, ResponseCandidate, WindowConfig
from pipeline.deadletter import DeadLetter
from pipeline.decode import decode_message, validate_event
from pipeline.events import DEAD_LETTER_TOPIC, REKEY_TOPIC, SOURCE_TOPICS, Event, Reason, Rejection
from pipeline.settings import Settings
from pipeline.sink import (
    EVENTS_TABLE,
    WINDOWS_TABLE,
    SourcedEvent,
    WarehouseWriter,
    event_columns,
    window_columns,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """What the processor needs of one consumed Kafka message."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


class Outbox(Protocol):
    """Produces to Kafka. ``send`` returns an awaitable that completes when the broker acknowledged.

    ``partition`` None means the default (murmur2) partitioner on ``key``."""

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> Awaitable[Any]: ...


ChangelogWriter = Callable[[list[tuple[bytes, bytes]]], Awaitable[None]]


class StagedStore:
    """A :class:`~pipeline.aggregator.StateStore` over a table that holds writes until :meth:`commit`.

    The aggregator writes states at the end of its batch; they reach the table (and its changelog) only
    when the processor commits them, after ClickHouse has the rows. With ``changelog``, :meth:`commit`
    hands all changes of the batch to it at once (it must store them locally and return once the
    changelog has them); without, it sets ``table[key]`` one by one.
    """

    def __init__(self, table: Any, changelog: ChangelogWriter | None = None) -> None:
        self.table = table
        self.changelog = changelog
        self.staged: dict[str, bytes] = {}

    def get(self, account_id: str) -> bytes | None:
        staged = self.staged.get(account_id)
        if staged is not None:
            return staged
        value = self.table.get(account_id.encode("utf-8"))
        return bytes(value) if value is not None else None

    def put(self, account_id: str, value: bytes) -> None:
        self.staged[account_id] = value

    def accounts(self) -> Iterable[str]:
        keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in list(self.table.keys())]
        return [*keys, *[k for k in self.staged if k.encode("utf-8") not in self.table]]

    async def commit(self) -> None:
        changes = [(account_id.encode("utf-8"), value) for account_id, value in self.staged.items()]
        self.staged.clear()
        if self.changelog is not None:
            await self.changelog(changes)
            return
        for key, value in changes:
            self.table[key] = value


@dataclass
class Progress:
    """Per topic-partition position and event-time watermark, for the frontier and for lag metrics.

    ``upstream[p][q]`` is the latest source frontier that source partition ``q`` announced on re-key
    partition ``p`` (``None``: q has no events at all), see :meth:`BatchProcessor.frontier`.
    """

    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    watermark: dict[tuple[str, int], int] = field(default_factory=dict)
    upstream: dict[int, dict[int, int | None]] = field(default_factory=dict)


class BatchProcessor:
    """Runs batches through the pipeline (see the module docstring). One instance per worker."""

    def __init__(
        self,
        settings: Settings,
        store: StagedStore,
        writer: WarehouseWriter,
        outbox: Outbox,
        partition_of: Callable[[str], int],
        highwater: Callable[[str, int], int | None],
        committed: Callable[[str, int], int | None] = lambda topic, partition: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.outbox = outbox
        self.partition_of = partition_of
        self.highwater = highwater
        self.committed = committed
        self.config = WindowConfig(
            window_ms=settings.window_seconds * 1000,
            lateness_ms=settings.allowed_lateness_seconds * 1000,
            conversation_horizon_ms=settings.conversation_horizon_seconds * 1000,
            weight_like=settings.weight_like,
            weight_mention=settings.weight_mention,
            weight_reply=settings.weight_reply,
        )
        self.aggregator = Aggregator(
            self.config, store, partition_of, upsert_interval_s=settings.upsert_interval_seconds
        )
        self.progress = Progress()
        self.lock = asyncio.Lock()
        self.owned: frozenset[int] = frozenset()
        self.source_kinds = {settings.topic(t): t for t in SOURCE_TOPICS}
        self.rekey_topic = settings.topic(REKEY_TOPIC)
        self.dead_letter_topic = settings.topic(DEAD_LETTER_TOPIC)
        self.newest_event_ms = 0
        # Per-batch tallies, published to Prometheus once per batch (labels() per event is costly).
        self._messages: Counter[str] = Counter()
        self._events: Counter[tuple[str, str]] = Counter()
        self._outcomes: Counter[str] = Counter()
        self._dead: Counter[str] = Counter()
        self._announced: dict[int, int | None] = {}
        self._announced_at = 0.0

    # -- ownership --------------------------------------------------------------------------------

    def on_assignment(self, partitions: set[int]) -> None:
        """Own exactly these partitions (called when the consumer's assignment changed)."""
        if frozenset(partitions) == self.owned:
            return
        self.owned = frozenset(partitions)
        self._announced.clear()
        self.aggregator.assign(set(partitions))
        self.progress = Progress(
            {k: v for k, v in self.progress.next_offset.items() if k[1] in partitions},
            {k: v for k, v in self.progress.watermark.items() if k[1] in partitions},
            {p: v for p, v in self.progress.upstream.items() if p in partitions},
        )
        log.info("owning partitions %s", sorted(partitions))

    # -- the data path ----------------------------------------------------------------------------

    async def process(self, messages: Sequence[Message]) -> None:
        """Process one batch durably (see the module docstring). Blocks while ClickHouse is down.

        A batch carrying more than ``batch_max_events`` events is processed and written in chunks of
        about that many, so memory stays bounded whatever the messages carry.
        """
        async with self.lock:
            started = time.perf_counter()
            chunk: list[Message] = []
            events = 0
            for message in messages:
                chunk.append(message)
                events += _estimated_events(message)
                if events >= self.settings.batch_max_events:
                    await self._process_chunk(chunk)
                    chunk, events = [], 0
            if chunk:
                await self._process_chunk(chunk)
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    async def _process_chunk(self, messages: Sequence[Message]) -> None:
        dead: list[DeadLetter] = []
        rekeyed: list[tuple[str, bytes]] = []
        raw: list[SourcedEvent] = []
        touched: set[int] = set()
        for message in messages:
            self._consume(message, dead, rekeyed, raw)
            touched.add(message.partition)
        for c in self.aggregator.take_forwards():
            response = {"k": "r", "e": c.event_id, "a": c.responder, "i": c.in_reply_to, "t": c.ts_ms}
            rekeyed.append((c.responder, orjson.dumps(response)))
        for partition in touched:
            self._advance(partition)
        await self._finish(dead, rekeyed, raw, touched & self.owned)
        self._publish_counts()

    def _publish_counts(self) -> None:
        for topic, n in self._messages.items():
            metrics.MESSAGES_CONSUMED.labels(topic).inc(n)
        for (topic, event_type), n in self._events.items():
            metrics.EVENTS_CONSUMED.labels(topic, event_type).inc(n)
        for outcome, n in self._outcomes.items():
            metrics.EVENT_OUTCOMES.labels(outcome).inc(n)
        for reason, n in self._dead.items():
            metrics.DEAD_LETTERS.labels(reason).inc(n)
        for tally in (self._messages, self._events, self._outcomes, self._dead):
            tally.clear()
        if self.newest_event_ms:
            metrics.NEWEST_EVENT_SECONDS.set(self.newest_event_ms / 1000)

    async def write_deferred(self) -> int:
        """Upsert open windows whose changes waited for their interval (a timer calls this, so rows
        catch up when traffic pauses). Returns the rows written."""
        async with self.lock:
            if not self.aggregator.has_deferred_upserts:
                return 0
            return await self._finish([], [], [])

    async def flush(self) -> int:
        """Finalize every open window now (end of a replay) and write them. Returns the rows written."""
        async with self.lock:
            self.aggregator.flush()
            rows = await self._finish([], [], [])
            return rows

    async def _finish(
        self,
        dead: list[DeadLetter],
        rekeyed: list[tuple[str, bytes]],
        raw: list[SourcedEvent],
        announce: Iterable[int] = (),
    ) -> int:
        rows = self.aggregator.end_batch()
        pending = [self.outbox.send(self.dead_letter_topic, d.dead_letter_id.encode(), d.to_json()) for d in dead]
        pending += [self.outbox.send(self.rekey_topic, key.encode("utf-8"), value) for key, value in rekeyed]
        if pending:
            await asyncio.gather(*pending)
        # Only once everything re-keyed from these partitions is acknowledged, announce their progress.
        await self._announce(announce)
        if raw:
            await self.writer.write(EVENTS_TABLE, event_columns(raw, int(time.time() * 1000)))
        if rows:
            await self.writer.write(WINDOWS_TABLE, window_columns(rows))
            finals = sum(1 for r in rows if r.final)
            if finals:
                metrics.WINDOWS_FINALIZED.inc(finals)
        await self.store.commit()
        if self.aggregator.unmatched_responses:
            metrics.EVENT_OUTCOMES.labels(Outcome.UNMATCHED.value).inc(self.aggregator.unmatched_responses)
            self.aggregator.unmatched_responses = 0
        return len(rows)

    def _consume(
        self,
        message: Message,
        dead: list[DeadLetter],
        rekeyed: list[tuple[str, bytes]],
        raw: list[SourcedEvent],
    ) -> None:
        key = (message.topic, message.partition)
        self.progress.next_offset[key] = message.offset + 1
        if message.topic == self.rekey_topic:
            self._consume_rekeyed(message, dead, raw)
            return
        kind = self.source_kinds.get(message.topic)
        self._messages[message.topic] += 1
        events, rejections = decode_message(message.value, kind, self.settings.max_message_bytes)
        for rejection in rejections:
            self._dead_letter(rejection, message, dead)
        for event in events:
            self._events[(message.topic, event.type)] += 1
            self._watermark(key, event.ts_ms)
            if self.partition_of(event.account_id) != message.partition:
                rekeyed.append(
                    (
                        event.account_id,
                        orjson.dumps(
                            {
                                "k": "e",
                                "v": event.to_json_dict(),
                                "t": message.topic,
                                "p": message.partition,
                                "o": message.offset,
                            }
                        ),
                    )
                )
                continue
            self._apply(event, message.topic, message.partition, message.offset, dead, raw)

    def _consume_rekeyed(self, message: Message, dead: list[DeadLetter], raw: list[SourcedEvent]) -> None:
        try:
            data = orjson.loads(message.value or b"")
            if data["k"] == "w":
                announced = self.progress.upstream.setdefault(message.partition, {})
                previous = announced.get(data["q"], NO_FRONTIER)
                value = data["t"]
                announced[data["q"]] = None if value is None else max(int(value), previous or NO_FRONTIER)
                return
            if data["k"] == "r":
                candidate = ResponseCandidate(data["e"], data["a"], data["i"], data["t"])
                outcome = self.aggregator.apply_response(candidate, message.partition)
                self._outcomes[outcome.value] += 1
                return
            event = validate_event(data["v"], None)
            self._apply(event, data["t"], data["p"], data["o"], dead, raw)
        except Exception as exc:  # the re-key topic is ours, but it must never crash the worker either
            rejection = Rejection(Reason.INVALID_JSON, f"bad re-keyed message: {exc!r}"[:300], -1, message.value or b"")
            self._dead_letter(rejection, message, dead)

    def _apply(
        self, event: Event, topic: str, partition: int, offset: int, dead: list[DeadLetter], raw: list[SourcedEvent]
    ) -> None:
        outcome = self.aggregator.apply_event(event, self.partition_of(event.account_id))
        self._outcomes[outcome.value] += 1
        if outcome is Outcome.LATE:
            window_end = self.config.window_start(event.ts_ms) + self.config.window_ms
            rejection = Rejection(
                Reason.LATE,
                f"window ending {window_end} is already final (allowed lateness "
                f"{self.settings.allowed_lateness_seconds}s)",
                -1,
                orjson.dumps(event.to_json_dict()),
            )
            letter = DeadLetter.from_rejection(
                rejection, topic, partition, offset, self.settings.dead_letter_payload_bytes
            )
            dead.append(_with_id(letter, f"{letter.dead_letter_id}/late/{event.event_id}"))
            self._dead[Reason.LATE.value] += 1
        elif outcome is not Outcome.DUPLICATE:
            raw.append((event, topic, partition, offset))
        if event.ts_ms > self.newest_event_ms:
            self.newest_event_ms = event.ts_ms

    def _dead_letter(self, rejection: Rejection, message: Message, dead: list[DeadLetter]) -> None:
        dead.append(
            DeadLetter.from_rejection(
                rejection, message.topic, message.partition, message.offset, self.settings.dead_letter_payload_bytes
            )
        )
        self._dead[rejection.reason.value] += 1

    # -- event time -------------------------------------------------------------------------------

    def _watermark(self, key: tuple[str, int], ts_ms: int) -> None:
        if ts_ms > self.progress.watermark.get(key, NO_FRONTIER):
            self.progress.watermark[key] = ts_ms

    def _advance(self, partition: int) -> None:
        frontier = self.frontier(partition)
        if frontier > NO_FRONTIER:
            self.aggregator.advance(partition, frontier)
            metrics.FRONTIER_SECONDS.set(
                min((self.aggregator.frontier(p) for p in self.owned), default=frontier) / 1000
            )

    def source_frontier(self, partition: int) -> int | None:
        """How far the source topics of ``partition`` have been read, in event time: the lowest watermark
        over its topics that still have unread messages (a caught-up topic does not hold time back), or
        the highest when all are caught up. ``None``: no event ever seen and nothing to read;
        ``NO_FRONTIER``: a topic has unread messages but no watermark yet."""
        busy: list[int] = []
        seen: list[int] = []
        for topic in self.source_kinds:
            key = (topic, partition)
            watermark = self.progress.watermark.get(key)
            if watermark is not None:
                seen.append(watermark)
            if self._caught_up(key):
                continue
            if watermark is None:
                return NO_FRONTIER
            busy.append(watermark)
        if busy:
            return min(busy)
        return max(seen) if seen else None

    def frontier(self, partition: int) -> int:
        """The event-time frontier of ``partition``: events before ``frontier - lateness`` are late.

        It is the lower of (a) this partition's own :meth:`source_frontier` and (b) the frontiers every
        source partition announced on this partition of the re-key topic: responses and re-keyed events
        come from all partitions, so time may only pass once every one of them has passed it.
        """
        constraints: list[int] = []
        own = self.source_frontier(partition)
        if own is not None:
            constraints.append(own)
        announced = self.progress.upstream.get(partition, {})
        if len(announced) < self.settings.partitions:
            return NO_FRONTIER
        constraints.extend(v for v in announced.values() if v is not None)
        return min(constraints) if constraints else NO_FRONTIER

    async def announce_watermarks(self, owned: set[int] | None = None, every: float = 10.0) -> None:
        """Announce owned partitions' source frontiers on all re-key partitions where they changed, and all
        of them every ``every`` seconds (a timer calls this: idle partitions still let time pass downstream,
        and a new owner of a re-key partition learns every upstream frontier). ``owned``: the consumer's
        current assignment, taken over first."""
        async with self.lock:
            if owned is not None:
                self.on_assignment(owned)
            now = time.monotonic()
            if now - self._announced_at >= every:
                self._announced.clear()
            await self._announce(self.owned)

    async def _announce(self, partitions: Iterable[int]) -> None:
        pending = []
        for q in partitions:
            frontier = self.source_frontier(q)
            if q in self._announced and self._announced[q] == frontier:
                continue
            if not self._announced:
                self._announced_at = time.monotonic()
            self._announced[q] = frontier
            marker = orjson.dumps({"k": "w", "q": q, "t": frontier})
            for p in range(self.settings.partitions):
                pending.append(self.outbox.send(self.rekey_topic, b"", marker, p))
        if pending:
            await asyncio.gather(*pending)

    def _caught_up(self, key: tuple[str, int]) -> bool:
        highwater = self.highwater(*key)
        if highwater is None:
            return False
        return self._next_offset(key) >= highwater

    def _next_offset(self, key: tuple[str, int]) -> int:
        known = self.progress.next_offset.get(key)
        if known is not None:
            return known
        return self.committed(*key) or 0

    def lag(self) -> Mapping[str, int]:
        """Unprocessed messages per topic over the owned partitions (for the lag gauge)."""
        out: dict[str, int] = {}
        for topic in [*self.source_kinds, self.rekey_topic]:
            total = 0
            for partition in self.owned:
                highwater = self.highwater(topic, partition)
                if highwater is not None:
                    total += max(0, highwater - self._next_offset((topic, partition)))
            out[topic] = total
        return out


def _estimated_events(message: Message) -> int:
    """About how many events a message carries (a JSON array of ~200-byte events, or one)."""
    value = message.value
    if not value or value[:1] != b"[":
        return 1
    return max(1, len(value) // 200)


def _with_id(letter: DeadLetter, dead_letter_id: str) -> DeadLetter:
    from dataclasses import replace

    return replace(letter, dead_letter_id=dead_letter_id)
