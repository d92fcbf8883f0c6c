"""An account's small windows and follower ledger entries are kept in its journal (account_state.Journal)
once they hold JOURNAL_FROM ids and entries: a base record, then a delta per store that changed them. A
store must write each id and entry about once, never miss a change, never name a record the store lacks,
and a write cut short anywhere leaves the old state or the new one. (Whatever the traffic, through the
aggregator: tests/unit/test_window_records.py, ``test_the_journal_changes_no_result_whatever_the_traffic``.)"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from pipeline import account_state
from pipeline.account_state import (
    JOURNAL_DELTAS,
    JOURNAL_FROM,
    WINDOW_RECORD_IDS,
    AccountState,
    StoredRecords,
    WindowCounts,
)
from pipeline.aggregator import Aggregator, DictStore, WindowConfig
from pipeline.events import Event
from pipeline.followers import FOLLOW, SNAPSHOT, FollowerLedger
from pipeline.processor import StagedStore
from pipeline.state_records import Generations, Record, segment_key, segment_listing
from tests.unit.test_processor import FakeTable
from tests.unit.test_segments import write_cut_everywhere

T0 = 1_767_225_600_000  # a window start (60 s windows)
WINDOW_MS = 60_000


def small_window(tag: str, ids: int = 10) -> WindowCounts:
    w = WindowCounts()
    for i in range(ids):
        w.add_id(f"{tag}{i}")
        w.add_engager(f"u{i % 3}")
        w.likes += 1
    return w


def busy_state() -> AccountState:
    """Six open windows of 10 ids each (under WINDOW_RECORD_IDS: none gets a window record of its own) and
    four ledger entries: 64 in all, over JOURNAL_FROM."""
    state = AccountState(windows={T0 + i * WINDOW_MS: small_window(f"w{i}-") for i in range(6)})
    for i in range(3):
        state.ledger.add((T0 + i * 1000, FOLLOW, 0, f"f{i}"))
    state.ledger.add((T0 + 5000, SNAPSHOT, 120, "s0"))
    return state


def store(
    state: AccountState, into: DictStore, generations: Generations, lost: frozenset[int] = frozenset()
) -> StoredRecords:
    """Store ``state`` as the aggregator does; ``lost``: generations the store is to act as if it lost."""
    if not state.needs_records():
        records = StoredRecords(state.dumps(), [], [])
    else:
        records = state.store_records(generations, lambda g: g not in lost and into.has_segment("a", g))
    into.put("a", *records)
    return records


def load(from_store: DictStore) -> AccountState:
    return AccountState.loads(from_store.data["a"], lambda g: from_store.get_segment("a", g))


def assert_loads_whole(into: DictStore, state: AccountState) -> None:
    loaded = load(into)
    assert loaded.windows == state.windows and loaded.ledger == state.ledger and loaded == state
    assert {g for _, g in into.segments} == segment_listing(into.data["a"])  # named exactly


def test_small_windows_and_ledger_entries_go_to_the_journal_and_load_whole() -> None:
    assert WINDOW_RECORD_IDS > 10 and JOURNAL_FROM <= 6 * 10 + 4
    into, generations = DictStore(), Generations()
    state = busy_state()
    first = store(state, into, generations)
    assert len(first.segments) == 1 and first.replaced == []  # the base
    fields = orjson.loads(first.main)
    base = first.segments[0][0]
    assert fields[0] == [[start] for start in state.windows]  # its window entries name the journal's
    assert fields[6] == [] and fields[10] is None and fields[11] == [base, 0, -1]
    wholes, deltas, entries, talk = orjson.loads(first.segments[0][1])
    assert len(wholes) == 6 and deltas == [] and len(entries) == 4 and talk == {}
    assert_loads_whole(into, state)
    assert load(into).journal is not None  # a state read back goes on with its journal


def test_a_few_ids_and_entries_stay_in_the_main_record() -> None:
    state = AccountState(windows={T0: small_window("a", 20)})
    state.ledger.add((T0, FOLLOW, 0, "f"))
    assert not state.needs_records()  # 21 < JOURNAL_FROM: one record, as before


def test_each_id_and_entry_is_written_once_and_an_unchanged_journal_not_at_all() -> None:
    into, generations = DictStore(), Generations()
    state = busy_state()
    store(state, into, generations)
    newest = state.windows[T0 + 5 * WINDOW_MS]
    for n in range(5):
        newest.add_id(f"new{n}")
        newest.likes += 1
        state.ledger.add((T0 + 6000 + n, FOLLOW, 0, f"g{n}"))
        records = store(state, into, generations)
        assert len(records.segments) == 1 and records.replaced == []
        wholes, deltas, entries, talk = orjson.loads(records.segments[0][1])
        # Only what changed: the newest window's delta (its counters whole, the one id it gained), one entry.
        assert wholes == [] and deltas == [[T0 + 5 * WINDOW_MS, 11 + n, 0, 0, 0, 0, 0, [], [f"new{n}"], []]]
        assert entries == [[T0 + 6000 + n, FOLLOW, 0, f"g{n}"]] and talk == {}
        assert orjson.loads(records.main)[11][1] == n + 1  # [base, deltas]
        assert_loads_whole(into, state)
    unchanged = store(state, into, generations)
    assert unchanged.segments == [] and unchanged.replaced == []
    assert_loads_whole(into, state)


def test_a_window_new_to_the_journal_is_written_whole_and_a_final_one_no_more() -> None:
    into, generations = DictStore(), Generations()
    state = busy_state()
    store(state, into, generations)
    del state.windows[T0]  # final
    state.windows[T0 + 6 * WINDOW_MS] = small_window("w6-", 3)
    records = store(state, into, generations)
    wholes, deltas, entries, talk = orjson.loads(records.segments[0][1])
    assert [w[0] for w in wholes] == [T0 + 6 * WINDOW_MS] and deltas == [] and entries == [] and talk == {}
    assert T0 not in load(into).windows
    assert_loads_whole(into, state)


def test_a_new_base_after_journal_deltas_and_the_old_records_deleted() -> None:
    into, generations = DictStore(), Generations()
    state = busy_state()
    chain = [store(state, into, generations).segments[0][0]]
    for n in range(JOURNAL_DELTAS):
        state.windows[T0].add_id(f"x{n}")
        chain.append(store(state, into, generations).segments[0][0])
    assert chain == list(range(chain[0], chain[0] + JOURNAL_DELTAS + 1))  # deltas take the reserved generations
    state.windows[T0].add_id("one more")
    rebased = store(state, into, generations)
    assert len(rebased.segments) == 1 and sorted(rebased.replaced) == chain
    assert orjson.loads(rebased.main)[11] == [rebased.segments[0][0], 0, -1]
    assert len(orjson.loads(rebased.segments[0][1])[0]) == 6  # whole again
    assert_loads_whole(into, state)


def test_a_fold_drops_entries_and_the_next_delta_holds_exactly_those_added_since() -> None:
    into, generations = DictStore(), Generations()
    state = busy_state()
    store(state, into, generations)
    state.ledger.add((T0 + 70_000, FOLLOW, 0, "late-unstored"))  # added, not yet stored, and kept by the fold
    state.ledger.fold(T0 + 2000)  # drops the first two follows (stored), keeps the rest
    assert state.ledger.journaled == 2
    state.ledger.add((T0 + 80_000, FOLLOW, 0, "after"))
    records = store(state, into, generations)
    assert orjson.loads(records.segments[0][1])[2] == [
        [T0 + 70_000, FOLLOW, 0, "late-unstored"],
        [T0 + 80_000, FOLLOW, 0, "after"],
    ]
    assert_loads_whole(into, state)
    assert [e[3] for e in load(into).ledger.entries] == ["f2", "s0", "late-unstored", "after"]


def test_a_lost_journal_record_is_written_again_as_a_new_base() -> None:
    into, generations = DictStore(), Generations()
    state = busy_state()
    base = store(state, into, generations).segments[0][0]
    state.windows[T0].add_id("x")
    delta = store(state, into, generations).segments[0][0]
    state.windows[T0].add_id("y")
    again = store(state, into, generations, lost=frozenset({delta}))  # a write that dropped it, say
    assert len(again.segments) == 1 and sorted(again.replaced) == [base, delta]
    assert len(orjson.loads(again.segments[0][1])[0]) == 6  # a base: every window whole
    assert_loads_whole(into, state)


def test_the_journal_ends_under_a_quarter_of_journal_from() -> None:
    into, generations = DictStore(), Generations()
    state = busy_state()
    base = store(state, into, generations).segments[0][0]
    for start in list(state.windows)[:-1]:
        del state.windows[start]  # final: 10 ids and 4 entries left, over a quarter
    store(state, into, generations)
    assert state.journal is not None
    state.ledger.fold(T0 + 10**6)  # the entries folded: 10 ids left...
    state.windows[T0 + 5 * WINDOW_MS] = WindowCounts(likes=1, ids={"only"})  # ...then 1
    records = store(state, into, generations)
    assert state.journal is None and records.segments == [] and records.replaced == [base]
    fields = orjson.loads(records.main)
    assert len(fields) == 10 and fields[0][0][8] == ["only"]  # back in the main record, whole
    assert not state.needs_records()
    assert_loads_whole(into, state)


def test_a_journal_too_large_for_a_record_stays_in_the_main_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(account_state, "WINDOW_RECORD_BYTES", 400)
    into, generations = DictStore(), Generations()
    state = busy_state()
    records = store(state, into, generations)
    assert state.journal is None and records.segments == []
    assert len(orjson.loads(records.main)[0][0]) == 10 and len(orjson.loads(records.main)[6]) == 4
    assert_loads_whole(into, state)


def test_a_delta_too_large_for_a_record_writes_a_new_base_or_ends_the_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    into, generations = DictStore(), Generations()
    state = busy_state()
    base = store(state, into, generations).segments[0][0]
    monkeypatch.setattr(account_state, "WINDOW_RECORD_BYTES", 3000)
    for n in range(80):  # a burst of follows: the delta alone passes the limit, and so would a base
        state.ledger.add((T0 + 9000 + n, FOLLOW, 0, f"burst-{n:04}-" + "x" * 20))
    records = store(state, into, generations)
    assert state.journal is None and records.replaced == [base] and records.segments == []
    assert_loads_whole(into, state)


def test_a_journal_write_cut_short_anywhere_leaves_a_whole_state_and_no_unnamed_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the worker's store: a delta goes before the main record; a new base too, the deletion of
    the old journal's records after it."""

    def change(state: AccountState) -> None:
        state.windows[T0].add_id("late")
        state.ledger.add((T0 + 9000, FOLLOW, 0, "g"))

    assert write_cut_everywhere(busy_state(), change, "a") == ["record", "main"]

    def rebase(state: AccountState) -> None:  # a new base: every window whole again, the old deleted
        monkeypatch.setattr(account_state, "JOURNAL_DELTAS", 0)
        change(state)

    kinds = write_cut_everywhere(busy_state(), rebase, "a")
    assert kinds[:2] == ["record", "main"] and set(kinds[2:]) == {"delete"}


