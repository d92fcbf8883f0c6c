"""pipeline.warehouse.merge_priority on chDB's own merge threads (Linux)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.warehouse.embedded import EmbeddedWarehouse
from pipeline.warehouse.merge_priority import MergePriority
from tests.integration.helpers import merge_thread_nice

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's"),
]


def test_chdb_merge_threads_run_at_the_target_and_merges_still_happen(tmp_path: Path) -> None:
    warehouse = EmbeddedWarehouse(tmp_path / "chdb")
    try:
        warehouse.execute("CREATE TABLE t (a UInt64) ENGINE = MergeTree ORDER BY a")
        for i in range(6):  # parts to merge: chDB starts its merge threads
            warehouse.execute(f"INSERT INTO t SELECT number FROM numbers({i * 10}, 10)")
        deadline = time.monotonic() + 10
        while not merge_thread_nice() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert merge_thread_nice(), "chDB started no merge thread"
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        if mine >= 19:
            pytest.skip("this process already runs at the lowest priority")
        target = min(19, max(10, mine + 1))
        MergePriority(target).apply()
        assert all(nice >= target for nice in merge_thread_nice().values()), merge_thread_nice()
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
        warehouse.execute("OPTIMIZE TABLE t FINAL")  # a merge runs to its end on the lowered threads
        parts = warehouse.query("SELECT count() FROM system.parts WHERE table = 't' AND active").rows
        assert parts == [(1,)]
        assert warehouse.query("SELECT count(), sum(a) FROM t").rows == [(60, sum(range(60)))]
    finally:
        warehouse.close()
