"""A stored state's large windows keep their JSON between stores (account_state.encoded_window): the cache
must never hide a change, and never change what is stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import account_state
from pipeline.account_state import ENCODED_WINDOW_IDS, AccountState, WindowCounts, encoded_window
from pipeline.aggregator import Aggregator, DictStore, WindowConfig, response_candidate
from pipeline.events import Event

T0 = 1_767_225_600_000  # a window start (60 s windows)
WINDOW_MS = 60_000


def large_window() -> WindowCounts:
    ids = {f"e{i}" for i in range(ENCODED_WINDOW_IDS)}
    return WindowCounts(likes=len(ids), engagers={f"u{i}" for i in range(5)}, ids=ids)


def as_sets(window: list[object]) -> list[object]:
    return [set(v) if isinstance(v, list) else v for v in window]


def test_a_large_window_is_encoded_once_and_stored_the_same() -> None:
    window = large_window()
    state = AccountState(windows={T0: window})
    first = state.dumps()
    kept = window.encoded
    assert kept is not None
    assert state.dumps() == first  # the kept JSON, as stored before
    assert window.encoded is kept  # not encoded again
    assert AccountState.loads(first) == state


def test_a_small_window_keeps_nothing() -> None:
    window = WindowCounts(likes=1, engagers={"u1"}, ids={"e1"})
    state = AccountState(windows={T0: window})
    assert AccountState.loads(state.dumps()) == state
    assert window.encoded is None


def counted(event_id: str, counter: str, engager: str | None = None) -> Callable[[WindowCounts], None]:
    """An event the aggregator counts in a window: its id added, ``counter`` raised, and its actor among
    the engagers (likes, replies, mentions)."""

    def change(w: WindowCounts) -> None:
        w.ids.add(event_id)
        setattr(w, counter, getattr(w, counter) + 1)
        if engager is not None:
            w.engagers.add(engager)

    return change


def _followers_snapshot(w: WindowCounts) -> None:  # its id only: no counter moves
    w.ids.add("snapshot-1")


def _response(w: WindowCounts) -> None:
    w.response_ids.add("r-1")
    w.responses += 1


CHANGES: dict[str, Callable[[WindowCounts], None]] = {
    "a like": counted("like-1", "likes", "u-new"),
    "a like by an engager seen": counted("like-2", "likes", "u0"),
    "a reply": counted("reply-1", "replies", "u-new"),
    "a mention": counted("mention-1", "mentions", "u-new"),
    "a follow": counted("follow-1", "follows"),
    "an unfollow": counted("unfollow-1", "unfollows"),
    "a followers snapshot": _followers_snapshot,
    "a response": _response,
}


def test_every_kind_of_change_is_stored() -> None:
    """Each way the aggregator changes a window (aggregator.apply_event, _count_response) moves its size,
    so the kept JSON is replaced."""
    for what, change in CHANGES.items():
        window = large_window()
        state = AccountState(windows={T0: window})
        state.dumps()
        change(window)
        assert AccountState.loads(state.dumps()) == state, what


def test_an_unchanged_window_is_given_again_beside_a_changing_one() -> None:
    """Through the aggregator: a window filled, then events only in a newer one (the old one's JSON is
    given again), then a late event into the old one (encoded again); every stored state is the live one."""
    store = DictStore()
    aggregator = Aggregator(WindowConfig(), store, lambda account_id: 0)
    account = "acct"
    kinds = ("like", "reply", "mention", "follow")

    def apply(n: int, start: int) -> None:
        aggregator.apply_event(Event(f"e{n}", kinds[n % 4], start + n % 1000, f"u{n % 7}", account, "p1"), 0)

    def persisted() -> AccountState:
        aggregator.take_rows()
        aggregator.persist()
        raw = store.get(account)
        assert raw is not None
        stored = AccountState.loads(raw)
        assert stored.windows == aggregator._peek(account).windows
        return stored

    for n in range(ENCODED_WINDOW_IDS + 5):
        apply(n, T0)
    persisted()
    old = aggregator._peek(account).windows[T0]
    kept = old.encoded
    assert kept is not None
    for n in range(1000, 1010):
        apply(n, T0 + WINDOW_MS)
    persisted()
    assert old.encoded is kept  # given again, not encoded again
    apply(2000, T0)  # late, into the old window
    stored = persisted()
    assert old.encoded is not kept
    assert "e2000" in stored.windows[T0].ids


@st.composite
def traffic(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Events over three accounts and three windows (duplicates, self events, responses, snapshots
    included), with persists in between."""
    steps: list[tuple[str, Any]] = []
    accounts = ["a", "b", "c"]
    for n in range(draw(st.integers(1, 120))):
        if draw(st.integers(0, 9)) == 0:
            steps.append(("persist", None))
            continue
        kind = draw(st.sampled_from(["like", "reply", "mention", "follow", "unfollow", "followers"]))
        account = draw(st.sampled_from(accounts))
        actor = draw(st.sampled_from([*accounts, "u1", "u2", "u3"]))
        event_id = f"e{draw(st.integers(0, n))}"  # sometimes an id seen before: a duplicate
        ts = T0 + draw(st.integers(0, 3 * WINDOW_MS - 1))
        in_reply_to = f"e{draw(st.integers(0, n))}" if kind == "reply" else None
        followers = draw(st.integers(0, 1000)) if kind == "followers" else None
        if kind == "followers":
            actor = ""
        steps.append(("event", Event(event_id, kind, ts, actor, account, "p1", in_reply_to, followers)))
    return steps


@settings(max_examples=60, deadline=None)
@given(traffic())
def test_stored_states_equal_the_live_ones_whatever_the_traffic(steps: list[tuple[str, Any]]) -> None:
    """Every window kept (threshold 0): after each persist, each stored state's windows are the live ones."""
    threshold = account_state.ENCODED_WINDOW_IDS
    account_state.ENCODED_WINDOW_IDS = 0
    try:
        store = DictStore()
        aggregator = Aggregator(WindowConfig(), store, lambda account_id: 0)
        for step, event in [*steps, ("persist", None)]:
            if step == "event":
                aggregator.apply_event(event, 0)
                candidate = response_candidate(event)
                if candidate is not None and candidate.responder in ("a", "b", "c"):
                    aggregator.apply_response(candidate, 0)
                continue
            aggregator.take_rows()
            aggregator.persist()
            for account in ("a", "b", "c"):
                raw = store.get(account)
                if raw is not None:
                    assert AccountState.loads(raw).windows == aggregator._peek(account).windows
    finally:
        account_state.ENCODED_WINDOW_IDS = threshold


def test_encoded_window_gives_the_positional_layout() -> None:
    window = large_window()
    expected = [T0, window.likes, 0, 0, 0, 0, 0, window.engagers, window.ids, set()]
    assert as_sets(orjson.loads(orjson.dumps(encoded_window(T0, window)))) == expected
    small = WindowCounts(likes=1, engagers={"u"}, ids={"e"})
    assert as_sets(orjson.loads(orjson.dumps(encoded_window(T0, small)))) == [T0, 1, 0, 0, 0, 0, 0, {"u"}, {"e"}, set()]
