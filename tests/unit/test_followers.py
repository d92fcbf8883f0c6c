"""Follower counts at window end, and the ledger's folding that keeps state bounded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.followers import COUNT_WITHOUT_CACHE, FOLLOW, SNAPSHOT, UNFOLLOW, FollowerLedger, LedgerEntry


def ledger(*entries: LedgerEntry) -> FollowerLedger:
    result = FollowerLedger()
    for entry in entries:
        result.add(entry)
    return result


def test_no_snapshot_counts_all_follows() -> None:
    assert ledger((10, FOLLOW, 0, "a"), (20, FOLLOW, 0, "b"), (30, UNFOLLOW, 0, "c")).at(100) == 1


def test_latest_snapshot_before_end_wins_and_strict_bounds() -> None:
    book = ledger(
        (10, SNAPSHOT, 100, "s1"),
        (50, SNAPSHOT, 7, "s2"),
        (50, FOLLOW, 0, "f-at-snapshot"),  # same ts as the snapshot: not after it, ignored
        (60, FOLLOW, 0, "f"),
        (100, FOLLOW, 0, "f-at-end"),  # ts == end: not before it, ignored
    )
    assert book.at(50) == 100  # snapshot s2 is not before 50
    assert book.at(100) == 8


def test_never_below_zero() -> None:
    assert ledger((0, SNAPSHOT, 1, "s"), (5, UNFOLLOW, 0, "u1"), (6, UNFOLLOW, 0, "u2")).at(10) == 0


def test_snapshot_tie_breaks_on_event_id() -> None:
    assert ledger((5, SNAPSHOT, 1, "b"), (5, SNAPSHOT, 9, "a")).at(10) == 1
    assert ledger((5, SNAPSHOT, 9, "a"), (5, SNAPSHOT, 1, "b")).at(10) == 1


entries = st.lists(
    st.tuples(
        st.integers(0, 200),
        st.sampled_from([SNAPSHOT, FOLLOW, UNFOLLOW]),
        st.integers(0, 50),
        st.text(alphabet="abc", min_size=1, max_size=2),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(entries, st.integers(0, 200), st.lists(st.integers(1, 260), min_size=1, max_size=5))
def test_folding_never_changes_a_later_count(raw: list[LedgerEntry], fold_at: int, ends: list[int]) -> None:
    items = [(ts, kind, value if kind == SNAPSHOT else 0, eid) for ts, kind, value, eid in raw]
    whole = ledger(*items)
    folded = ledger(*items)
    folded.fold(fold_at)
    for end in ends:
        if end > fold_at:
            assert folded.at(end) == whole.at(end)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "fold", "at"]), entries, st.sampled_from([5, 60, 120, 180, 240, 260])),
        max_size=25,
    )
)
def test_a_count_given_again_is_the_count_now(steps: list[tuple[str, list[LedgerEntry], int]]) -> None:
    """at() keeps the counts it gave until the entries change: whatever the adds and folds in between,
    it gives what the entries say now (a fresh ledger of the same entries). A few ends, so that each is
    asked for again after entries changed."""
    kept = FollowerLedger()
    for step, raw, value in steps:
        if step == "add":
            for ts, kind, count, eid in raw[:3]:
                kept.add((ts, kind, count if kind == SNAPSHOT else 0, eid))
        elif step == "fold":
            kept.fold(value)
        elif value > kept.folded_until:
            fresh = FollowerLedger(kept.base, kept.folded_until, list(kept.entries))
            assert kept.at(value) == fresh.at(value)
            assert kept.at(value) == fresh.at(value)  # given again


@pytest.mark.parametrize("size", [COUNT_WITHOUT_CACHE, COUNT_WITHOUT_CACHE + 1, 4 * COUNT_WITHOUT_CACHE])
def test_short_and_long_ledgers_count_alike_and_a_long_ones_cache_follows_its_adds(size: int) -> None:
    """Up to COUNT_WITHOUT_CACHE entries, at() scans them at each call; above, it caches counts by end.
    Either way a count is what the entries say now."""
    kept = FollowerLedger(5)
    for i in range(size):
        kept.add((10 * i, FOLLOW if i % 3 else UNFOLLOW, 0, f"f{i}"))
    ends = [15, 10 * size, 10 * size + 5]
    first = [kept.at(end) for end in ends]
    assert first == [kept.at(end) for end in ends]  # given again
    assert first == [FollowerLedger(5, -1, list(kept.entries)).at(end) for end in ends]
    kept.add((12, FOLLOW, 0, "late"))  # before every end asked
    assert [kept.at(end) for end in ends] == [n + 1 for n in first]
    assert (kept.counted is not None) == (len(kept.entries) > COUNT_WITHOUT_CACHE)
