"""The peer users pick instead (`peer_eps`): the same windowed count per account with Quix Streams.

It appends the time it took to process ``BENCH_EVENTS`` events (first to last) to ``BENCH_RESULT`` and
exits. The input topic must exist with explicit retention/cleanup configs (the embedded broker does not
describe defaults Quix Streams asks for).

Env: BENCH_BOOTSTRAP, BENCH_TOPIC, BENCH_EVENTS, BENCH_RESULT, BENCH_STATE_DIR.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from quixstreams import Application

expected = int(os.environ["BENCH_EVENTS"])
state = {"seen": 0, "first": 0.0}

app = Application(
    broker_address=os.environ["BENCH_BOOTSTRAP"],
    consumer_group="bench-quix",
    auto_offset_reset="earliest",
    state_dir=os.environ.get("BENCH_STATE_DIR", "/tmp/bench-quix-state"),
    loglevel="WARNING",
    use_changelog_topics=True,
)
topic = app.topic(os.environ["BENCH_TOPIC"], value_deserializer="json", key_deserializer="str")


def seen(_: Any) -> None:
    state["seen"] += 1
    if state["seen"] == 1:
        state["first"] = time.perf_counter()
    if state["seen"] == expected:
        elapsed = time.perf_counter() - state["first"]
        with open(os.environ["BENCH_RESULT"], "w") as handle:
            handle.write(json.dumps({"events": expected, "seconds": elapsed}))
        os._exit(0)


sdf = app.dataframe(topic)
sdf = sdf.update(seen)  # counted on the way in, so an event dropped by the window still counts as read
sdf = sdf.tumbling_window(duration_ms=60_000).count().current()

if __name__ == "__main__":
    app.run()
