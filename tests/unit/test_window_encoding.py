"""A stored state's large windows keep their JSON between stores (account_state.encoded_window): the cache
must never hide a change, and never change what is stored."""

from __future__ import annotations

import orjson

from pipeline.account_state import ENCODED_WINDOW_IDS, AccountState, WindowCounts, encoded_window
from pipeline.aggregator import Aggregator, DictStore, WindowConfig
from pipeline.events import Event

T0 = 1_767_225_600_000  # a window start (60 s windows)


def large_window() -> WindowCounts:
    ids = {f"e{i}" for i in range(ENCODED_WINDOW_IDS)}
    return WindowCounts(likes=len(ids), engagers={f"u{i}" for i in range(5)}, ids=ids)


def stored_windows(state: AccountState) -> list[list[object]]:
    windows: list[list[object]] = orjson.loads(state.dumps())[0]
    return windows


def as_sets(window: list[object]) -> list[object]:
    return [set(v) if isinstance(v, list) else v for v in window]


def test_a_large_window_is_encoded_once_and_stored_the_same() -> None:
    window = large_window()
    state = AccountState(windows={T0: window})
    first = state.dumps()
    assert window.encoded is not None  # kept
    kept = window.encoded
    assert state.dumps() == first  # the kept JSON, as stored before
    assert window.encoded is kept  # not encoded again
    assert AccountState.loads(first) == state


def test_a_small_window_keeps_nothing() -> None:
    window = WindowCounts(likes=1, engagers={"u1"}, ids={"e1"})
    state = AccountState(windows={T0: window})
    assert AccountState.loads(state.dumps()) == state
    assert window.encoded is None


def test_every_kind_of_change_is_stored() -> None:
    """Each way the aggregator changes a window moves its size, so the kept JSON is replaced."""
    changes = {
        "a like": lambda w: (w.ids.add("like-1"), w.engagers.add("u-new"), setattr(w, "likes", w.likes + 1)),
        "a like by an engager seen": lambda w: (w.ids.add("like-2"), setattr(w, "likes", w.likes + 1)),
        "a reply": lambda w: (w.ids.add("reply-1"), setattr(w, "replies", w.replies + 1)),
        "a mention": lambda w: (w.ids.add("mention-1"), setattr(w, "mentions", w.mentions + 1)),
        "a follow": lambda w: (w.ids.add("follow-1"), setattr(w, "follows", w.follows + 1)),
        "an unfollow": lambda w: (w.ids.add("unfollow-1"), setattr(w, "unfollows", w.unfollows + 1)),
        "a response": lambda w: (w.response_ids.add("r-1"), setattr(w, "responses", w.responses + 1)),
    }
    for what, change in changes.items():
        window = large_window()
        state = AccountState(windows={T0: window})
        state.dumps()
        change(window)
        stored = AccountState.loads(state.dumps())
        assert stored == state, what
        assert stored.windows[T0] == window, what


def test_the_aggregators_stored_states_match_the_source_of_truth_as_windows_grow() -> None:
    """Through the aggregator: events into a large window between persists, each persisted state equal to
    the live one (the store's state is what a restart resumes from)."""
    store = DictStore()
    aggregator = Aggregator(WindowConfig(), store, lambda account_id: 0)
    account = "acct"
    n = 0
    for round_ in range(4):
        for _ in range(ENCODED_WINDOW_IDS // 2 + 3):
            n += 1
            kind = ("like", "reply", "mention", "follow")[n % 4]
            event = Event(f"e{n}", kind, T0 + n, f"u{n % 7}", account, "p1")
            aggregator.apply_event(event, 0)
        aggregator.take_rows()
        aggregator.persist()
        raw = store.get(account)
        assert raw is not None
        live = aggregator._peek(account)
        assert AccountState.loads(raw).windows == live.windows, round_
    assert len(AccountState.loads(raw).windows[T0 - T0 % 60_000].ids) == n


def test_encoded_window_gives_the_positional_layout() -> None:
    window = large_window()
    expected = [T0, window.likes, 0, 0, 0, 0, 0, window.engagers, window.ids, set()]
    assert as_sets(orjson.loads(orjson.dumps(encoded_window(T0, window)))) == expected
    small = WindowCounts(likes=1, engagers={"u"}, ids={"e"})
    assert as_sets(orjson.loads(orjson.dumps(encoded_window(T0, small)))) == [T0, 1, 0, 0, 0, 0, 0, {"u"}, {"e"}, set()]
    assert stored_windows(AccountState(windows={T0: window}))[0][0] == T0
