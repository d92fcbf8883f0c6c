"""pipeline.web without sockets: running a coroutine on another thread's loop, and the JSON of the pages;
and the worker's /healthz verdict (pipeline.worker.health)."""

from __future__ import annotations

import asyncio
import datetime
import threading
import uuid
import warnings
from collections.abc import Iterator
from decimal import Decimal

import orjson
import pytest

from pipeline.web import json_response, on_loop
from pipeline.worker import LOOP_STALL_SECONDS, health


@pytest.fixture
def other_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running on a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_on_loop_runs_the_coroutine_on_the_other_loop(other_loop: asyncio.AbstractEventLoop) -> None:
    async def where() -> tuple[asyncio.AbstractEventLoop, int]:
        return asyncio.get_running_loop(), threading.get_ident()

    async def caller() -> tuple[asyncio.AbstractEventLoop, int]:
        return await on_loop(other_loop, where())

    ran_on, thread = asyncio.run(caller())
    assert ran_on is other_loop
    assert thread != threading.get_ident()


def test_on_loop_raises_the_coroutine_s_exception_in_the_caller(other_loop: asyncio.AbstractEventLoop) -> None:
    async def fails() -> None:
        raise KeyError("from the other loop")

    async def caller() -> None:
        await on_loop(other_loop, fails())

    with pytest.raises(KeyError, match="from the other loop"):
        asyncio.run(caller())


def test_on_loop_refuses_a_closed_loop_without_leaving_the_coroutine_unawaited() -> None:
    closed = asyncio.new_event_loop()
    closed.close()

    async def never() -> None:
        raise AssertionError("ran on a closed loop")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would be a RuntimeWarning
        with pytest.raises(RuntimeError, match="closed"):
            on_loop(closed, never())


def test_json_response_encodes_values_as_faust_pages_did() -> None:
    at = datetime.datetime(2026, 11, 28, 12, 30, 15, 123456, tzinfo=datetime.UTC)
    value = {"rows": [[at, datetime.date(2026, 11, 28), Decimal("1.50"), uuid.UUID(int=7), "é"]], "n": 3}
    response = json_response(value, status=503)
    assert response.status == 503
    assert response.content_type == "application/json"
    assert response.charset == "utf-8"
    assert isinstance(response.body, bytes)
    assert orjson.loads(response.body) == {
        "rows": [
            [
                "2026-11-28T12:30:15.123456Z",
                "2026-11-28",
                "1.50",
                "00000000-0000-0000-0000-000000000007",
                "é",
            ]
        ],
        "n": 3,
    }


def test_health_is_ok_with_the_partitions_while_the_loop_runs() -> None:
    assert health(False, 100.0, 100.0 + LOOP_STALL_SECONDS, frozenset({3, 0, 2})) == (
        200,
        {"status": "ok", "partitions": [0, 2, 3]},
    )


def test_health_is_ok_before_the_loop_s_first_tick() -> None:
    """Start-up (Kafka, the table's recovery) may hold the first tick back: the startup probe waits."""
    assert health(False, None, 10_000.0, frozenset()) == (200, {"status": "ok", "partitions": []})


def test_health_reports_a_stalled_loop() -> None:
    status, body = health(False, 100.0, 100.5 + LOOP_STALL_SECONDS, frozenset({1}))
    assert status == 503
    assert body["status"] == "stalled"
    assert f"{LOOP_STALL_SECONDS:.0f} s" in body["reason"]


def test_health_reports_the_tripped_brake_first() -> None:
    for ticked_at in (None, 0.0, 1_000.0):
        status, body = health(True, ticked_at, 1_000.0, frozenset({1}))
        assert (status, body["status"]) == (503, "halted")