def test_a_ledger_fold_keeps_its_journaled_count() -> None:
    ledger = FollowerLedger(
        entries=[(5, FOLLOW, 0, "a"), (1, FOLLOW, 0, "b"), (7, FOLLOW, 0, "c"), (2, FOLLOW, 0, "d")]
    )
    ledger.journaled = 3  # a, b, c stored
    ledger.fold(3)  # drops b (stored) and d (not)
    assert ledger.entries == [(5, FOLLOW, 0, "a"), (7, FOLLOW, 0, "c")] and ledger.journaled == 2


def chatty_state(conversations: int = 40) -> AccountState:
    """One small window of 10 ids and ``conversations`` inbound replies (under SEGMENT_FROM: not in
    segments)."""
    state = AccountState(windows={T0: small_window("w", 10)})
    for i in range(conversations):
        state.add_conversation(f"c{i}", T0 + i)
    return state


def test_conversations_not_in_segments_go_to_the_journal_each_written_once() -> None:
    into, generations = DictStore(), Generations()
    state = chatty_state()
    assert state.needs_records()  # 10 ids and 40 conversations
    first = store(state, into, generations)
    fields = orjson.loads(first.main)
    assert fields[2] == {} and fields[10] is None  # the journal holds them, no segments
    assert len(orjson.loads(first.segments[0][1])[3]) == 40
    assert_loads_whole(into, state)
    state.add_conversation("new", T0 + 50)
    state.add_conversation("c3", T0 + 60)  # seen again later: the later time replaces the earlier
    records = store(state, into, generations)
    assert orjson.loads(records.segments[0][1])[3] == {"new": T0 + 50, "c3": T0 + 60}
    assert load(into).conversations["c3"] == T0 + 60
    assert_loads_whole(into, state)
    assert store(state, into, generations).segments == []  # nothing new: nothing written


