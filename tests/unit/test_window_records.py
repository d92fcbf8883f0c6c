"""A large open window is stored in a window record of its own (account_state.store_records), written only
when the window changed: a store must never miss a change, never name a record the store lacks, never leave
one unnamed, and a write cut short anywhere leaves the old state or the new one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import account_state
from pipeline.account_state import WINDOW_RECORD_IDS, AccountState, StoredRecords, WindowCounts, window_value
from pipeline.aggregator import Aggregator, DictStore, WindowConfig, response_candidate
from pipeline.events import Event
from pipeline.processor import StagedStore
from pipeline.state_records import Generations, Record, is_chunk_key, parse_chunk_key, segment_listing
from tests.unit.test_processor import FakeTable
from tests.unit.test_segments import write_cut_everywhere

T0 = 1_767_225_600_000  # a window start (60 s windows)
WINDOW_MS = 60_000


def large_window(tag: str = "e") -> WindowCounts:
    ids = {f"{tag}{i}" for i in range(WINDOW_RECORD_IDS)}
    return WindowCounts(likes=len(ids), engagers={f"u{i}" for i in range(5)}, ids=ids)


def store(state: AccountState, into: DictStore, generations: Generations) -> StoredRecords:
    """Store ``state`` as the aggregator does (one record when it needs no others)."""
    if not state.needs_records():
        records = StoredRecords(state.dumps(), [], [])
    else:
        records = state.store_records(generations, lambda g: into.has_segment("a", g))
    into.put("a", *records)
    return records


def load(from_store: DictStore) -> AccountState:
    return AccountState.loads(from_store.data["a"], lambda g: from_store.get_segment("a", g))


def named_exactly(from_store: DictStore, account: str = "a") -> bool:
    """Whether the store holds exactly the window and segment records the account's main record names."""
    held = {g for a, g in from_store.segments if a == account}
    return held == segment_listing(from_store.data[account])


def test_a_large_window_is_written_once_per_change() -> None:
    into, generations = DictStore(), Generations()
    window = large_window()
    state = AccountState(windows={T0: window, T0 + WINDOW_MS: WindowCounts(likes=1, engagers={"u"}, ids={"x"})})
    first = store(state, into, generations)
    assert len(first.segments) == 1 and first.replaced == []
    base = first.segments[0][0]
    assert orjson.loads(first.main)[0][0] == [T0, [base, 0]]  # named; the small one stays inline
    assert orjson.loads(first.segments[0][1]) == orjson.loads(orjson.dumps(window_value(T0, window)))
    assert load(into) == state
    again = store(state, into, generations)
    assert again.segments == [] and again.replaced == [] and again.main == first.main
    window.add_id("late")
    window.add_engager("u-late")
    window.add_engager("u0")  # an engager it has: not added
    window.likes += 1
    changed = store(state, into, generations)  # a delta: the counters and what was added, nothing deleted
    assert changed.replaced == [] and len(changed.segments) == 1
    delta = changed.segments[0][0]
    assert orjson.loads(changed.segments[0][1]) == [WINDOW_RECORD_IDS + 1, 0, 0, 0, 0, 0, ["u-late"], ["late"], []]
    assert delta == base + 1 and orjson.loads(changed.main)[0][0] == [T0, [base, 1]]  # a base and one delta
    assert load(into) == state and named_exactly(into)


def test_after_its_deltas_a_window_is_written_whole_again() -> None:
    """A window's records stay few: after WINDOW_DELTAS deltas, its next change writes it whole (a new
    base) and deletes the records before; a state reloaded from its records goes on with deltas. (A
    stopped clock: generations come only from the count, so a delta's must have been reserved.)"""
    into, generations = DictStore(), Generations(lambda: 1_000)
    window = large_window()
    state = AccountState(windows={T0: window})
    chain = [g for g, _ in store(state, into, generations).segments]
    for i in range(account_state.WINDOW_DELTAS):
        window.add_id(f"d{i}")
        chain += [g for g, _ in store(state, into, generations).segments]
    assert chain == list(range(chain[0], chain[0] + 1 + account_state.WINDOW_DELTAS))  # reserved by the base
    assert generations.next() > chain[-1] and load(into) == state  # nothing else was given those
    reloaded = load(into)  # as after a restart: its deltas go on from what is stored
    reloaded.windows[T0].add_id("after-reload")
    window.add_id("after-reload")
    records = store(reloaded, into, generations)
    assert sorted(records.replaced) == sorted(chain) and len(records.segments) == 1
    assert orjson.loads(records.segments[0][1])[0] == T0  # a base: the window whole
    assert load(into) == state and named_exactly(into)
    window = reloaded.windows[T0]
    window.add_id("next")
    assert [len(orjson.loads(v)) for _, v in store(reloaded, into, generations).segments] == [9]  # a delta again
    assert load(into) == reloaded and named_exactly(into)


