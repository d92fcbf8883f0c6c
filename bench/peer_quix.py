"""The peer users pick instead (`peer_eps`): the same windowed count per account with Quix Streams.

It appends the time it took to process ``BENCH_EVENTS`` events (first to last) to ``BENCH_RESULT`` and
exits. The input topic must exist with explicit retention/cleanup configs (the embedded broker does not
describe defaults Quix Streams asks for).

Env: BENCH_BOOTSTRAP, BENCH_TOPIC, BENCH_EVENTS, BENCH_RESULT, BENCH_STATE_DIR.
"""

from __future__ import annotations

import os
from typing import Any

from finish_line import FinishLine
from quixstreams import Application

finish = FinishLine()

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
    finish.tick()


sdf = app.dataframe(topic)
sdf = sdf.update(seen)  # counted on the way in, so an event dropped by the window still counts as read
sdf = sdf.tumbling_window(duration_ms=60_000).count().current()

if __name__ == "__main__":
    app.run()