def test_pruned_conversations_are_not_read_back_from_the_journal() -> None:
    into, generations = DictStore(), Generations()
    state = chatty_state()
    store(state, into, generations)
    state.prune_conversations(T0 + 30)  # c0..c29 dropped; the journal's base still holds them
    state.windows[T0].add_id("x")
    records = store(state, into, generations)
    assert orjson.loads(records.main)[11][2] == T0 + 30
    assert sorted(load(into).conversations) == sorted(f"c{i}" for i in range(30, 40))
    assert_loads_whole(into, state)


def test_conversations_moving_into_segments_and_back_stay_whole() -> None:
    """Over SEGMENT_FROM they go to segment records (the journal's copies are read no more); under a
    quarter of it again, back to the journal, in a new base that holds them all."""
    into, generations = DictStore(), Generations()
    state = chatty_state()
    base = store(state, into, generations).segments[0][0]
    for i in range(40, 70):
        state.add_conversation(f"c{i}", T0 + i)
    segmented = store(state, into, generations)
    assert state.segments is not None and state.journal is not None and not state.journal.conversations
    assert orjson.loads(segmented.main)[10]  # listed segments
    assert_loads_whole(into, state)
    state.add_conversation("c70", T0 + 70)  # goes to a segment, not to the journal
    store(state, into, generations)
    assert_loads_whole(into, state)
    state.prune_conversations(T0 + 60)  # 11 left: back from the segments
    back = store(state, into, generations)
    assert state.segments is None and state.journal is not None and state.journal.conversations
    journal_records = [value for g, value in back.segments if g not in orjson.loads(back.main)[0]]
    assert len(orjson.loads(journal_records[-1])[3]) == 11 and base in back.replaced  # a new base
    assert_loads_whole(into, state)
    state.add_conversation("c71", T0 + 71)
    assert orjson.loads(store(state, into, generations).segments[0][1])[3] == {"c71": T0 + 71}
    assert_loads_whole(into, state)


