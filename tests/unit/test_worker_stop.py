"""A clean stop closes the producer while the worker's batch task or its timer may still send: what they
were doing is cut short, logged, and never acknowledged (it is replayed); only then is it not a failure."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from pipeline.acks import IDLE_PERSIST_SECONDS, UnackedBatch, settle_due, take_covered
from pipeline.worker import cut_short_by_stop


def test_work_cut_short_by_a_clean_stop_is_logged_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.worker"):
        assert cut_short_by_stop(SimpleNamespace(should_stop=True), "2 processed batches")
    assert "stopping: 2 processed batches were cut short" in caplog.text


def test_the_same_exception_while_running_is_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.worker"):
        assert not cut_short_by_stop(SimpleNamespace(should_stop=False), "2 processed batches")
    assert caplog.text == ""


def test_batches_are_acknowledged_in_order_once_the_slices_cover_them_the_newest_never() -> None:
    unacked = [UnackedBatch([f"m{i}"], position, float(i)) for i, position in enumerate([3, 3, 7, 9])]
    assert take_covered(unacked, 2) == [] and len(unacked) == 4
    assert [b.messages for b in take_covered(unacked, 6)] == [["m0"], ["m1"]]
    assert [b.position for b in unacked] == [7, 9]
    # The newest batch's last chunk may still be in flight: it waits for a persist of everything.
    assert [b.messages for b in take_covered(unacked, 100)] == [["m2"]] and len(unacked) == 1
    assert take_covered(unacked, 100) == []


def test_a_batch_that_changed_no_state_waits_until_a_batch_after_it_is_processed() -> None:
    """Only forwards and dead letters: its position is the one before it, already covered, but its sends
    are in flight until the next batch lands them."""
    unacked = [UnackedBatch(["changed a state"], 5, 0.0), UnackedBatch(["forwards only"], 5, 1.0)]
    assert [b.messages for b in take_covered(unacked, 5)] == [["changed a state"]]
    unacked.append(UnackedBatch(["next"], 6, 2.0))
    assert [b.messages for b in take_covered(unacked, 5)] == [["forwards only"]]


def _batch(ended: float) -> UnackedBatch:
    return UnackedBatch(["m"], 1, ended)


def test_a_pause_settles_everything_an_intake_empty_for_a_moment_does_not() -> None:
    """Under a steady load the intake is empty for a moment after most batches: no full persist then (the
    slices persist the states); once no batch came for IDLE_PERSIST_SECONDS, everything is persisted."""
    quiet = IDLE_PERSIST_SECONDS
    ended = 100.0
    unacked = [_batch(ended - 0.3), _batch(ended)]
    # just after a batch, with the intake empty: not yet
    assert not settle_due(unacked, True, ended + 0.01, 0.0, 5.0)
    assert not settle_due(unacked, True, ended + quiet * 0.9, 0.0, 5.0)
    # the input paused: everything
    assert settle_due(unacked, True, ended + quiet, 0.0, 5.0)
    # a batch being processed or messages waiting in the intake: not a pause, however long ago the last ended
    assert not settle_due(unacked, False, ended + 10 * quiet, 0.0, 5.0)
    # nothing unacknowledged: nothing to settle
    assert not settle_due([], True, ended + 100.0, 0.0, 5.0)
    # settled meanwhile (a persist after the last batch): not again before another quiet period
    assert not settle_due(unacked, True, ended + quiet, ended + quiet * 0.5, 5.0)


def test_slices_two_intervals_behind_settle_everything_even_under_load() -> None:
    unacked = [_batch(10.0), _batch(19.0)]
    assert not settle_due(unacked, False, 10.0 + 2 * 5.0 - 0.01, 0.0, 5.0)
    assert settle_due(unacked, False, 10.0 + 2 * 5.0, 0.0, 5.0)


def test_a_persist_interval_shorter_than_the_pause_bounds_it() -> None:
    """ENGAGEMENT_PERSIST_INTERVAL_SECONDS below IDLE_PERSIST_SECONDS bounds the pause too."""
    interval = IDLE_PERSIST_SECONDS / 4
    assert settle_due([_batch(50.0)], True, 50.0 + interval, 0.0, interval)
    assert not settle_due([_batch(50.0)], True, 50.0 + interval * 0.9, 0.0, interval)
