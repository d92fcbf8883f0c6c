"""The worker's web pages, served from an event loop on a thread of their own.

The worker's event loop decodes and aggregates a batch in one step, without yielding: under load on two
cores such a step took 0.2-0.6 s (bench/RESULTS.md, "The worker's pages on a thread of their own"). Pages
served on that loop (Faust's web server) waited for it: ``/healthz`` answered in 0.40-0.42 s at the 99th
percentile at 21,500 events/s, ``/query`` likewise. A page served here waits only for the interpreter's
lock: 0.09-0.11 s.

A handler runs on this thread's loop, so it may touch only what is safe from another thread: a value
the worker publishes whole (a frozenset, a flag), the Prometheus registry, the warehouse writer's read
(an executor). Anything else runs on the worker's loop through :func:`on_loop`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NamedTuple, TypeVar

from aiohttp import web
from faust.utils import json as faust_json

log = logging.getLogger(__name__)

T = TypeVar("T")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Route(NamedTuple):
    """One page: an HTTP method (``GET``, ``POST``), a path, and its handler."""

    method: str
    path: str
    handler: Handler


def json_response(value: Any, status: int = 200) -> web.Response:
    """``value`` as a JSON response, encoded as Faust's pages encode it (dates as ISO 8601, decimals and
    UUIDs as strings), in UTF-8."""
    payload = faust_json.dumps(value)
    body = payload.encode("utf-8") if isinstance(payload, str) else payload
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")


def on_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """Run ``coroutine`` on ``loop`` (another thread's) and return what the calling loop awaits for its
    result; its exception is raised there. If ``loop`` is closed, raises RuntimeError at once (and the
    coroutine is closed unrun)."""
    try:
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    except RuntimeError:
        coroutine.close()
        raise
    return asyncio.wrap_future(future)


class WebThread:
    """Serves ``routes`` over HTTP on ``host:port`` from an event loop on a daemon thread of its own.

    :meth:`start` blocks until the socket is bound and raises the bind's OSError (a port in use) if it
    cannot be. :meth:`stop` closes the server (requests in progress are cut) and never raises.
    """

    def __init__(self, host: str, port: int, routes: Sequence[Route]) -> None:
        self.host = host
        self.port = port
        self._app = web.Application()
        for route in routes:
            self._app.router.add_route(route.method, route.path, route.handler)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; returns once bound. Raises what binding raised."""
        bound: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(bound,), name="web", daemon=True)
        self._thread.start()
        bound.result()

    def _serve(self, bound: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, self.host, self.port, reuse_address=True).start())
        except BaseException as exc:
            loop.run_until_complete(runner.cleanup())
            loop.close()
            bound.set_exception(exc)
            return
        self._loop = loop
        bound.set_result(None)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(runner.cleanup())
            except Exception as exc:
                log.warning("closing the web server failed: %r", exc)
            loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait up to ``timeout`` s for the thread. Never raises."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:  # already closed
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the web server did not stop within %.0f s", timeout)