def test_a_small_window_stays_in_the_main_record() -> None:
    state = AccountState(windows={T0: WindowCounts(likes=1, engagers={"u1"}, ids={"e1"})})
    assert not state.needs_records()
    assert AccountState.loads(state.dumps()) == state


def counted(event_id: str, counter: str, engager: str | None = None) -> Callable[[WindowCounts], None]:
    """An event the aggregator counts in a window: its id added, ``counter`` raised, and its actor among
    the engagers (likes, replies, mentions)."""

    def change(w: WindowCounts) -> None:
        w.add_id(event_id)
        setattr(w, counter, getattr(w, counter) + 1)
        if engager is not None:
            w.add_engager(engager)

    return change


def _followers_snapshot(w: WindowCounts) -> None:  # its id only: no counter moves
    w.add_id("snapshot-1")


def _response(w: WindowCounts) -> None:
    w.add_response("r-1")
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


def test_every_kind_of_change_is_written() -> None:
    """Each way the aggregator changes a window (aggregator.apply_event, _count_response) moves its size,
    so its record is written again."""
    for what, change in CHANGES.items():
        into, generations = DictStore(), Generations()
        window = large_window()
        state = AccountState(windows={T0: window})
        store(state, into, generations)
        change(window)
        assert len(store(state, into, generations).segments) == 1, what
        assert load(into) == state, what


def test_a_window_record_the_store_lost_is_written_again() -> None:
    """A changelog write drops the records of a partition not owned at that moment; if the partition comes
    back before the worker notices, its states believe their records stored. The next store writes any
    window record the store does not hold, so the main record never names a missing one."""
    into, generations = DictStore(), Generations()
    state = AccountState(windows={T0: large_window("a"), T0 + WINDOW_MS: large_window("b")})
    store(state, into, generations)
    lost = next(iter(into.segments))
    del into.segments[lost]
    assert len(store(state, into, generations).segments) == 1  # the lost one only
    assert load(into) == state and named_exactly(into)


def test_a_window_too_large_for_a_record_stays_in_the_main_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window record must stay under Kafka's record limit: a window larger than WINDOW_RECORD_BYTES goes
    in the main record (chunked when large), and the record it had is deleted."""
    into, generations = DictStore(), Generations()
    window = large_window()
    state = AccountState(windows={T0: window})
    store(state, into, generations)
    size = len(next(iter(into.segments.values())))
    monkeypatch.setattr(account_state, "WINDOW_RECORD_BYTES", size + 5)
    monkeypatch.setattr(account_state, "WINDOW_DELTAS", 0)  # every change writes the window whole
    for i in range(10):
        window.add_id(f"more{i}")
    records = store(state, into, generations)
    assert records.segments == [] and len(records.replaced) == 1 and not into.segments
    assert orjson.loads(records.main)[0][0][8]  # the window whole, its ids in the main record
    assert load(into) == state


def test_a_burst_too_large_for_a_delta_puts_the_window_in_the_main_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delta must stay under Kafka's record limit too: what a window gained between two stores (a burst
    on a popular account, a backlog replayed after a restart) larger than WINDOW_RECORD_BYTES is not a
    delta; the window is written whole, here in the main record (chunked when large), its records deleted."""
    into, generations = DictStore(), Generations()
    window = large_window()
    state = AccountState(windows={T0: window})
    store(state, into, generations)
    monkeypatch.setattr(account_state, "WINDOW_RECORD_BYTES", 2_000)
    for i in range(200):
        window.add_id(f"burst-{i:04d}")
        window.likes += 1
    records = store(state, into, generations)
    assert records.segments == [] and len(records.replaced) == 1 and not into.segments
    assert len(orjson.loads(records.main)[0][0][8]) == WINDOW_RECORD_IDS + 200  # the window whole, inline
    assert load(into) == state


