"""The timing both peer baselines share: count events, time the first to the last, report, exit.

Env: BENCH_EVENTS (how many events make a run), BENCH_RESULT (where the JSON result goes).
"""

from __future__ import annotations

import json
import os
import time


class FinishLine:
    """Call :meth:`tick` once per event read; at the expected count it writes
    ``{"events": N, "seconds": first-to-last}`` to BENCH_RESULT and ends the process."""

    def __init__(self) -> None:
        self.expected = int(os.environ["BENCH_EVENTS"])
        self.seen = 0
        self.first = 0.0

    def tick(self) -> None:
        self.seen += 1
        if self.seen == 1:
            self.first = time.perf_counter()
        if self.seen == self.expected:
            elapsed = time.perf_counter() - self.first
            with open(os.environ["BENCH_RESULT"], "w") as handle:
                handle.write(json.dumps({"events": self.expected, "seconds": elapsed}))
            os._exit(0)