def test_a_conversation_seen_again_earlier_and_pruned_before_the_store_does_not_come_back() -> None:
    """Found by review: the journal held ``x`` at a later time; seen again earlier, then pruned by that
    earlier time before the next store. The delta must still say so, or a reload reads the later time
    back (after the cutoff) and a response to ``x`` would count after a restart only."""
    into, generations = DictStore(), Generations()
    state = chatty_state()
    state.add_conversation("x", T0 + 100)
    store(state, into, generations)
    state.add_conversation("x", T0 + 1)  # again, in an earlier window
    state.prune_conversations(T0 + 50)  # drops it (and c0..c39)
    assert "x" not in state.conversations
    store(state, into, generations)
    assert_loads_whole(into, state)


def test_a_pruning_cutoff_never_moves_back() -> None:
    """Found by review: a horizon raised across a restart gives an earlier cutoff; conversations the later
    one dropped must not come back from the journal's older records."""
    into, generations = DictStore(), Generations()
    state = chatty_state()
    store(state, into, generations)
    state.prune_conversations(T0 + 30)
    store(state, into, generations)
    state.prune_conversations(T0 + 10)
    assert state.conversations_from == T0 + 30
    state.windows[T0].add_id("x")
    store(state, into, generations)
    assert len(load(into).conversations) == 10
    assert_loads_whole(into, state)


def test_a_journal_of_the_first_form_is_read_and_then_written_anew() -> None:
    """The first form (b2199d7): the listing ``[base, deltas]``, records of three fields, conversations in
    the main record."""
    into, generations = DictStore(), Generations()
    window = small_window("w", 10)
    entry = [T0, FOLLOW, 0, "f"]
    base = generations.next()
    value = [T0, 10, 0, 0, 0, 0, 0, sorted(window.engagers), sorted(window.ids), []]
    main = [[[T0]], -1, {"c": T0}, {}, 0, -1, [], {}, None, 0, None, [base, 0]]
    into.put("a", orjson.dumps(main), [(base, orjson.dumps([[value], [], [entry]]))])
    loaded = load(into)
    assert loaded.windows == {T0: window} and loaded.conversations == {"c": T0}
    assert loaded.ledger.entries == [tuple(entry)]
    assert loaded.journal is not None and not loaded.journal.conversations
    loaded.add_conversation("d", T0 + 1)
    records = store(loaded, into, generations)
    assert records.replaced == [base] and orjson.loads(records.segments[0][1])[3] == {"c": T0, "d": T0 + 1}
    assert_loads_whole(into, loaded)