def test_a_final_window_s_record_is_deleted_and_the_state_goes_back_to_one_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the aggregator: a window filled, events only in the next one (the first's record is not
    written again), a late event into the first (written again), then both final: no record left. (No
    journal here: its follows would begin one, tests/unit/test_journal.py.)"""
    monkeypatch.setattr(account_state, "JOURNAL_FROM", 10**9)
    into = DictStore()
    written: set[int] = set()  # generations of the window records stored so far (never reused)
    config = WindowConfig(window_ms=WINDOW_MS, lateness_ms=WINDOW_MS)
    aggregator = Aggregator(config, into, lambda account_id: 0)
    aggregator.assign({0})
    kinds = ("like", "reply", "mention", "follow")

    def apply(n: int, start: int) -> None:
        aggregator.apply_event(Event(f"e{n}", kinds[n % 4], start + n % 1000, f"u{n % 7}", "a", "p1"), 0)

    def persisted() -> AccountState:
        aggregator.take_rows()
        aggregator.persist()
        stored = load(into)
        assert stored.windows == aggregator._peek("a").windows and named_exactly(into)
        written.update(g for _, g in into.segments)
        return stored

    for n in range(WINDOW_RECORD_IDS + 5):
        apply(n, T0)
    persisted()
    assert len(written) == 1
    for n in range(1000, 1000 + WINDOW_RECORD_IDS):
        apply(n, T0 + WINDOW_MS)
        if n % 8 == 0:
            persisted()
    persisted()
    assert len(written) == 2  # the second window's, once it reached WINDOW_RECORD_IDS; the first's not again
    apply(2000, T0)  # late, into the first window
    assert "e2000" in persisted().windows[T0].ids and len(written) == 3
    aggregator.advance(0, T0 + 4 * WINDOW_MS)  # both windows final
    rows = aggregator.end_batch()
    assert sum(1 for row in rows if row.final) == 2
    aggregator.persist()
    assert not into.segments and not load(into).windows
    assert segment_listing(into.data["a"]) == frozenset()


@st.composite
def traffic(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Events over three accounts and four windows (duplicates, self events, responses, snapshots
    included), with persists, restarts from the store and advances of the frontier in between."""
    steps: list[tuple[str, Any]] = []
    accounts = ["a", "b", "c"]
    for n in range(draw(st.integers(1, 150))):
        roll = draw(st.integers(0, 19))
        if roll < 2:
            steps.append(("persist", None))
            continue
        if roll == 2:
            steps.append(("restart", None))
            continue
        if roll == 3:
            steps.append(("advance", T0 + draw(st.integers(0, 6 * WINDOW_MS))))
            continue
        kind = draw(st.sampled_from(["like", "reply", "mention", "follow", "unfollow", "followers"]))
        account = draw(st.sampled_from(accounts))
        actor = draw(st.sampled_from([*accounts, "u1", "u2", "u3"]))
        event_id = f"e{draw(st.integers(0, n))}"  # sometimes an id seen before: a duplicate
        ts = T0 + draw(st.integers(0, 4 * WINDOW_MS - 1))
        in_reply_to = f"e{draw(st.integers(0, n))}" if kind == "reply" else None
        followers = draw(st.integers(0, 1000)) if kind == "followers" else None
        if kind == "followers":
            actor = ""
        steps.append(("event", Event(event_id, kind, ts, actor, account, "p1", in_reply_to, followers)))
    return steps


