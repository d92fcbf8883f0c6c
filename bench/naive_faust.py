"""The textbook Faust agent (the baseline `naive_faust_eps`): one event per message, JSON decode, a
windowed table incremented per event. Run as a worker process; it appends the time it took to consume
``BENCH_EVENTS`` events (first event to last) to ``BENCH_RESULT`` and exits.

Env: BENCH_BOOTSTRAP, BENCH_TOPIC, BENCH_EVENTS, BENCH_RESULT, BENCH_WEB_PORT, BENCH_DATADIR.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import faust
from finish_line import FinishLine

app = faust.App(
    "bench-naive-faust",
    broker=f"kafka://{os.environ['BENCH_BOOTSTRAP']}",
    store="memory://",
    broker_session_timeout=10,
    broker_heartbeat_interval=3,
    consumer_auto_offset_reset="earliest",
    web_port=int(os.environ.get("BENCH_WEB_PORT", "6067")),
    web_bind="127.0.0.1",
    datadir=os.environ.get("BENCH_DATADIR", "/tmp/bench-naive"),
    topic_partitions=4,
)
topic = app.topic(os.environ["BENCH_TOPIC"], value_type=bytes, value_serializer="raw")
counts = app.Table("counts", default=int).tumbling(timedelta(seconds=60), expires=timedelta(minutes=10))
finish = FinishLine()


@app.agent(topic)
async def count(stream):  # type: ignore[no-untyped-def]
    async for raw in stream:
        event = json.loads(raw)
        counts[event["account_id"]] += 1
        finish.tick()


if __name__ == "__main__":
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
