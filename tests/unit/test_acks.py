"""The acknowledgement chain (pipeline.acks): batches are acknowledged only once the changelog has their
states, strictly in order, and never after a write of states failed."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable
from typing import Any, NoReturn

import pytest

from pipeline.acks import IDLE_PERSIST_SECONDS, Acknowledgements


class LostWrite(Exception):
    """What the test's ``lost`` raises in place of ending the process."""


class Persister:
    """A processor whose persists and slices complete when the test says so."""

    def __init__(self) -> None:
        self.persisted: list[asyncio.Future[None]] = []
        self.slice: tuple[Awaitable[object] | None, int] = (None, -1)

    async def persist(self) -> Awaitable[object]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.persisted.append(done)
        return done

    def slices_committed(self) -> tuple[Awaitable[object] | None, int]:
        taken, self.slice = self.slice, (None, self.slice[1])
        return taken


def make(stopping: bool = False) -> tuple[Acknowledgements, Persister, list[list[Any]]]:
    acked: list[list[Any]] = []

    def lost(exc: BaseException) -> NoReturn:
        raise LostWrite from exc

    persister = Persister()
    return Acknowledgements(persister, acked.extend, lambda: stopping, lost), persister, acked


async def settled() -> None:
    for _ in range(5):  # the chain's links each take a turn of the loop or two
        await asyncio.sleep(0)


def test_a_settle_acknowledges_every_batch_in_order_once_the_changelog_has_their_states() -> None:
    async def run() -> None:
        acks, persister, acked = make()
        acks.processed(["a1", "a2"], 1)
        acks.processed(["b1"], 2)
        await acks.settle()
        assert acks.unacked == []
        await settled()
        assert acked == []  # the states are not in the changelog yet
        persister.persisted[0].set_result(None)
        await settled()
        assert acked == [["a1", "a2"], ["b1"]]

    asyncio.run(run())


def test_a_later_acknowledgement_waits_for_the_ones_before() -> None:
    async def run() -> None:
        acks, persister, acked = make()
        acks.processed(["first"], 1)
        await acks.settle()  # its states' write is slow
        acks.processed(["second"], 2)
        acks.processed(["third"], 3)
        fast: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fast.set_result(None)
        persister.slice = (fast, 2)  # a slice covering "second" is already in the changelog
        acks.ack_covered()
        await settled()
        assert acked == []
        persister.persisted[0].set_result(None)
        await settled()
        assert acked == [["first"], ["second"]]
        assert [b.messages for b in acks.unacked] == [["third"]]  # the newest batch is never covered

    asyncio.run(run())


def test_after_a_lost_write_nothing_more_is_acknowledged_and_the_loss_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> None:
        acks, persister, acked = make()
        acks.processed(["first"], 1)
        await acks.settle()
        first = acks.latest
        acks.processed(["second"], 2)
        await acks.settle()
        acks.processed(["third"], 3)
        await acks.settle()
        persister.persisted[1].set_result(None)  # a later write succeeds, the first one fails...
        persister.persisted[2].set_exception(RuntimeError("also down"))  # ...and so does the last
        persister.persisted[0].set_exception(RuntimeError("changelog down"))
        await settled()
        assert first is not None and isinstance(first.exception(), LostWrite)  # ``lost``: the process ends
        assert isinstance(first.exception().__cause__, RuntimeError)  # type: ignore[union-attr]
        assert acks.latest is not None and acks.latest.result() is False  # the later links: nothing acked
        assert acked == []

    asyncio.run(run())
    gc.collect()  # an exception never retrieved is logged when its future is collected
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    # the failed link is logged once (then the process ends); the later links' writes were observed
    failed = "acknowledging batches failed; nothing after them is acknowledged"
    assert [r.getMessage() for r in caplog.records] == [failed]


def test_a_lost_write_acknowledges_nothing_even_if_lost_returns() -> None:
    """``lost`` must end the process; were it to return, the batches of the lost write stay unacked."""

    async def run() -> None:
        acked: list[list[Any]] = []
        losses: list[BaseException] = []
        persister = Persister()
        acks = Acknowledgements(persister, acked.extend, lambda: False, losses.append)  # type: ignore[arg-type]
        acks.processed(["b"], 1)
        await acks.settle()
        persister.persisted[0].set_exception(RuntimeError("changelog down"))
        await settled()
        assert acks.latest is not None and acks.latest.result() is False
        assert acked == [] and len(losses) == 1

    asyncio.run(run())


def test_a_write_that_fails_while_stopping_acknowledges_nothing_quietly() -> None:
    async def run() -> None:
        acks, persister, acked = make(stopping=True)
        acks.processed(["first"], 1)
        await acks.settle()
        acks.processed(["second"], 2)
        await acks.settle()
        persister.persisted[0].set_exception(RuntimeError("producer closed"))
        persister.persisted[1].set_result(None)
        await settled()
        assert acks.latest is not None and acks.latest.result() is False
        assert acked == []

    asyncio.run(run())


def test_covered_batches_without_a_new_slice_are_acknowledged_after_the_chain() -> None:
    """Batches covered by a slice committed earlier (its write is already in the chain) wait for nothing
    more than the acknowledgements before them; with nothing covered and no slice, no link is added."""

    async def run() -> None:
        acks, persister, acked = make()
        acks.processed(["one"], 1)
        acks.ack_covered()
        assert acks.latest is None  # nothing committed, nothing covered
        acks.processed(["two"], 1)
        persister.slice = (None, 1)
        acks.ack_covered()
        await settled()
        assert acked == [["one"]] and [b.messages for b in acks.unacked] == [["two"]]

    asyncio.run(run())


def test_a_failed_persist_leaves_its_batches_unacknowledged() -> None:
    class Failing(Persister):
        async def persist(self) -> Awaitable[object]:
            raise RuntimeError("table write failed")

    async def run() -> None:
        acked: list[list[Any]] = []

        def lost(exc: BaseException) -> NoReturn:
            raise LostWrite from exc

        acks = Acknowledgements(Failing(), acked.extend, lambda: False, lost)
        acks.processed(["b"], 1)
        with pytest.raises(RuntimeError):
            await acks.settle()
        await settled()
        assert acked == [] and acks.unacked == [] and acks.latest is None

    asyncio.run(run())


def test_settle_due_reads_the_clock_and_the_last_settle() -> None:
    now = [100.0]
    acks = Acknowledgements(Persister(), lambda batches: None, lambda: False, _never, monotonic=lambda: now[0])
    assert not acks.settle_due(True, 5.0)  # nothing held
    acks.processed(["b"], 1)
    now[0] += 0.1
    assert not acks.settle_due(True, 5.0)  # the input has not paused long enough
    now[0] += 1.0
    assert acks.settle_due(True, 5.0) and not acks.settle_due(False, 5.0)

    async def settle_then_more() -> None:
        await acks.settle()
        acks.processed(["c"], 2)

    asyncio.run(settle_then_more())
    now[0] += IDLE_PERSIST_SECONDS  # the batch ended as long ago as the pause needs...
    acks.last_settled = now[0] - IDLE_PERSIST_SECONDS / 2  # ...but a settle came since
    assert not acks.settle_due(True, 5.0)
    now[0] += IDLE_PERSIST_SECONDS / 2
    assert acks.settle_due(True, 5.0)


def _never(exc: BaseException) -> NoReturn:
    raise AssertionError("no write is lost here") from exc