def final_rows(
    steps: list[tuple[str, Any]],
    threshold: int,
    deltas: int = 16,
    journal_from: int = 10**9,
    journal_deltas: int = 16,
    segment_from: int = account_state.SEGMENT_FROM,
) -> list[tuple[Any, ...]]:
    """Run ``steps`` with window records from ``threshold`` ids, written whole again after ``deltas``
    deltas, a journal from ``journal_from`` ids, ledger entries and conversations, written whole again
    after ``journal_deltas``, and conversations in segments from ``segment_from``; after each persist,
    every stored state's windows, follower ledger and conversations are the live ones and the store holds
    exactly the records its main records name."""
    names = ("WINDOW_RECORD_IDS", "WINDOW_DELTAS", "JOURNAL_FROM", "JOURNAL_DELTAS", "SEGMENT_FROM")
    before = [getattr(account_state, name) for name in names]
    for name, value in zip(names, (threshold, deltas, journal_from, journal_deltas, segment_from), strict=True):
        setattr(account_state, name, value)
    try:
        into = DictStore()
        # Conversations kept two windows: the traffic spans four, so prunings drop some.
        config = WindowConfig(window_ms=WINDOW_MS, lateness_ms=WINDOW_MS, conversation_horizon_ms=2 * WINDOW_MS)
        aggregator = Aggregator(config, into, lambda account_id: 0)
        aggregator.assign({0})
        frontier = 0
        rows = []
        for step, value in [*steps, ("persist", None)]:
            if step == "event":
                aggregator.apply_event(value, 0)
                candidate = response_candidate(value)
                if candidate is not None and candidate.responder in ("a", "b", "c"):
                    aggregator.apply_response(candidate, 0)
                continue
            rows += aggregator.end_batch()
            if step == "advance":
                frontier = max(frontier, value)
                aggregator.advance(0, frontier)
                rows += aggregator.end_batch()
            elif step == "restart":  # a new process recovering the same store
                aggregator = Aggregator(config, into, lambda account_id: 0)
                aggregator.assign({0})
                aggregator.advance(0, frontier)
            for account in into.data:
                loaded, live = load_account(into, account), aggregator._peek(account)
                assert loaded.windows == live.windows and loaded.ledger == live.ledger
                assert loaded.conversations == live.conversations
                assert named_exactly(into, account)
        aggregator.flush()
        rows += aggregator.end_batch()
        return sorted(row.values() for row in rows if row.final)
    finally:
        for name, value in zip(names, before, strict=True):
            setattr(account_state, name, value)


def load_account(from_store: DictStore, account: str) -> AccountState:
    return AccountState.loads(from_store.data[account], lambda g: from_store.get_segment(account, g))


@settings(max_examples=60, deadline=None)
@given(traffic())
def test_window_records_change_no_result_whatever_the_traffic(steps: list[tuple[str, Any]]) -> None:
    """Every window in records (threshold 0; new bases after 2 deltas, and after 16) against none
    (threshold out of reach): the same final rows; and with records, after each persist, stored states
    equal live ones and no record is missing or left unnamed (end_batch persists: the aggregator's stores
    go through store_records)."""
    whole = final_rows(steps, 10**9)
    assert final_rows(steps, 0, deltas=2) == whole
    assert final_rows(steps, 0) == whole


@settings(max_examples=60, deadline=None)
@given(traffic())
def test_the_journal_changes_no_result_whatever_the_traffic(steps: list[tuple[str, Any]]) -> None:
    """The small windows, the ledger's entries and the conversations in a journal (from the first store,
    or from 4 ids, entries and conversations and ended under 1; new bases after 2 deltas), beside window
    records from 3 ids or none, conversations in segments or not (from 64),
    against neither: the same final rows, and after each persist stored states equal live ones with no
    record missing or left unnamed."""
    whole = final_rows(steps, 10**9)
    assert final_rows(steps, 10**9, journal_from=0, journal_deltas=2) == whole
    assert final_rows(steps, 3, deltas=2, journal_from=4, journal_deltas=2) == whole
    assert final_rows(steps, 10**9, journal_from=4) == whole
    assert final_rows(steps, 10**9, journal_from=4, journal_deltas=2, segment_from=4) == whole


def test_a_window_record_write_cut_short_anywhere_leaves_a_whole_state_and_no_unnamed_record() -> None:
    """Through the worker's store: a changed window's delta record goes with the chunks before the main
    record, the deletion of a final window's record after it; every prefix of the write leaves a state
    that loads whole, and the sweep deletes the rest."""

    def change(state: AccountState) -> None:
        del state.windows[T0]  # final
        state.windows[T0 + WINDOW_MS].add_id("b-late")
        state.windows[T0 + WINDOW_MS].likes += 1

    state = AccountState(windows={T0: large_window("a"), T0 + WINDOW_MS: large_window("b")})
    assert write_cut_everywhere(state, change, "a") == ["record", "main", "delete"]  # a delta; the final's base


