"""The batches a worker processed but has not acknowledged yet, and the chain that acknowledges them.

A batch may be acknowledged (Faust then commits its offsets) only once every account state it changed is
in the table's changelog: before, a crash would lose changes that its replay skips. Under load the
processor persists the states in slices at the end of its batches, and a batch is acknowledged once the
slices cover it (:func:`take_covered`); once the input pauses, every state is persisted and every batch
acknowledged (:func:`settle_due` says when). Acknowledgements happen in the background, strictly in the
order they were started: a later one waits for the ones before, and once a write failed nothing after it
is acknowledged (its batches' states may have been in that write). ``docs/DESIGN.md`` has the argument.

:class:`Acknowledgements` holds that state for the worker (``pipeline/worker.py``), which supplies how to
acknowledge a batch with its consumer and what to do when a write of states was lost (end the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, NoReturn, Protocol

log = logging.getLogger(__name__)

IDLE_PERSIST_SECONDS = 0.5  # once the input paused this long, states are persisted and batches acknowledged


class UnackedBatch(NamedTuple):
    """A batch processed and not yet acknowledged: its messages, the aggregator's
    :attr:`~pipeline.aggregator.Aggregator.touch_position` after it, and when it ended (monotonic)."""

    messages: list[Any]
    position: int
    ended: float


def take_covered(unacked: list[UnackedBatch], stored_position: int) -> list[UnackedBatch]:
    """Remove and return the oldest batches of ``unacked`` whose every state change is stored once the
    stored position reached ``stored_position`` (in order: a batch waits for those before it). The
    newest batch is never taken: its last chunk's delivery (its sends, its rows) may still be in flight,
    and a batch that changed no state is covered by a position reached before it."""
    covered = 0
    while covered < len(unacked) - 1 and unacked[covered].position <= stored_position:
        covered += 1
    taken = unacked[:covered]
    del unacked[:covered]
    return taken


def settle_due(unacked: Sequence[UnackedBatch], idle: bool, now: float, last_settled: float, interval: float) -> bool:
    """Whether every batch processed so far should be persisted in full (and acknowledged) at ``now``
    (monotonic), rather than left to the processor's slices: when the slices fell behind by another
    ``interval`` (ENGAGEMENT_PERSIST_INTERVAL_SECONDS), or when the input paused: ``idle`` (no batch is
    being processed and the intake is empty) and no batch ended for :data:`IDLE_PERSIST_SECONDS` (or
    the interval, if shorter), nor was anything settled in that time.

    A pause, not an intake empty at this instant: under a steady load the intake is empty for a moment
    after most batches (the next fetch has not arrived yet), and a full persist there (0.2-0.4 s for
    20,000 accounts) stalled the worker every two seconds, beside the slices that persist the same
    states anyway."""
    if not unacked:
        return False
    if now - unacked[0].ended >= 2 * interval:
        return True
    quiet = min(interval, IDLE_PERSIST_SECONDS)
    return idle and now - unacked[-1].ended >= quiet and now - last_settled >= quiet


class StatePersister(Protocol):
    """What :class:`Acknowledgements` needs of :class:`~pipeline.processor.BatchProcessor`."""

    async def persist(self) -> Awaitable[object]: ...

    def slices_committed(self) -> tuple[Awaitable[object] | None, int]: ...


class Acknowledgements:
    """The batches processed and not acknowledged yet (:attr:`unacked`, oldest first), and the chain of
    acknowledgements in flight. Call from the event loop's thread only.

    ``ack``: acknowledges batches with the consumer (called in order, never twice for a batch).
    ``stopping``: whether the worker is stopping (a failed write is then the producer closing under us:
    nothing more is acknowledged, quietly). ``lost``: called with the exception when a write of states
    failed otherwise; it must not return (the worker exits without committing)."""

    def __init__(
        self,
        processor: StatePersister,
        ack: Callable[[list[list[Any]]], None],
        stopping: Callable[[], bool],
        lost: Callable[[BaseException], NoReturn],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.processor = processor
        self._ack = ack
        self._stopping = stopping
        self._lost = lost
        self._monotonic = monotonic
        self.unacked: list[UnackedBatch] = []
        self.last_settled = monotonic()
        self.latest: asyncio.Future[bool] | None = None  # the latest acknowledgement; it waits for the ones before

    def processed(self, messages: list[Any], position: int) -> None:
        """Note a batch just processed; ``position``: the aggregator's touch position after it."""
        self.unacked.append(UnackedBatch(messages, position, self._monotonic()))

    def settle_due(self, idle: bool, interval: float) -> bool:
        """:func:`settle_due` now, for the batches held."""
        return settle_due(self.unacked, idle, self._monotonic(), self.last_settled, interval)

    async def settle(self) -> None:
        """Persist the states of every batch processed so far (blocks while the processor is busy and
        the states are written); acknowledge those batches once the changelog has them, in the
        background, after the acknowledgements before. An exception from the persist propagates, with
        those batches no longer held: nothing acknowledges them (their input is replayed)."""
        batches = [entry.messages for entry in self.unacked]
        self.unacked.clear()
        self.last_settled = self._monotonic()
        durable = await self.processor.persist()
        self._chain(batches, durable)

    def ack_covered(self) -> None:
        """Acknowledge the batches that the processor's slices committed so far cover, once the changelog
        has them (in the background, after the acknowledgements before). Does not block."""
        durable, covered = self.processor.slices_committed()
        batches = [entry.messages for entry in take_covered(self.unacked, covered)]
        if durable is None and not batches:
            return
        # Batches covered by commits before (their durables are in the chain) wait for nothing more.
        self._chain(batches, durable or asyncio.sleep(0))

    def _chain(self, batches: list[list[Any]], durable: Awaitable[object]) -> None:
        self.latest = asyncio.ensure_future(self._acknowledge(batches, durable, self.latest))
        self.latest.add_done_callback(_log_failure)

    async def _acknowledge(
        self, batches: list[list[Any]], durable: Awaitable[object], previous: Awaitable[bool] | None
    ) -> bool:
        """Acknowledge ``batches`` once the acknowledgements before are through and ``durable`` completed.
        Returns False, acknowledging nothing, when a write failed (this one's, or one before it: the
        later batches' states may have been in it)."""
        if previous is not None and not await _succeeded(previous):
            with contextlib.suppress(Exception):  # observed, so that no failure goes unretrieved
                await durable
            return False
        try:
            await durable
        except Exception as exc:
            if self._stopping():  # the producer closed under us: nothing more is acknowledged
                return False
            self._lost(exc)
            return False  # (``lost`` does not return; were it to, nothing would be acknowledged)
        self._ack(batches)
        return True


def _log_failure(link: asyncio.Future[bool]) -> None:
    """Log a link of the chain that raised (acknowledging failed: a bug, or ``lost`` raised)."""
    if not link.cancelled() and link.exception() is not None:
        log.error("acknowledging batches failed; nothing after them is acknowledged", exc_info=link.exception())


async def _succeeded(acknowledgement: Awaitable[bool]) -> bool:
    """Whether an acknowledgement acknowledged its batches; False if it raised (it reported why, or its
    exception is the one ``lost`` raised): the chain after it acknowledges nothing either."""
    try:
        return await acknowledgement
    except Exception:
        return False
