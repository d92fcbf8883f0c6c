"""pipeline.collector: the garbage collector paused through a chunk, its survivors frozen, swept when due."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from pipeline import metrics
from pipeline.collector import QUIET_SECONDS, ChunkCollector
from pipeline.processor import Message
from pipeline.settings import Settings, SettingsError
from tests.unit.test_processor import like, make, owned_by

IDLE_SWEEP_SECONDS = Settings.gc_idle_sweep_seconds


class Node:
    """A weak-referenceable object that can be made into a reference cycle."""

    def __init__(self) -> None:
        self.other: Any = None


@pytest.fixture(autouse=True)
def collector_state() -> Iterator[None]:
    """Each test starts with the collector enabled and nothing frozen, and leaves it so."""
    enabled = gc.isenabled()
    gc.unfreeze()
    gc.enable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()
        if enabled:
            gc.enable()
        else:
            gc.disable()


def garbage_cycle() -> weakref.ref[Node]:
    """A two-object cycle, unreferenced once this returns: only the collector can free it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def sample(name: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name)
    return 0.0 if value is None else value


def test_no_collection_runs_inside_a_chunk_and_the_collector_resumes_after() -> None:
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    threshold = gc.get_threshold()[0]
    gc.callbacks.append(count)
    try:
        with ChunkCollector(300.0, IDLE_SWEEP_SECONDS).chunk():
            held = [[i] for i in range(threshold * 3)]  # tracked containers, three young thresholds' worth
            during = list(collections)
        assert during == []
        assert gc.isenabled()
        gc.collect(0)
        assert collections[-1:] == [0]
    finally:
        gc.callbacks.remove(count)
    assert len(held) == threshold * 3


def test_what_a_chunk_leaves_alive_is_frozen_and_freed_by_refcount_when_dropped() -> None:
    before = gc.get_freeze_count()
    with ChunkCollector(300.0, IDLE_SWEEP_SECONDS).chunk():
        kept = [Node() for _ in range(1000)]
    assert gc.get_freeze_count() >= before + 1000
    ref = weakref.ref(kept[0])
    del kept
    assert ref() is None  # frozen objects are still freed by reference counting


def test_a_cycle_frozen_by_a_chunk_survives_collections_until_a_sweep_frees_it() -> None:
    collector = ChunkCollector(300.0, IDLE_SWEEP_SECONDS)
    with collector.chunk():
        ref = garbage_cycle()
    gc.collect()
    assert ref() is not None  # frozen: no collection sees it
    collections = sample("engagement_gc_sweep_seconds_count")
    collected = sample("engagement_gc_sweep_collected_total")
    found = collector.sweep()
    assert ref() is None
    assert found is not None and found >= 2
    assert sample("engagement_gc_sweep_seconds_count") == collections + 1
    assert sample("engagement_gc_sweep_collected_total") == collected + found
    assert collector.frozen_chunks == 0
    assert gc.get_freeze_count() > 0  # what survived the sweep is frozen again


def test_a_chunk_that_raises_still_freezes_and_resumes_the_collector() -> None:
    collector = ChunkCollector(300.0, IDLE_SWEEP_SECONDS)
    with pytest.raises(ValueError, match="bad chunk"), collector.chunk():
        kept = Node()
        raise ValueError("bad chunk")
    assert gc.isenabled()
    assert collector.frozen_chunks == 1
    assert kept is not None


def test_a_collector_disabled_by_the_process_stays_disabled() -> None:
    gc.disable()
    with ChunkCollector(300.0, IDLE_SWEEP_SECONDS).chunk():
        pass
    assert not gc.isenabled()