def test_records_are_looked_up_again_only_after_a_write_lost_some() -> None:
    """A state names records stored before; looking each up at every store would cost an account with a
    week of conversations thousands of lookups a persist. The worker's store counts the writes whose
    changelog dropped segment records (records of a partition not owned at that moment): while that count
    does not move, a store looks nothing up; once it moved, every state looks its records up at its next
    store and writes again those lost, so a main record never names a missing one."""
    owned = {0}
    contents: dict[bytes, bytes] = {}

    async def changelog(phases: list[list[Record]]) -> Any:  # as the worker's: drops what it does not own
        for key, value, partition in (record for phase in phases for record in phase):
            if partition not in owned:
                continue
            if value is None:
                contents.pop(key, None)
            else:
                contents[key] = value
        return asyncio.gather()

    staged = StagedStore(FakeTable(), changelog, contents=contents)
    lookups: list[int] = []
    has_segment = staged.has_segment

    def counted(account_id: str, generation: int) -> bool:
        lookups.append(generation)
        return has_segment(account_id, generation)

    staged.has_segment = counted  # type: ignore[method-assign]
    aggregator = Aggregator(WindowConfig(window_ms=WINDOW_MS, lateness_ms=WINDOW_MS), staged, lambda a: 0)
    aggregator.assign({0})
    n = iter(range(10**6))

    def stored_after(*starts: int) -> AccountState:
        for start in starts:
            aggregator.apply_event(Event(f"e{next(n)}", "like", start, f"u{next(n) % 5}", "a", "p1"), 0)
        aggregator.take_rows()
        aggregator.persist()
        asyncio.run(_commit(staged))
        return AccountState.loads(contents[b"a"], lambda g: staged.get_segment("a", g))

    stored_after(*[T0] * WINDOW_RECORD_IDS)  # the first window: a record
    lookups.clear()
    stored_after(T0 + WINDOW_MS)  # the next window, small: the first's record is not looked up
    assert lookups == [] and staged.losses == 0
    owned.clear()  # the partition moves away and comes back before the worker notices
    stored_after(T0)  # the first window changed: its new record is dropped with the main record
    assert staged.losses == 1
    owned.add(0)
    recovered = stored_after(T0 + WINDOW_MS)  # losses moved: looked up, the lost record written again
    assert lookups and recovered.windows == aggregator._peek("a").windows
    assert segment_listing(contents[b"a"]) <= {parse_chunk_key(k)[0] for k in contents if is_chunk_key(k)}
    lookups.clear()
    stored_after(T0 + WINDOW_MS)
    assert lookups == []  # checked once after the loss, not again


async def _commit(staged: StagedStore) -> None:
    await (await staged.commit())


def test_a_delta_written_again_after_a_cut_short_write_is_not_swept() -> None:
    """A write cut short after its first phase leaves a window's new delta record as an orphan; the next
    owner reloads the state and its next delta takes the same generation (the one after the last
    listed). The sweep of orphans in that first commit must not delete it after the write stores it."""
    contents: dict[bytes, bytes] = {}

    def changelog(phases_kept: int) -> Callable[[list[list[Record]]], Any]:
        async def write(phases: list[list[Record]]) -> Any:
            for phase in phases[:phases_kept]:
                for key, value, _ in phase:
                    if value is None:
                        contents.pop(key, None)
                    else:
                        contents[key] = value
            return asyncio.gather()

        return write

    def grow(state: AccountState, tag: str, n: int) -> None:
        window = state.windows.setdefault(T0, WindowCounts())
        for i in range(n):
            window.add_id(f"{tag}{i}")
            window.likes += 1

    def stored(state: AccountState, staged: StagedStore, generations: Generations) -> None:
        staged.put("a", *state.store_records(generations, lambda g: staged.has_segment("a", g)))
        asyncio.run(_commit(staged))

    generations = Generations()
    staged = StagedStore(FakeTable(), changelog(3), contents=contents)
    state = AccountState()
    grow(state, "a", WINDOW_RECORD_IDS)
    stored(state, staged, generations)  # a base
    grow(state, "b", 3)
    staged.changelog = changelog(1)  # the worker dies once the delta record is acknowledged
    stored(state, staged, generations)
    orphan = segment_listing(contents[b"a"]) ^ {parse_chunk_key(k)[0] for k in contents if is_chunk_key(k)}
    assert len(orphan) == 1
    restarted = StagedStore(FakeTable(), changelog(3), contents=contents)
    restarted.sweep({0})  # on its assignment
    recovered = AccountState.loads(contents[b"a"], lambda g: restarted.get_segment("a", g))
    grow(recovered, "c", 3)
    stored(recovered, restarted, Generations())
    assert orphan <= segment_listing(contents[b"a"])  # the generation taken again, and named
    held = {parse_chunk_key(k)[0] for k in contents if is_chunk_key(k)}
    assert held == segment_listing(contents[b"a"])
    assert AccountState.loads(contents[b"a"], lambda g: restarted.get_segment("a", g)) == recovered
