"""The largest account state of each changelog write is published, and a state large enough to slow the
worker down is logged, once per account."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pipeline import metrics
from pipeline.processor import LARGE_STATE_BYTES, StagedStore


def largest() -> float | None:
    return metrics.REGISTRY.get_sample_value("engagement_account_state_largest_bytes")


def commit(store: StagedStore, states: dict[str, int]) -> None:
    for account_id, size in states.items():
        store.put(account_id, b"x" * size)

    async def run() -> None:
        await (await store.commit())

    asyncio.run(run())


def test_the_largest_state_is_published_and_a_large_one_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    table: dict[bytes, bytes] = {}
    store = StagedStore(table)
    with caplog.at_level(logging.WARNING, logger="pipeline.processor"):
        commit(store, {"small": 100, "mid": 2_000})
        assert largest() == 2_000
        assert not caplog.records
        commit(store, {"small": 100, "celebrity": LARGE_STATE_BYTES + 1})
        assert largest() == LARGE_STATE_BYTES + 1
        commit(store, {"celebrity": LARGE_STATE_BYTES + 10})  # logged already
    assert [r.getMessage() for r in caplog.records] == [
        f"the state of account 'celebrity' is {LARGE_STATE_BYTES + 1} bytes: it is rewritten whole every time it"
        " changes, which holds up the worker's batches (docs/DESIGN.md, Not promised)"
    ]
    assert store.get("celebrity") == b"x" * (LARGE_STATE_BYTES + 10)  # stored all the same (in chunks)
    assert len(table[b"celebrity"]) < 100
