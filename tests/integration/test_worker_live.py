"""A real worker on the embedded broker and store: bad input, re-keying, web endpoints, sql through it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace

import orjson
import pytest
from kafka import KafkaProducer

from pipeline import compiled
from pipeline.ingest import ingest_lines
from pipeline.partitioning import account_partitioner
from pipeline.query_client import LOCK_FILE
from pipeline.settings import Settings
from tests.integration.helpers import merge_thread_nice, running_worker, wait_processed

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000


def like(eid: str, account: str, actor: str = "u1", sec: int = 0) -> dict[str, object]:
    return {"event_id": eid, "type": "like", "ts": T0 + sec * 1000, "actor_id": actor, "account_id": account}


def sql(settings: Settings, query: str, fmt: str = "json") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "sql", query, "--format", fmt],
        env={**settings.to_env(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def sample(metrics: str, name: str) -> float:
    return next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " ")), 0.0)


def test_worker_end_to_end(live_settings: Settings) -> None:
    # The collector swept only by the worker's timer: never on the interval, at once when the input pauses.
    settings = replace(live_settings, gc_sweep_seconds=3600.0, gc_idle_sweep_seconds=0.0)
    owner = account_partitioner(2)
    home = next(f"acct-{i}" for i in range(100) if owner(f"acct-{i}") == 0)
    away = next(f"acct-{i}" for i in range(100) if owner(f"acct-{i}") == 1)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_request_size=4 * 1024 * 1024)
    sends = [
        ("likes", 0, orjson.dumps([like("e1", home), like("e1", home), {"type": "like"}, like("e2", home, "u2")])),
        ("likes", 0, b"\xff\xfe not utf-8"),
        ("likes", 0, b"{truncated"),
        ("likes", 0, orjson.dumps(like("big", home)) + b" " * (1024 * 1024)),
        ("likes", 0, orjson.dumps(like("wrong-partition", away, "u3"))),  # keyed elsewhere: re-keyed
        ("replies", 0, orjson.dumps(like("mismatch", home))),  # a like on the replies topic
        (
            "follows",
            0,
            orjson.dumps({"event_id": "s", "type": "followers", "ts": T0, "account_id": home, "followers": 4}),
        ),
    ]
    for topic, partition, value in sends:
        producer.send(topic, value=value, partition=partition, key=b"k")
    producer.flush()
    # A line `engagement ingest` rejects goes straight to the dead-letter topic: the worker counts it there.
    bad_line = orjson.dumps({**like("when", home), "ts": "yesterday"})
    assert ingest_lines([bad_line], settings, producer, "upload.jsonl").invalid == 1
    producer.flush()
    producer.close()

    with running_worker(settings) as worker:
        wait_processed(settings)
        # the worker holds the embedded store: `engagement sql` goes through it
        result = sql(
            settings,
            "SELECT reason, element_index, source_offset FROM engagement_dead_letters FINAL "
            "ORDER BY source_topic, source_offset, element_index",
        )
        assert result.returncode == 0, result.stderr
        letters = [(d["reason"], d["element_index"], d["source_offset"]) for d in orjson.loads(result.stdout)]
        assert letters == [
            ("invalid_ts", -1, 1),  # ingest:upload.jsonl, line 1
            ("missing_field", 2, 0),
            ("invalid_utf8", -1, 1),
            ("invalid_json", -1, 2),
            ("too_large", -1, 3),
            ("topic_mismatch", -1, 0),
        ]
        events = orjson.loads(
            sql(
                settings, "SELECT event_id, account_id, source_partition FROM engagement_events FINAL ORDER BY event_id"
            ).stdout
        )
        assert [(e["event_id"], e["source_partition"]) for e in events] == [
            ("e1", 0),
            ("e2", 0),
            ("s", 0),
            ("wrong-partition", 0),
        ]
        windows = orjson.loads(
            sql(
                settings,
                "SELECT account_id, likes, engagers, followers, "
                "engagement_rate FROM engagement_windows FINAL ORDER BY account_id",
            ).stdout
        )
        assert {w["account_id"]: (w["likes"], w["engagers"], w["followers"]) for w in windows} == {
            home: (2, 2, 4),
            away: (1, 1, 0),
        }

        refused = sql(settings, "DROP TABLE engagement_events")
        assert refused.returncode == 2 and "refused" in refused.stderr

        base = f"http://{settings.web_host}:{settings.web_port}"
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        # every dead letter counted once: the worker's own as it made them, ingest's as it read it
        counted = {
            line.split('"')[1]: float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("engagement_dead_letters_total{")
        }
        reasons = ("invalid_ts", "missing_field", "invalid_utf8", "invalid_json", "too_large", "topic_mismatch")
        assert counted == dict.fromkeys(reasons, 1.0)
        assert 'engagement_events_consumed_total{topic="likes",type="like"}' in metrics
        assert "engagement_clickhouse_insert_seconds_count" in metrics
        # the worker inherits this process's hot path (the same build and ENGAGEMENT_COMPILED) and says which
        expected = "1.0" if compiled.STATUS.active else "0.0"
        assert f"\nengagement_hot_path_compiled {expected}\n" in metrics
        # taken when a batch starts: the 7 source messages and at least the one re-keyed message (the
        # re-key topic also carries watermark announcements, a number that depends on timing)
        taken = next(line for line in metrics.splitlines() if line.startswith("engagement_messages_taken_total "))
        assert float(taken.split()[1]) >= len(sends) + 1
        # the chunks froze what they left alive; once the input paused, the worker's timer swept it
        deadline = time.monotonic() + 30
        while sample(metrics, "engagement_gc_sweep_seconds_count") < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
            metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert sample(metrics, "engagement_gc_sweep_seconds_count") >= 1
        assert "\nengagement_gc_sweep_collected_total " in metrics
        health = orjson.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read())
        assert health["status"] == "ok" and health["partitions"] == [0, 1]
        # the embedded store's merge threads (started by its merges by now) run below the worker's own
        merge_nice = merge_thread_nice(worker.pid)
        assert merge_nice and min(merge_nice.values()) >= settings.embedded_merge_nice == 10, merge_nice
        request = urllib.request.Request(base + "/query", data=orjson.dumps({"sql": "INSERT INTO x VALUES (1)"}))
        with pytest.raises(urllib.error.HTTPError) as refused_http:
            urllib.request.urlopen(request, timeout=5)
        assert refused_http.value.code == 403
        # the guard checks the statement with its parameters bound: a value cannot end a comment
        hidden = {"sql": "SELECT /* %(x)s */ 1", "params": {"x": "*/ * FROM merge(currentDatabase(), char(46, 42)) --"}}
        for body in (hidden, {"sql": "SELECT 1", "params": ["not", "an", "object"]}):
            request = urllib.request.Request(base + "/query", data=orjson.dumps(body))
            with pytest.raises(urllib.error.HTTPError) as refused_http:
                urllib.request.urlopen(request, timeout=5)
            assert refused_http.value.code == 403, body
        bound = {
            "sql": "SELECT DISTINCT account_id FROM engagement_windows WHERE account_id = %(a)s",
            "params": {"a": home},
        }
        request = urllib.request.Request(base + "/query", data=orjson.dumps(bound))
        assert orjson.loads(urllib.request.urlopen(request, timeout=5).read())["rows"] == [[home]]
        assert worker.poll() is None
    # stopped (SIGTERM): a clean exit, the store's announcement for `engagement sql` removed
    assert worker.returncode == 0
    assert not (settings.data_dir / LOCK_FILE).exists()
