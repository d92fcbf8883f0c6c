"""End to end: a generated file of >= 50,000 dirty events replayed through the embedded broker, a real
worker and ClickHouse (chDB, and the 18.16 server) equals the pure-Python reference, exactly."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from pipeline import queries
from pipeline.generate import TrafficModel, lines
from pipeline.query_client import run_query
from pipeline.reference import reference_rows
from pipeline.replay import replay
from pipeline.settings import Settings
from tests.integration.helpers import config_of, events_of, stored_windows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dirty_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    model = TrafficModel(accounts=800, users=20_000, events_per_second=120, events=52_000, seed=11)
    with path.open("wb") as handle:
        for line in lines(model, invalid_share=0.005):
            handle.write(line + b"\n")
    return path


def test_generated_file_has_every_kind_of_dirt(dirty_file: Path) -> None:
    events, invalid = events_of(dirty_file)
    assert len(events) >= 50_000 and invalid > 100
    ids = Counter(e.event_id for e in events)
    assert sum(1 for n in ids.values() if n > 1) > 500  # duplicates
    assert sum(1 for e in events if e.is_self) > 100  # self-engagement
    assert any(not e.account_id.isascii() for e in events)  # Unicode ids
    forms = Counter(
        type(orjson.loads(line)["ts"]).__name__ + (":Z" if b'Z"' in line else "")
        for line in dirty_file.read_bytes().splitlines()[:5000]
        if line.startswith(b"{") and b'"ts":' in line and b"NaN" not in line and b"bad-" not in line
    )
    assert forms["int"] and forms["str:Z"] and forms["str"]  # epoch ms, RFC 3339 with Z, with an offset
    disorder = max(a.ts_ms - b.ts_ms for a, b in itertools.pairwise(events))
    assert 0 < disorder < 300_000  # out of order, within the allowed lateness
    assert sum(1 for e in events if e.type == "reply" and e.in_reply_to) > 500  # responses


def _replay_and_compare(path: Path, settings: Settings) -> dict[tuple[str, int], tuple[object, ...]]:
    replay(str(path), settings, timeout=900)
    events, invalid = events_of(path)
    expected = reference_rows(events, config_of(settings))
    stored = stored_windows(settings)
    assert len(stored) == len(expected)
    mismatched = [k for k in expected if stored.get(k) != expected[k]][:5]
    assert not mismatched, [(expected[k], stored.get(k)) for k in mismatched]
    assert stored == expected
    counts = run_query(settings, queries.COUNT_TABLE_ROWS).as_dicts()[0]
    assert counts["events"] == len({e.event_id for e in events})
    assert counts["final_windows"] == counts["windows"] == len(expected)
    assert counts["dead_letters"] == invalid
    return stored


def test_replay_embedded_equals_reference_and_is_repeatable(dirty_file: Path, tmp_path: Path) -> None:
    first = _replay_and_compare(dirty_file, Settings.from_env({}, data_dir=tmp_path / "one"))
    second = _replay_and_compare(dirty_file, Settings.from_env({}, data_dir=tmp_path / "two"))
    assert first == second


def test_replay_into_clickhouse_server_equals_reference(dirty_file: Path, server_settings: Settings) -> None:
    _replay_and_compare(dirty_file, replace(server_settings, partitions=3))