def test_a_journal_of_the_first_form_on_a_segmented_state_takes_deltas_of_the_second() -> None:
    """Found by the second review: a first-form journal whose state has its conversations in segments
    gets a delta of the new form at its next store (no new base: the journal holds no conversations
    either way); reading the two forms together must work."""
    into, generations = DictStore(), Generations()
    window = small_window("w", 10)
    value = [T0, 10, 0, 0, 0, 0, 0, sorted(window.engagers), sorted(window.ids), []]
    base, segment = generations.next(), generations.next()
    talk = {f"c{i}": T0 + i for i in range(70)}
    main = [[[T0]], -1, {}, {}, 0, -1, [], {}, None, 0, [segment], [base, 0]]
    into.put(
        "a",
        orjson.dumps(main),
        [(base, orjson.dumps([[value], [], [[T0, FOLLOW, 0, "f"]]])), (segment, orjson.dumps(talk))],
    )
    state = load(into)
    assert state.segments is not None and state.conversations == talk
    state.windows[T0].add_id("x")
    records = store(state, into, generations)
    assert records.replaced == [] and orjson.loads(records.main)[11] == [base, 1, -1]  # a delta, the new listing
    assert_loads_whole(into, state)


def test_a_delta_key_holding_an_orphan_whose_rewrite_was_dropped_is_not_named() -> None:
    """Found by the second review: a write cut short left a journal delta as an orphan under the
    generation after the journal's last; after a restart the next delta takes that key again, in a write
    that is dropped (its partition not owned at that moment). The key then holds the orphan's bytes: the
    store counts it as lost and no longer holds it, so the next store writes a new base instead of
    naming it."""
    owned = {0}
    contents: dict[bytes, bytes] = {}

    async def changelog(phases: list[list[Record]]) -> Any:  # as the worker's: drops what it does not own
        for key, value, partition in (record for phase in phases for record in phase):
            if partition in owned:
                if value is None:
                    contents.pop(key, None)
                else:
                    contents[key] = value
        return asyncio.gather()

    def worker() -> tuple[StagedStore, Aggregator]:
        staged = StagedStore(FakeTable(), changelog, contents=contents)
        aggregator = Aggregator(WindowConfig(window_ms=WINDOW_MS, lateness_ms=WINDOW_MS), staged, lambda a: 0)
        aggregator.assign({0})
        return staged, aggregator

    def follow_and_store(staged: StagedStore, aggregator: Aggregator, name: str) -> None:
        aggregator.apply_event(Event(name, "follow", T0 + len(name), name, "a", "p1"), 0)
        aggregator.take_rows()
        aggregator.persist()
        asyncio.run(_commit(staged))

    staged, aggregator = worker()
    for i in range(39):
        aggregator.apply_event(Event(f"f{i}", "follow", T0 + i, f"u{i}", "a", "p1"), 0)
    follow_and_store(staged, aggregator, "f39")  # 40 follows: the journal's base
    base = orjson.loads(contents[b"a"])[11][0]
    orphan = [[], [], [[T0 + 1, FOLLOW, 0, "orphan"]], {}]  # what a write cut short left at base + 1
    contents[segment_key(base + 1, b"a")] = orjson.dumps(orphan)
    staged, aggregator = worker()  # a restart: the state read back names [base, 0]
    owned.clear()
    follow_and_store(staged, aggregator, "dropped")  # its delta at base + 1: dropped
    assert staged.losses == 1 and not staged.has_segment("a", base + 1)
    owned.add(0)
    follow_and_store(staged, aggregator, "after")
    loaded = AccountState.loads(contents[b"a"], lambda g: staged.get_segment("a", g))
    assert loaded.ledger == aggregator._peek("a").ledger and "orphan" not in [e[3] for e in loaded.ledger.entries]


async def _commit(staged: StagedStore) -> None:
    await (await staged.commit())
