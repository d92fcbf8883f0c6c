"""Window math and the aggregator's definitions, then equality with the reference on random streams."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.account_state import AccountState
from pipeline.aggregator import Aggregator, DictStore, Outcome, ResponseCandidate, VersionClock, WindowConfig
from pipeline.events import Event
from pipeline.partitioning import account_partitioner
from pipeline.reference import reference_rows
from tests.unit.streamsim import run_stream

CFG = WindowConfig(window_ms=60_000, lateness_ms=120_000, conversation_horizon_ms=3_600_000)
T0 = 1_767_225_600_000


def ev(eid: str, kind: str, sec: float, actor: str, account: str, **kw: object) -> Event:
    return Event(eid, kind, T0 + int(sec * 1000), actor, account, **kw)  # type: ignore[arg-type]


def rows_of(events: list[Event]) -> dict[tuple[str, int], tuple[object, ...]]:
    latest, _, _ = run_stream(events, CFG)
    return {k: r.values() for k, r in latest.items()}


def test_window_start_aligned_to_epoch() -> None:
    assert CFG.window_start(T0 + 59_999) == T0
    assert CFG.window_start(T0 + 60_000) == T0 + 60_000
    assert WindowConfig(window_ms=7_000).window_start(13_999) == 7_000


def test_counts_engagers_score_and_rate() -> None:
    rows = rows_of(
        [
            ev("s", "followers", 0, "", "A", followers=10),
            ev("1", "like", 1, "u1", "A"),
            ev("2", "like", 2, "u1", "A"),
            ev("3", "reply", 3, "u2", "A"),
            ev("4", "mention", 4, "u3", "A"),
            ev("5", "follow", 5, "u9", "A"),
        ]
    )
    row = rows[("A", T0)]
    # likes, replies, mentions, engagers, follows, unfollows, followers, responses, score, rate, final
    assert row[3:] == (2, 1, 1, 3, 1, 0, 11, 0, 2 + 3 + 2, 3 / 11, 1)


def test_self_engagement_and_duplicates_are_ignored() -> None:
    events = [ev("1", "like", 1, "A", "A"), ev("2", "like", 2, "u", "A"), ev("2", "like", 2, "u", "A")]
    latest, _, outcomes = run_stream(events, CFG)
    assert Outcome.SELF in outcomes and Outcome.DUPLICATE in outcomes
    assert latest[("A", T0)].likes == 1


def test_response_counts_whichever_arrives_first() -> None:
    question = ev("q", "mention", 10, "u", "A")
    answer = ev("r", "reply", 70, "A", "u", in_reply_to="q")
    for order in ([question, answer], [answer, question]):
        rows = rows_of(order)
        assert rows[("A", T0 + 60_000)][10] == 1  # responses in the window of the reply
        assert rows[("u", T0 + 60_000)][4] == 1  # and the reply is an inbound reply to u


def test_a_waiting_response_matched_past_the_lateness_opens_no_window() -> None:
    """A reply waits for the conversation it answers; that arrives after the frontier passed the reply's
    window and the lateness. The reply is then unmatched, as it would be had it arrived last (LATE): no
    window opens behind the frontier (found by test_window_records: the reopened window was finalized
    after a restart, but not in the state stored before it)."""
    agg = Aggregator(CFG, DictStore(), lambda a: 0)
    agg.assign({0})
    assert agg.apply_response(ResponseCandidate("r", "A", "q", T0 + 10_000), 0) is Outcome.PENDING
    agg.advance(0, T0 + 60_000 + CFG.lateness_ms)  # the reply's window is past the lateness
    assert agg.apply_event(ev("q", "mention", 185, "u", "A"), 0) is Outcome.COUNTED
    assert T0 not in agg._peek("A").windows and agg.unmatched_responses == 1
    rows = agg.end_batch()
    assert [(r.account_id, r.window_start, r.responses) for r in rows] == [("A", T0 + 180_000, 0)]


def test_reply_to_a_like_or_to_own_post_is_not_a_response() -> None:
    rows = rows_of([ev("l", "like", 1, "u", "A"), ev("r", "reply", 2, "A", "u", in_reply_to="l")])
    assert rows[("A", T0)][10] == 0


def test_late_follow_re_emits_later_windows() -> None:
    events = [
        ev("s", "followers", 0, "", "A", followers=5),
        ev("1", "like", 65, "u", "A"),
        ev("2", "like", 125, "u", "A"),
        ev("f", "follow", 30, "x", "A"),  # arrives after the later windows were emitted
    ]
    latest, written, _ = run_stream(events, CFG, batch=1)
    assert latest[("A", T0 + 60_000)].followers == 6
    assert latest[("A", T0 + 120_000)].followers == 6
    assert next(r.followers for r in written if r.window_start == T0 + 120_000) == 5


def test_late_events_are_reported_and_not_counted() -> None:
    agg = Aggregator(CFG, DictStore(), lambda a: 0)
    agg.assign({0})
    assert agg.apply_event(ev("1", "like", 0, "u", "A"), 0) is Outcome.COUNTED
    agg.advance(0, T0 + 60_000 + CFG.lateness_ms)
    rows = agg.end_batch()
    assert [(r.window_start, r.final) for r in rows] == [(T0, 1)]
    assert agg.apply_event(ev("2", "like", 30, "u", "A"), 0) is Outcome.LATE
    assert agg.apply_event(ev("3", "like", 61, "u", "A"), 0) is Outcome.COUNTED


def test_final_rows_have_higher_versions_than_upserts() -> None:
    latest, written, _ = run_stream([ev("1", "like", 1, "u", "A"), ev("2", "like", 2, "v", "A")], CFG, batch=1)
    final = latest[("A", T0)]
    assert final.final == 1 and final.likes == 2
    assert all(r.version < final.version for r in written if r is not final)


def test_state_survives_a_store_round_trip_mid_stream() -> None:
    store = DictStore()
    agg = Aggregator(CFG, store, lambda a: 0)
    agg.assign({0})
    agg.apply_event(ev("q", "mention", 1, "u", "A"), 0)
    agg.apply_event(ev("1", "like", 2, "u2", "A"), 0)
    agg.end_batch()
    restarted = Aggregator(CFG, store, lambda a: 0)  # a new process recovering the same table
    restarted.assign({0})
    assert restarted.apply_event(ev("1", "like", 2, "u2", "A"), 0) is Outcome.DUPLICATE
    assert restarted.apply_response(ResponseCandidate("r", "A", "q", T0 + 5000), 0) is Outcome.COUNTED
    restarted.flush()
    rows = {r.window_start: r for r in restarted.end_batch()}
    assert rows[T0].likes == 1 and rows[T0].mentions == 1 and rows[T0].responses == 1 and rows[T0].final == 1


def test_finalized_state_is_pruned() -> None:
    store = DictStore()
    agg = Aggregator(CFG, store, lambda a: 0)
    agg.assign({0})
    agg.apply_event(ev("s", "followers", 0, "", "A", followers=3), 0)
    agg.apply_event(ev("f", "follow", 1, "x", "A"), 0)
    agg.advance(0, T0 + 10 * 3_600_000)
    agg.end_batch()
    from pipeline.account_state import AccountState

    state = AccountState.loads(store.data["A"])
    assert state.windows == {} and state.ledger.entries == [] and state.ledger.base == 4


# -- equality with the reference on random streams -------------------------------------------------

ACCOUNTS = ["A", "B", "o'q\\🙂", "D"]
USERS = [*ACCOUNTS, "u1", "u2", "u3"]


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    n = draw(st.integers(1, 60))
    events: list[Event] = []
    clock = 0
    for i in range(n):
        clock += draw(st.integers(0, 20_000))
        kind = draw(st.sampled_from(["like", "like", "reply", "mention", "follow", "unfollow", "followers"]))
        account = draw(st.sampled_from(ACCOUNTS))
        actor = "" if kind == "followers" else draw(st.sampled_from(USERS))
        in_reply_to = None
        if kind == "reply" and events and draw(st.booleans()):
            in_reply_to = draw(st.sampled_from(events)).event_id
        followers = draw(st.integers(0, 20)) if kind == "followers" else None
        events.append(Event(f"e{i}", kind, T0 + clock, actor, account, None, in_reply_to, followers))
    # duplicates and bounded disorder (less than the allowed lateness)
    rnd = random.Random(draw(st.integers(0, 10**6)))
    events += [rnd.choice(events) for _ in range(draw(st.integers(0, 5)))]
    keyed = sorted(events, key=lambda e: e.ts_ms + rnd.randint(0, 100_000))
    return keyed


@settings(max_examples=400, deadline=None)
@given(streams(), st.integers(1, 9), st.integers(1, 4))
def test_stream_equals_reference(events: list[Event], batch: int, partitions: int) -> None:
    latest, _, _ = run_stream(events, CFG, partitions=partitions, batch=batch)
    assert {k: r.values() for k, r in latest.items()} == reference_rows(events, CFG)


def throttled(store: Any = None, cache_accounts: int = 100_000) -> tuple[Aggregator, list[float]]:
    """An aggregator owning partition 0 that upserts an open window at most every 2 s of ``clock[0]``."""
    clock = [0.0]
    agg = Aggregator(
        CFG,
        DictStore() if store is None else store,
        lambda a: 0,
        upsert_interval_s=2.0,
        monotonic=lambda: clock[0],
        cache_accounts=cache_accounts,
    )
    agg.assign({0})
    return agg, clock


def test_open_window_upserts_are_throttled_and_catch_up() -> None:
    agg, clock = throttled()
    agg.apply_event(ev("1", "like", 1, "u1", "A"), 0)
    assert [r.likes for r in agg.end_batch()] == [1]
    clock[0] = 1.0
    agg.apply_event(ev("2", "like", 2, "u2", "A"), 0)
    assert agg.end_batch() == [] and agg.has_deferred_upserts  # too soon: waits
    clock[0] = 2.5
    assert [r.likes for r in agg.end_batch()] == [2] and not agg.has_deferred_upserts
    agg.apply_event(ev("3", "like", 3, "u3", "A"), 0)
    agg.flush()
    rows = agg.end_batch()
    assert [(r.likes, r.final) for r in rows] == [(3, 1)]  # finalization is never throttled


class CountingStore:
    """A DictStore that lists the accounts put (wraps it: the compiled DictStore is not subclassable)."""

    def __init__(self) -> None:
        self.inner = DictStore()
        self.data = self.inner.data
        self.puts: list[str] = []

    def get(self, account_id: str) -> bytes | None:
        return self.inner.get(account_id)

    def accounts(self) -> Iterable[str]:
        return self.inner.accounts()

    def get_segment(self, account_id: str, generation: int) -> bytes:
        return self.inner.get_segment(account_id, generation)

    def has_segment(self, account_id: str, generation: int) -> bool:
        return self.inner.has_segment(account_id, generation)

    def put(
        self, account_id: str, value: bytes, segments: Sequence[tuple[int, bytes]] = (), replaced: Sequence[int] = ()
    ) -> None:
        self.puts.append(account_id)
        self.inner.put(account_id, value, segments, replaced)


def test_states_are_persisted_once_per_change_not_per_row_taken() -> None:
    store = CountingStore()
    agg, clock = throttled(store)
    agg.apply_event(ev("1", "like", 1, "u1", "A"), 0)
    agg.apply_event(ev("2", "like", 2, "u2", "A"), 0)
    assert len(agg.take_rows()) == 1 and store.puts == []  # rows come out before the state is written
    agg.apply_event(ev("3", "like", 3, "u3", "A"), 0)
    assert agg.take_rows() == []  # throttled
    agg.persist()
    assert store.puts == ["A"]  # once for the three events
    clock[0] = 3.0
    assert [r.likes for r in agg.end_batch()] == [3]  # the deferred upsert: the state did not change
    assert store.puts == ["A"]


def test_a_persist_in_slices_stores_the_oldest_touches_and_numbers_them() -> None:
    store = CountingStore()
    agg = Aggregator(CFG, store, lambda a: 0)
    agg.assign({0})
    for i, account in enumerate("ABCDE"):
        agg.apply_event(ev(str(i), "like", 1, "u", account), 0)
    agg.take_rows()
    assert (agg.stored_position, agg.touch_position) == (0, 5)
    agg.apply_event(ev("a2", "like", 2, "u2", "A"), 0)  # A changes again: still the same touch
    assert agg.touch_position == 5
    agg.take_rows()
    agg.persist_oldest(2)
    assert store.puts == ["A", "B"] and (agg.stored_position, agg.touch_position) == (2, 5)
    assert AccountState.loads(store.get("A") or b"").windows[T0].likes == 2
    agg.apply_event(ev("a3", "like", 3, "u3", "A"), 0)  # a new touch, after the others
    agg.apply_event(ev("c2", "like", 3, "u3", "C"), 0)  # C is still touched: no new one
    assert agg.touch_position == 6
    # C, D, E. C changed since the last take_rows: its next changes skip _state(), so it is touched
    # again at once (a new touch, after A's).
    agg.persist_oldest(3)
    assert store.puts == ["A", "B", "C", "D", "E"] and (agg.stored_position, agg.touch_position) == (5, 7)
    agg.apply_event(ev("a4", "like", 4, "u4", "A"), 0)
    agg.persist_oldest(10)  # more than are touched: all of them
    assert store.puts[-2:] == ["A", "C"] and AccountState.loads(store.get("A") or b"").windows[T0].likes == 4
    assert agg.stored_position == 7


def test_a_state_stored_by_a_slice_and_evicted_is_read_back_as_stored() -> None:
    store = DictStore()
    agg = Aggregator(CFG, store, lambda a: 0, cache_accounts=1)
    agg.assign({0})
    agg.apply_event(ev("1", "like", 1, "u1", "A"), 0)
    agg.apply_event(ev("2", "like", 1, "u1", "B"), 0)
    agg.take_rows()
    agg.persist_oldest(1)  # A stored; the live cache keeps B only: A is no longer held
    assert agg.apply_event(ev("1", "like", 1, "u1", "A"), 0) is Outcome.DUPLICATE
    agg.apply_event(ev("3", "like", 1, "u2", "A"), 0)
    agg.persist()
    assert AccountState.loads(store.get("A") or b"").windows[T0].likes == 2


def test_upsert_bookkeeping_only_holds_the_last_interval() -> None:
    agg, clock = throttled()
    for i in range(50):
        agg.apply_event(ev(str(i), "like", 1, "u", f"A{i}"), 0)
    assert len(agg.end_batch()) == 50 and len(agg._upserts) == 50
    clock[0] = 1.0
    agg.apply_event(ev("x", "like", 2, "u", "A0"), 0)
    assert agg.end_batch() == [] and len(agg._upserts) == 50  # still throttling
    clock[0] = 2.0
    assert [r.account_id for r in agg.end_batch()] == ["A0"]
    assert [(a, s) for _, a, s, _ in agg._upserts] == [("A0", T0)]  # the other 49 throttle nothing any more


def test_a_waiting_change_of_an_evicted_state_is_upserted_from_the_state_read_back() -> None:
    agg, clock = throttled(cache_accounts=1)
    agg.apply_event(ev("1", "like", 1, "u1", "A"), 0)
    assert [r.likes for r in agg.end_batch()] == [1]
    clock[0] = 1.0
    agg.apply_event(ev("2", "like", 2, "u2", "A"), 0)
    assert agg.end_batch() == [] and agg.has_deferred_upserts  # A's change waits; A is stored
    agg.apply_event(ev("3", "like", 1, "u3", "B"), 0)  # B pushes A out of the live cache
    assert [r.account_id for r in agg.end_batch()] == ["B"]
    clock[0] = 2.0
    assert [(r.account_id, r.likes) for r in agg.end_batch()] == [("A", 2)]  # from the state read back
    assert not agg.has_deferred_upserts


def test_a_window_final_while_its_change_waits_is_written_once_final() -> None:
    agg, clock = throttled()
    agg.apply_event(ev("1", "like", 1, "u1", "A"), 0)
    assert len(agg.take_rows()) == 1
    clock[0] = 1.0
    agg.apply_event(ev("2", "like", 2, "u2", "A"), 0)
    assert agg.take_rows() == [] and agg.has_deferred_upserts
    agg.flush()  # final now: its final row carries the waiting change
    assert [(r.likes, r.final) for r in agg.take_rows()] == [(2, 1)] and not agg.has_deferred_upserts
    clock[0] = 5.0
    assert agg.take_rows() == []  # the upsert's interval ended: nothing waits any more


def test_rows_taken_together_have_strictly_increasing_versions_after_every_earlier_row() -> None:
    agg, _ = throttled()
    for i in range(5):
        agg.apply_event(ev(str(i), "like", 1, "u", f"A{i}"), 0)
    first = agg.take_rows()
    agg.flush()
    final = agg.take_rows()
    versions = [r.version for r in first + final]
    assert len(first) == 5 and len(final) == 5
    assert versions == sorted(versions) and len(set(versions)) == 10


def test_a_run_of_versions_is_consecutive_and_after_every_version_given_even_with_a_stopped_clock() -> None:
    clock = VersionClock(lambda: 1_000)
    assert clock.next() == 1_000
    assert clock.run_of(5) == 1_001  # 1,001-1,005
    assert clock.next() == 1_006
    assert clock.run_of(0) == 1_007 and clock.next() == 1_008  # an empty run still moves past its first
    later = VersionClock(lambda: 5_000)
    later.run_of(3)
    assert later.next() == 5_003


def test_windows_finalize_by_end_then_account() -> None:
    agg = Aggregator(CFG, DictStore(), lambda a: 0)
    agg.assign({0})
    for i, (account, sec) in enumerate([("B", 61), ("A", 61), ("C", 1), ("B", 1), ("A", 121)]):
        agg.apply_event(ev(str(i), "like", sec, "u", account), 0)
    agg.end_batch()
    agg.advance(0, T0 + 120_000 + CFG.lateness_ms)
    assert [(r.account_id, r.window_start - T0, r.final) for r in agg.end_batch()] == [
        ("B", 0, 1),
        ("C", 0, 1),
        ("A", 60_000, 1),
        ("B", 60_000, 1),
    ]
    agg.flush()
    assert [(r.account_id, r.window_start - T0) for r in agg.end_batch()] == [("A", 120_000)]


def test_stored_state_is_allocated_at_its_size() -> None:
    import tracemalloc

    from pipeline.account_state import AccountState

    state = AccountState()
    tracemalloc.start()
    try:
        raw = state.dumps()
        allocated, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert AccountState.loads(raw) == state
    assert allocated < 512  # not orjson's 4 KiB output buffer, kept per account in the table


def test_replays_of_stored_positions_are_skipped_and_positions_are_stored_with_the_state() -> None:
    from pipeline.account_state import AccountState, input_position

    store = DictStore()
    agg = Aggregator(CFG, store, lambda account: 0)
    first, second = input_position(7, 0), input_position(7, 1)
    assert agg.apply_event(ev("e1", "like", 0, "u1", "A"), 0, "likes:0", first) is Outcome.COUNTED
    assert agg.apply_event(ev("e2", "like", 1, "u2", "A"), 0, "likes:0", second) is Outcome.COUNTED  # same message
    agg.end_batch()
    assert AccountState.loads(store.data["A"]).applied == {"likes:0": second}
    resumed = Aggregator(CFG, store, lambda account: 0)
    assert resumed.apply_event(ev("e1", "like", 0, "u1", "A"), 0, "likes:0", first) is Outcome.REPLAYED
    assert resumed.apply_event(ev("e9", "like", 2, "u9", "A"), 0, "likes:1", first) is Outcome.COUNTED  # elsewhere
    assert resumed.apply_event(ev("e3", "like", 3, "u3", "A"), 0, "likes:0", input_position(8, 0)) is Outcome.COUNTED


def test_states_stored_before_positions_existed_still_load() -> None:
    from pipeline.account_state import AccountState

    legacy = b'[[[1767225600000,1,0,0,0,0,0,["u1"],["e1"],[]]],-1,{},{},0,-1,[]]'
    state = AccountState.loads(legacy)
    assert state.applied == {} and state.windows[1767225600000].likes == 1


def test_a_pending_decay_round_trips_and_the_previous_layout_still_reads_the_state() -> None:
    """``DropState.decay`` is stored apart from the drop list, so a worker of the release before it (whose
    reader takes fields 0-8 and exactly six drop fields) reads states written during a rolling update."""
    import orjson

    from pipeline.account_state import AccountState
    from pipeline.drops import DropState

    state = AccountState(drop=DropState(baseline=3.5, entered=40, last_end=600_000, decay=17))
    raw = state.dumps()
    assert AccountState.loads(raw) == state
    fields = orjson.loads(raw)
    baseline, entered, _below, _silent, _in_drop, last_end = fields[8]  # the previous release's unpacking
    assert (baseline, entered, last_end) == (3.5, 40, 600_000) and fields[9] == 17
    assert AccountState.loads(orjson.dumps(fields[:9])).drop == DropState(3.5, 40, 0, 0, False, 600_000)


def test_silence_after_a_restart_is_stored_once_and_never_raised_twice() -> None:
    """Silence observed on an account whose state is not cached (after assign(), or evicted) is applied to
    the state that gets persisted: the drop is stored, counted once, and not raised again later."""
    from pipeline.drops import DropConfig, DropDetector

    window = CFG.window_ms
    detector = DropDetector(DropConfig(window_ms=window, half_life_windows=1.0, warmup_windows=3, min_baseline=1.0))
    store = DictStore()

    def aggregator() -> Aggregator:
        agg = Aggregator(CFG, store, lambda account: 0, detector=detector, cache_accounts=1)
        agg.assign({0})
        return agg

    agg = aggregator()
    for k in range(5):  # windows 0-4 of A with 5 likes each; B keeps event time moving
        for i in range(5):
            agg.apply_event(ev(f"a{k}-{i}", "like", k * 60 + i, f"u{i}", "A"), 0)
    agg.advance(0, T0 + 5 * window + CFG.lateness_ms)
    agg.end_batch()
    assert agg.take_alerts() == [] and agg.accounts_in_drop == 0

    agg = aggregator()  # a restart: nothing cached
    agg.apply_event(ev("b", "like", 20 * 60, "u", "B"), 0)
    agg.advance(0, T0 + 20 * window + CFG.lateness_ms)  # windows 5-19 of A final without events
    alerts = agg.take_alerts()
    assert [(a.account_id, (a.window_start - T0) // window, a.state, a.reason) for a in alerts] == [
        ("A", 7, "firing", "silence")
    ]
    assert agg.accounts_in_drop == 1
    agg.end_batch()

    agg = aggregator()
    assert agg.accounts_in_drop == 1  # stored in a drop
    assert agg.apply_event(ev("late", "like", 10 * 60, "u", "A"), 0) == Outcome.LATE  # silent windows are final
    for i in range(5):
        agg.apply_event(ev(f"back-{i}", "like", 21 * 60 + i, f"u{i}", "A"), 0)
    agg.advance(0, T0 + 22 * window + CFG.lateness_ms)
    assert [(a.state, (a.window_start - T0) // window) for a in agg.take_alerts()] == [("resolved", 21)]
    assert agg.accounts_in_drop == 0


def _apply_message(
    agg: Aggregator, events: Sequence[Event], owner: Callable[[str], int], partition: int = 1
) -> tuple[object, ...]:
    kinds: dict[str, int] = {}
    candidates: list[ResponseCandidate] = []
    raw: list[Event] = []
    foreign: list[int] = []
    others: list[tuple[int, Outcome]] = []
    watermark, counted = agg.apply_message(
        events,
        ("likes", partition, 40),
        "likes:1",
        4000,
        T0 + 10**9,
        owner,
        -1,
        kinds,
        candidates,
        raw,
        foreign,
        others,
    )
    return watermark, counted, kinds, candidates, raw, foreign, others


def test_apply_message_counts_types_by_runs_and_calls_either_kind_of_owner() -> None:
    """Kinds are counted by runs of one type (by identity): runs that alternate, and equal types that are
    distinct strings (as an interpreted caller may build them), count the same. The partitioner's own
    class (called natively) and any callable with the same answers give the same result."""
    owners = account_partitioner(2)
    home = owners("a1")
    away = next(f"a{i}" for i in range(2, 50) if owners(f"a{i}") != home)
    events = [
        ev("e1", "like", 1, "u1", "a1"),
        ev("e2", "like", 2, "u2", away),
        ev("e3", "".join(["fol", "low"]), 3, "u3", "a1"),  # "follow", not the interned string
        ev("e4", "follow", 4, "u4", away),
        ev("e5", "like", 5, "u5", "a1"),
        ev("e6", "reply", 6, "u6", away, in_reply_to="x"),
        ev("e7", "like", 7, "a1", "a1"),  # self
        ev("e8", "like", 8, "u8", "a1"),
    ]
    native = _apply_message(Aggregator(CFG, DictStore(), owners), events, owners, home)
    plain = _apply_message(Aggregator(CFG, DictStore(), owners), events, lambda a: owners(a), home)
    assert native == plain
    watermark, counted, kinds, candidates, raw, foreign, others = native
    assert kinds == {"like": 5, "follow": 2, "reply": 1} and watermark == T0 + 8000
    assert foreign == [1, 3, 5]  # re-keyed to the owner, whose partition applies them
    assert others == [(6, Outcome.SELF)]
    assert candidates == [ResponseCandidate("e6", "u6", "x", T0 + 6000)]  # whoever owns the account
    assert raw == [e for i, e in enumerate(events) if i not in foreign]  # their source is the caller's to note
    assert counted == 4


def test_apply_message_applies_as_apply_event_does() -> None:
    """The per-event loop (the message's frontier read once) gives the outcomes and rows that applying
    each event on its own gives, late events included."""
    events = [ev(f"e{i}", "like", i * 50, f"u{i % 5}", f"a{i % 3}") for i in range(12)] + [
        ev("old", "like", 1, "u9", "a0"),
        ev("dup", "like", 500, "u1", "a1"),
        ev("dup", "like", 500, "u1", "a1"),
    ]
    one, each = Aggregator(CFG, DictStore(), lambda a: 1), Aggregator(CFG, DictStore(), lambda a: 1)
    for agg in (one, each):
        agg.advance(1, T0 + 400_000)
    *_, others = _apply_message(one, events, lambda a: 1)
    outcomes = [each.apply_event(e, 1, "likes:1", 4000 + i) for i, e in enumerate(events)]
    assert others == [(i, o) for i, o in enumerate(outcomes) if o is not Outcome.COUNTED]
    assert Outcome.LATE in outcomes and Outcome.DUPLICATE in outcomes
    assert [r._replace(version=0) for r in one.take_rows()] == [r._replace(version=0) for r in each.take_rows()]
