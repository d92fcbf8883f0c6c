"""pipeline.web.WebThread over loopback HTTP: its pages answer while the starting thread's event loop is
stuck in a long step (the worker's loop in a batch), it refuses a port in use, and it stops; the
worker's own pages on it; and a worker whose port is taken."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest
from aiohttp import web

from pipeline.processes import free_port, spawn, stop
from pipeline.query_client import LOCK_FILE
from pipeline.replay import worker_command
from pipeline.settings import Settings
from pipeline.web import Route, WebThread
from pipeline.worker import create_app

pytestmark = pytest.mark.integration

STEP_SECONDS = 1.5


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_pages_answer_while_the_worker_loop_is_in_a_long_step() -> None:
    handled_on: list[int] = []

    async def ping(request: web.Request) -> web.Response:
        handled_on.append(threading.get_ident())
        return web.Response(text="pong")

    port = free_port()
    server = WebThread("127.0.0.1", port, [Route("GET", "/ping", ping)])
    server.start()
    answers: list[tuple[float, int, bytes]] = []

    def client() -> None:
        time.sleep(0.3)  # well inside the step
        status, body = get(f"http://127.0.0.1:{port}/ping")
        answers.append((time.perf_counter(), status, body))

    async def long_step() -> float:
        """A step that never yields, in interpreted code (as the worker's processing of a batch)."""
        asker = threading.Thread(target=client)
        asker.start()
        end = time.perf_counter() + STEP_SECONDS
        spins = 0
        while time.perf_counter() < end:
            spins += 1
        await asyncio.sleep(0)
        asker.join(10)
        return end

    try:
        step_ended = asyncio.run(long_step())
    finally:
        server.stop()
    assert len(answers) == 1
    answered_at, status, body = answers[0]
    assert (status, body) == (200, b"pong")
    assert answered_at < step_ended - 0.5  # answered while the loop was still stuck
    assert handled_on and handled_on[0] != threading.get_ident()


def test_start_raises_when_the_port_is_taken_and_stop_frees_it() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            WebThread("127.0.0.1", port, [Route("GET", "/", ok)]).start()
    server = WebThread("127.0.0.1", port, [Route("GET", "/", ok)])
    server.start()
    assert get(f"http://127.0.0.1:{port}/") == (200, b"ok")
    server.stop()
    server.stop()  # a second stop does nothing
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{port}/")
    again = WebThread("127.0.0.1", port, [Route("GET", "/", ok)])  # the port is free again
    again.start()
    again.stop()


def test_the_worker_pages_answer_from_the_web_thread() -> None:
    """The worker's own routes (create_app) served by a WebThread: /healthz before the worker's first
    tick, /metrics in Prometheus' text format, and /query's refusals, which need no warehouse."""
    app, _processor = create_app(Settings(app_id="engagement-test", partitions=2), warehouse=object())  # type: ignore[arg-type]
    assert app.pages is not None
    loop = asyncio.new_event_loop()
    try:
        routes = app.pages(loop)
        assert {(r.method, r.path) for r in routes} == {
            ("GET", "/metrics"),
            ("GET", "/healthz"),
            ("POST", "/query"),
            ("POST", "/admin/flush"),
        }
        port = free_port()
        server = WebThread("127.0.0.1", port, routes)
        server.start()
        try:
            base = f"http://127.0.0.1:{port}"
            assert get(base + "/healthz") == (200, b'{"status":"ok","partitions":[]}')
            with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                assert b"engagement_hot_path_compiled" in response.read()
            request = urllib.request.Request(base + "/query", data=b"not json")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 400
            assert b"not JSON" in refused.value.read()
        finally:
            server.stop()
    finally:
        loop.close()


def test_a_worker_whose_port_is_taken_exits_with_the_reason(live_settings: Settings) -> None:
    """The pages bind before Faust starts: a taken port ends the worker at once (code 1), says so, and
    leaves no lock on the embedded store behind."""
    with socket.socket() as taken:
        taken.bind((live_settings.web_host, 0))
        taken.listen()
        settings = replace(live_settings, web_port=taken.getsockname()[1])
        log_path = settings.data_dir.parent / "worker.log"
        worker = spawn(worker_command(), env=settings.to_env(), log_path=log_path)
        try:
            assert worker.wait(timeout=120) == 1
        finally:
            stop(worker, timeout=10)
    assert f"cannot serve the worker's pages on {settings.web_host}:{settings.web_port}" in log_path.read_text()
    assert not (settings.data_dir / LOCK_FILE).exists()
