"""Keeps CPython's cyclic garbage collector off the account states: frozen after every chunk, swept rarely.

A worker's heap is mostly long-lived account states (~7 tracked containers per account, ~4 more per open
window) that reference counting frees when they go; the collector only matters for reference cycles,
which the hot path does not make (a draining worker's collections found a few thousand cyclic objects in
its whole run, nearly all at start-up). Left alone, the collector still goes through every new state once
or twice (young and middle collections) and through the whole heap at each full collection: ~2 µs per
event of a draining worker's main thread, ~15 % of it (bench/RESULTS.md, "The collector frozen").

So :meth:`ChunkCollector.chunk` pauses it through a chunk and then moves everything alive into the
permanent generation (``gc.freeze()``, constant time; every thread's objects, the collector's state being
the process's): later collections see only what was allocated since. Objects frozen are still freed by
reference counting when unreferenced; what a freeze keeps until a sweep is reference cycles, garbage
before the freeze or alive at it and garbage after (a failed batch's exception holding its delivery in
flight, say). :meth:`ChunkCollector.sweep_if_due` unfreezes and collects everything now and then (every
``sweep_seconds`` after a chunk was frozen, or sooner once the input pauses), which frees those cycles:
one full collection, as the collector would have run on its own, at a known time (~0.3 s with 20,000
accounts, ~0.9 s with 1,000,000).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from pipeline import metrics

# Once no chunk ended for QUIET_SECONDS (the input paused), a sweep is due if a chunk was frozen since the
# last and that was ``idle_sweep_seconds`` ago or more (a trickle of input does not sweep after every chunk).
QUIET_SECONDS: Final = 1.0


class ChunkCollector:
    """Freezes the collector's view after each chunk and sweeps every ``sweep_seconds`` (and once the input
    pauses, ``idle_sweep_seconds`` after the last sweep: the settings ``gc_sweep_seconds`` and
    ``gc_idle_sweep_seconds``). Not thread-safe: one processor's thread calls it (the collector's state is
    the process's)."""

    def __init__(
        self, sweep_seconds: float, idle_sweep_seconds: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.sweep_seconds = sweep_seconds
        self.idle_sweep_seconds = idle_sweep_seconds
        self._monotonic = monotonic
        self._last_sweep = self._last_chunk = monotonic()
        self.frozen_chunks = 0  # chunks frozen since the last sweep

    @contextmanager
    def chunk(self) -> Iterator[None]:
        """Run the body with the collector paused; then freeze everything alive and resume it (as it was:
        a collector disabled by the process stays disabled). Freezes even when the body raises."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            gc.freeze()
            if enabled:
                gc.enable()
            self.frozen_chunks += 1
            self._last_chunk = self._monotonic()

    def sweep_if_due(self) -> bool:
        """Sweep (:meth:`sweep`) once a chunk was frozen since the last sweep and ``sweep_seconds`` passed
        since it; or ``idle_sweep_seconds`` did and the input paused (no chunk for
        :data:`QUIET_SECONDS`). Call it between chunks, also while idle (a worker that froze nothing never
        sweeps: the collector sees all it allocates). Blocks for the sweep; returns whether one ran."""
        if not self.frozen_chunks:
            return False
        now = self._monotonic()
        elapsed = now - self._last_sweep
        quiet = now - self._last_chunk >= QUIET_SECONDS
        if elapsed >= self.sweep_seconds or (quiet and elapsed >= self.idle_sweep_seconds):
            return self.sweep() is not None
        return False

    def sweep(self) -> int | None:
        """Unfreeze, collect every generation, and freeze what survived (it survived a full collection).
        Blocks for one full collection (its pause is ``engagement_gc_sweep_seconds``); returns the
        unreachable objects it found (also counted in ``engagement_gc_sweep_collected_total``). None if
        another thread's collection was under way, so none ran (CPython then returns at once): the sweep
        stays due, tried again at the next call."""
        started = time.perf_counter()
        full = gc.get_stats()[-1]["collections"]
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        if gc.get_stats()[-1]["collections"] == full:
            return None
        metrics.GC_SWEEP_SECONDS.observe(time.perf_counter() - started)
        metrics.GC_SWEEP_COLLECTED.inc(found)
        self._last_sweep = self._monotonic()
        self.frozen_chunks = 0
        return found
