"""pipeline.warehouse.merge_priority: which threads it lowers, what it tolerates, when it gives up; and
on this process's own threads (Linux)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.warehouse.merge_priority import MergePriority


def tasks(root: Path, threads: dict[int, str]) -> Path:
    """A fake /proc/self/task: one directory per thread id, with its name in ``comm``."""
    for tid, name in threads.items():
        (root / str(tid)).mkdir()
        (root / str(tid) / "comm").write_text(name + "\n")
    return root


class Niceness:
    """Fake per-thread nice values, recording every change."""

    def __init__(self, values: dict[int, int]) -> None:
        self.values = values
        self.changes: list[tuple[int, int]] = []

    def get(self, tid: int) -> int:
        if tid not in self.values:
            raise ProcessLookupError(3, "No such process")
        return self.values[tid]

    def set(self, tid: int, nice: int) -> None:
        self.changes.append((tid, nice))
        self.values[tid] = nice


def test_only_merge_threads_below_the_target_are_lowered(tmp_path: Path) -> None:
    root = tasks(tmp_path, {101: "MergeMutate", 102: "MergeMutate3", 103: "ThreadPool", 104: "python", 105: "Merge"})
    niceness = Niceness({101: 0, 102: 15, 103: 0, 104: 0, 105: 0})
    merges = MergePriority(10, tasks=root, get_nice=niceness.get, set_nice=niceness.set)
    assert merges.apply() == 1
    assert niceness.changes == [(101, 10)]  # 102 is already lower than the target; the rest are not merges
    assert merges.apply() == 0  # found again, already at the target
    assert merges.lowered == 1


def test_a_thread_that_ended_meanwhile_is_skipped(tmp_path: Path) -> None:
    root = tasks(tmp_path, {201: "MergeMutate", 202: "MergeMutate"})
    niceness = Niceness({202: 0})  # 201 ended between the listing and the call
    merges = MergePriority(10, tasks=root, get_nice=niceness.get, set_nice=niceness.set)
    assert merges.apply() == 1
    assert niceness.changes == [(202, 10)]
    (root / "202" / "comm").unlink()  # and one whose directory lost its files
    niceness.values[202] = 0
    assert merges.apply() == 0


def test_it_gives_up_once_when_it_may_not_change_priorities(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tasks(tmp_path, {301: "MergeMutate"})
    calls: list[int] = []

    def refuse(tid: int, nice: int) -> None:
        calls.append(tid)
        raise PermissionError(1, "Operation not permitted")

    merges = MergePriority(10, tasks=root, get_nice=lambda tid: 0, set_nice=refuse)
    with caplog.at_level(logging.WARNING):
        assert merges.apply() == 0
        assert merges.apply() == 0
    assert calls == [301]  # not tried again
    assert [r.getMessage() for r in caplog.records] == [
        "chDB's merges keep their CPU priority: thread 301: [Errno 1] Operation not permitted"
    ]


def test_it_gives_up_where_threads_cannot_be_listed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    merges = MergePriority(10, tasks=tmp_path / "absent")
    with caplog.at_level(logging.WARNING):
        assert merges.apply() == 0
    assert "cannot be listed" in caplog.text


@pytest.mark.parametrize("nice", [0, 20, -5])
def test_the_target_is_a_lower_priority(nice: int) -> None:
    with pytest.raises(ValueError, match="1-19"):
        MergePriority(nice)


def test_the_thread_applies_every_interval_until_stopped(tmp_path: Path) -> None:
    root = tasks(tmp_path, {401: "MergeMutate"})
    niceness = Niceness({401: 0})
    merges = MergePriority(7, interval=0.02, tasks=root, get_nice=niceness.get, set_nice=niceness.set)
    merges.start()
    try:
        deadline = time.monotonic() + 5
        while not niceness.changes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert niceness.changes == [(401, 7)]
        tasks(root, {402: "MergeMutate"})  # a thread started later is found too
        niceness.values[402] = 0
        while len(niceness.changes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert niceness.changes == [(401, 7), (402, 7)]
    finally:
        merges.stop()
    count = len(niceness.changes)
    niceness.values[401] = 0
    time.sleep(0.1)
    assert len(niceness.changes) == count  # stopped: no more passes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_this_process_s_merge_named_thread_is_lowered_and_no_other() -> None:
    """On the real /proc/self/task: a thread of this process named like chDB's merge threads gets the
    nice value; this thread keeps its own."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    named = threading.Event()
    finish = threading.Event()
    native: list[int] = []

    def merge_like() -> None:
        libc.prctl(15, b"MergeMutateT", 0, 0, 0)  # PR_SET_NAME: this thread's comm
        native.append(threading.get_native_id())
        named.set()
        finish.wait(10)

    thread = threading.Thread(target=merge_like, daemon=True)
    thread.start()
    try:
        assert named.wait(5)
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        if mine >= 19:
            pytest.skip("this process already runs at the lowest priority")
        target = min(19, max(mine, os.getpriority(os.PRIO_PROCESS, native[0])) + 1)
        assert MergePriority(target).apply() >= 1
        assert os.getpriority(os.PRIO_PROCESS, native[0]) == target
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    finally:
        finish.set()
        thread.join(5)