def test_a_sweep_is_due_every_interval_or_once_the_input_paused() -> None:
    now = [0.0]
    collector = ChunkCollector(300.0, IDLE_SWEEP_SECONDS, lambda: now[0])
    now[0] = IDLE_SWEEP_SECONDS
    assert not collector.sweep_if_due()  # quiet, but nothing frozen since the last sweep
    later = [0.0]
    idle = ChunkCollector(300.0, IDLE_SWEEP_SECONDS, lambda: later[0])
    later[0] = 300.0
    assert not idle.sweep_if_due()  # nor after the interval: the collector saw everything
    with collector.chunk():
        pass
    assert not collector.sweep_if_due()  # a chunk just ended: not quiet
    now[0] += QUIET_SECONDS
    assert collector.sweep_if_due()  # quiet, a chunk frozen, the last sweep IDLE_SWEEP_SECONDS ago
    assert collector.frozen_chunks == 0
    now[0] += 10.0
    with collector.chunk():
        pass
    now[0] += 30.0
    assert not collector.sweep_if_due()  # quiet, but the last sweep was 40 s ago: a trickle waits
    now[0] += IDLE_SWEEP_SECONDS - 40.0
    assert collector.sweep_if_due()
    for _ in range(299):  # under load (a chunk every second): only once the interval passed
        now[0] += 1.0
        with collector.chunk():
            pass
        assert not collector.sweep_if_due()
    now[0] += 1.0
    with collector.chunk():
        pass
    assert collector.sweep_if_due()
    assert not collector.sweep_if_due()


def test_a_sweep_that_finds_another_collection_under_way_stays_due(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    collector = ChunkCollector(300.0, IDLE_SWEEP_SECONDS, lambda: now[0])
    with collector.chunk():
        ref = garbage_cycle()
    now[0] = 300.0
    sweeps = sample("engagement_gc_sweep_seconds_count")
    monkeypatch.setattr(gc, "collect", lambda generation=2: 0)  # CPython's answer while another thread collects
    assert collector.sweep() is None
    assert not collector.sweep_if_due()
    assert collector.frozen_chunks == 1
    assert sample("engagement_gc_sweep_seconds_count") == sweeps
    assert gc.get_freeze_count() > 0  # frozen again meanwhile
    monkeypatch.undo()
    assert collector.sweep_if_due()  # tried again at the next call
    assert ref() is None


def test_the_processor_sweeps_after_a_batch_once_due() -> None:
    now = [0.0]
    processor, _, _, _, _ = make(clock=now)
    account = owned_by(0)
    asyncio.run(processor.process([Message("likes", 0, 1, orjson.dumps(like("e1", account)))]))
    assert processor.collector.frozen_chunks == 1
    sweeps = sample("engagement_gc_sweep_seconds_count")
    now[0] = processor.settings.gc_sweep_seconds
    asyncio.run(processor.process([Message("likes", 0, 2, orjson.dumps(like("e2", account, actor="u2")))]))
    assert processor.collector.frozen_chunks == 0
    assert sample("engagement_gc_sweep_seconds_count") == sweeps + 1


def test_the_processor_freezes_each_chunk_and_leaves_the_collector_running() -> None:
    processor, _, warehouse, _, _ = make()
    account = owned_by(0)
    events = [like(f"e{i}", account, actor=f"u{i}") for i in range(5)]
    asyncio.run(processor.process([Message("likes", 0, 1, orjson.dumps(events))]))
    assert processor.collector.frozen_chunks == 1
    assert gc.isenabled()
    assert len(warehouse.rows("engagement_events")) == 5


def test_the_sweep_intervals_are_checked() -> None:
    settings = Settings.from_env({"ENGAGEMENT_GC_SWEEP_SECONDS": "60", "ENGAGEMENT_GC_IDLE_SWEEP_SECONDS": "0"})
    assert (settings.gc_sweep_seconds, settings.gc_idle_sweep_seconds) == (60.0, 0.0)
    for name, value in (("ENGAGEMENT_GC_SWEEP_SECONDS", "0"), ("ENGAGEMENT_GC_IDLE_SWEEP_SECONDS", "-1")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
