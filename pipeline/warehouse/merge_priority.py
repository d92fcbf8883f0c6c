"""The embedded store's background merges at a lower CPU priority than the worker's own threads.

chDB runs ClickHouse's background merges in threads of the worker's process (named ``MergeMutate``). On a
loaded machine they compete for the cores with the threads a row's latency waits for: the event loop
decoding a batch, the inserts. Merges can wait; those cannot. So the worker raises the merge threads'
nice value (Linux: per thread): on the live run at 21,500 events/s on two cores, the latency probe's p99
fell by 0.3-0.7 s in each of three pairs at nice 10, for the same CPU per event (bench/RESULTS.md,
"chDB's merges at a lower priority"). The merges still run: on idle time, and with a share of a busy
core (nice 10 gives ~10 % of it against a thread at 0). If they fall behind, ClickHouse itself slows
the inserts once a partition holds too many parts, which frees the cores for them.

chDB starts and stops its pool threads as it pleases, so :class:`MergePriority` looks for them again
every ``interval`` seconds. Only a thread found below the target is changed (raising a nice value needs
no privilege; lowering it does). A thread started by a merge thread would inherit its nice value; on the
live run, none was (only the merge threads' values had changed).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MERGE_THREAD_PREFIX = "MergeMutate"  # ClickHouse's MergeTreeBackgroundExecutor threads
TASKS = Path("/proc/self/task")


def _get_nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def _set_nice(tid: int, nice: int) -> None:
    os.setpriority(os.PRIO_PROCESS, tid, nice)


class MergePriority:
    """Keeps this process's merge threads at nice ``nice`` (1-19), from a daemon thread of its own.

    :meth:`apply` does one pass and never raises; :meth:`start` repeats it every ``interval`` seconds until
    :meth:`stop`. Where threads cannot be listed (no ``/proc``: not Linux) or their priority cannot be
    changed, it logs why once and stops trying.
    """

    def __init__(
        self,
        nice: int,
        interval: float = 1.0,
        tasks: Path = TASKS,
        get_nice: Callable[[int], int] = _get_nice,
        set_nice: Callable[[int, int], None] = _set_nice,
    ) -> None:
        if not 1 <= nice <= 19:
            raise ValueError(f"a merge thread's nice value must be 1-19, not {nice}")
        self.nice = nice
        self.interval = interval
        self._tasks = tasks
        self._get_nice = get_nice
        self._set_nice = set_nice
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._disabled = False
        self.lowered = 0  # merge threads whose priority this lowered, in all

    def apply(self) -> int:
        """Lower every merge thread found below the target; returns how many were lowered now."""
        if self._disabled:
            return 0
        try:
            tids = os.listdir(self._tasks)
        except OSError as exc:
            self._disable(f"the process's threads cannot be listed ({exc})")
            return 0
        lowered = 0
        for tid in tids:
            try:
                name = (self._tasks / tid / "comm").read_text().strip()
                if not name.startswith(MERGE_THREAD_PREFIX) or self._get_nice(int(tid)) >= self.nice:
                    continue
                self._set_nice(int(tid), self.nice)
            except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
                continue
            except (OSError, ValueError) as exc:
                self._disable(f"thread {tid}: {exc}")
                return lowered
            lowered += 1
        if lowered and not self.lowered:
            log.info("chDB's merge threads run at nice %d (ENGAGEMENT_EMBEDDED_MERGE_NICE)", self.nice)
        self.lowered += lowered
        return lowered

    def _disable(self, why: str) -> None:
        self._disabled = True
        log.warning("chDB's merges keep their CPU priority: %s", why)

    def start(self) -> None:
        """Apply every ``interval`` seconds on a daemon thread, the first time after one interval (the
        worker configures its logging meanwhile)."""
        self._thread = threading.Thread(target=self._run, name="merge-priority", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval) and not self._disabled:
            self.apply()

    def stop(self) -> None:
        """Stop looking (the threads keep their priority). Never raises."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(self.interval + 1)
