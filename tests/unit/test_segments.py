"""An account with many conversations keeps them in segment records: a store rewrites only the segments
that changed, a state loads whole from its main record and segments, results are exactly those of whole
states across restarts, and a write cut short anywhere leaves the old state or the new one."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from pipeline import account_state
from pipeline.account_state import AccountState
from pipeline.aggregator import Aggregator, DictStore, WindowConfig, response_candidate
from pipeline.events import Event
from pipeline.processor import StagedStore
from pipeline.state_records import Generations, Record, is_chunk_key, parse_chunk_key, segment_listing
from tests.unit.test_processor import FakeTable
from tests.unit.test_state_chunks import replayed

T0 = 1_767_225_600_000
CFG = WindowConfig(window_ms=60_000, lateness_ms=60_000, conversation_horizon_ms=10 * 60_000)


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments from 20 conversations on, of 8 each."""
    monkeypatch.setattr(account_state, "SEGMENT_FROM", 20)
    monkeypatch.setattr(account_state, "SEGMENT_SIZE", 8)


def conversations(n: int, start: int = 0) -> dict[str, int]:
    return {f"q{i}": T0 + i * 1000 for i in range(start, start + n)}


def stored(state: AccountState, store: DictStore, generations: Generations) -> tuple[int, int]:
    """Store ``state`` as the aggregator does; returns (segment records written, deleted)."""
    records = state.store_records(generations, lambda g: store.has_segment("star", g))
    store.put("star", *records)
    return len(records.segments), len(records.replaced)


def test_a_store_rewrites_only_the_segments_that_changed(small_segments: None) -> None:
    store, generations = DictStore(), Generations()
    state = AccountState(conversations=conversations(30))
    assert stored(state, store, generations) == (4, 0)  # 30 conversations: 8 + 8 + 8 + 6
    assert orjson_fields(store.data["star"])[2] == {}  # none in the main record
    loaded = AccountState.loads(store.data["star"], lambda g: store.get_segment("star", g))
    assert loaded == state and list(loaded.conversations) == list(state.conversations)
    for event_id, ts in conversations(3, start=30).items():  # three more: the newest segment fills up
        state.note_conversation(event_id, ts, None)
        state.conversations[event_id] = ts
    assert stored(state, store, generations) == (1, 0)  # a new segment: the stored newest is not rewritten
    state.conversations = {k: v for k, v in state.conversations.items() if v >= T0 + 10_000}
    state.prune_segments(T0 + 10_000)  # the first 10 age out: the first segment goes, the second shrinks
    # Its size is its conversations' again (found by review: it kept growing, and a segment reached
    # SEGMENT_BYTES on paper while holding a few kilobytes).
    shrunk = (state.segments or [])[0]
    assert shrunk.size == sum(map(account_state.conversation_bytes, shrunk.ids)) and len(shrunk.ids) == 6
    assert stored(state, store, generations) == (1, 2)
    assert len(store.segments) == 4 and sum(len(s.ids) for s in state.segments or []) == 23
    reloaded = AccountState.loads(store.data["star"], lambda g: store.get_segment("star", g))
    assert reloaded == state
    state.conversations = {k: v for k, v in state.conversations.items() if v >= T0 + 29_000}
    state.prune_segments(T0 + 29_000)  # 4 left, under a quarter of 20: back into the main record
    assert stored(state, store, generations) == (0, 4) and state.segments is None
    assert not store.segments and orjson_fields(store.data["star"])[2] == state.conversations


def test_small_segments_at_the_end_are_merged(small_segments: None) -> None:
    """Each store that added conversations begins a segment (a stored one is not written again to add
    to it); once SEGMENT_TAIL small ones end the list, the next store merges them into one."""
    store, generations = DictStore(), Generations()
    state = AccountState(conversations=conversations(24))
    assert stored(state, store, generations) == (3, 0)  # three full segments of 8
    for i in range(24, 24 + account_state.SEGMENT_TAIL):
        event_id, ts = f"q{i}", T0 + i * 1000
        state.note_conversation(event_id, ts, None)
        state.conversations[event_id] = ts
        written = stored(state, store, generations)
        assert written == ((1, 0) if i < 23 + account_state.SEGMENT_TAIL else (1, account_state.SEGMENT_TAIL - 1))
    assert [len(s.ids) for s in state.segments or []] == [8, 8, 8, account_state.SEGMENT_TAIL]
    loaded = AccountState.loads(store.data["star"], lambda g: store.get_segment("star", g))
    assert loaded == state and list(loaded.conversations) == list(state.conversations)
    assert len(store.segments) == 4
    # A merged segment is not merged again with smaller ones after it: only once they hold as much.
    sizes = []
    for i in range(100, 100 + 2 * account_state.SEGMENT_TAIL):
        event_id, ts = f"r{i}", T0 + i * 1000
        state.note_conversation(event_id, ts, None)
        state.conversations[event_id] = ts
        stored(state, store, generations)
        sizes.append([len(s.ids) for s in state.segments or []][3:])
    tail = account_state.SEGMENT_TAIL
    assert sizes[tail - 2] == [tail, *[1] * (tail - 1)]  # the merged one not rewritten for three more
    assert sizes[tail - 1] == [8]  # with a fourth, all of them: a full segment (SEGMENT_SIZE 8)


def orjson_fields(raw: bytes) -> list[Any]:
    import orjson

    return list(orjson.loads(raw))


def stream(seed: int = 7) -> list[Event]:
    """An hour of a popular account: fans mention it and reply to it, it answers some of them later,
    others like it; a little disorder in time, and some ids sent again at another time."""
    rnd = random.Random(seed)
    events: list[Event] = []
    asked: list[str] = []
    for n in range(2400):
        ts = T0 + n * 1500 + rnd.randint(0, 800)
        roll = rnd.random()
        if roll < 0.03 and asked:  # an id seen again, at another time (another window): earlier or later
            event_id = asked[rnd.randrange(len(asked))]
            kind = "mention" if event_id.startswith("mention") else "reply"
            in_reply_to = "post" if kind == "reply" else None
            shifted = ts - rnd.randint(60_000, 400_000) if rnd.random() < 0.7 else ts + rnd.randint(60_000, 120_000)
            events.append(Event(event_id, kind, shifted, f"fan{n % 97}", "star", in_reply_to=in_reply_to))
        elif roll < 0.5:
            kind = rnd.choice(["mention", "reply"])
            event_id = f"{kind}{n}"
            asked.append(event_id)
            in_reply_to = "post" if kind == "reply" else None
            events.append(Event(event_id, kind, ts, f"fan{n % 97}", "star", in_reply_to=in_reply_to))
        elif roll < 0.7 and asked:
            answered = asked[rnd.randrange(max(0, len(asked) - 300), len(asked))]
            events.append(Event(f"answer{n}", "reply", ts, "star", f"fan{n % 97}", in_reply_to=answered))
        else:
            events.append(Event(f"like{n}", "like", ts, f"u{n % 31}", "star"))
    return events


def run(events: list[Event], restart_every: int = 9) -> tuple[list[tuple[Any, ...]], DictStore, int]:
    """The worker's way over ``events`` (batches of 25, responses forwarded a batch later, a restart from
    the store every ``restart_every`` batches); returns the final rows, the store, and the most segment
    records it held at once."""
    store = DictStore()
    agg = Aggregator(CFG, store, lambda a: 0)
    agg.assign({0})
    rows = []
    forwards: list[Any] = []
    most = 0
    frontier = 0
    for number, first in enumerate(range(0, len(events), 25)):
        if number % restart_every == restart_every - 1:  # a new process recovering the same table
            agg = Aggregator(CFG, store, lambda a: 0)
            agg.assign({0})
            agg.advance(0, frontier)
        for candidate in forwards:
            agg.apply_response(candidate, 0)
        forwards = []
        for event in events[first : first + 25]:
            agg.apply_event(event, 0)
            candidate = response_candidate(event)
            if candidate is not None:
                forwards.append(candidate)
            frontier = max(frontier, event.ts_ms)
        agg.advance(0, frontier)
        rows += agg.end_batch()
        most = max(most, len(store.segments))
    for candidate in forwards:
        agg.apply_response(candidate, 0)
    agg.flush()
    rows += agg.end_batch()
    final = sorted(row.values() for row in rows if row.final)
    return final, store, most


def test_segmented_conversations_count_exactly_as_whole_ones_across_restarts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = stream()
    monkeypatch.setattr(account_state, "JOURNAL_FROM", 10**9)  # whole: in the main record (journal: test_journal.py)
    monkeypatch.setattr(account_state, "SEGMENT_FROM", 10**9)
    whole, whole_store, _ = run(events)
    monkeypatch.setattr(account_state, "SEGMENT_FROM", 40)
    monkeypatch.setattr(account_state, "SEGMENT_SIZE", 16)
    segmented, store, most = run(events)
    assert most >= 10 and not whole_store.segments  # segments were used, and aged out along the way
    assert segmented == whole
    assert sum(row[10] for row in whole) > 100  # responses were matched against conversations
    for account_id, raw in store.data.items():  # every segment record left is named by its state
        named = segment_listing(raw)
        assert {g for a, g in store.segments if a == account_id} == named


def test_a_segmented_write_cut_short_anywhere_leaves_a_whole_state_and_no_unnamed_segment(
    small_segments: None,
) -> None:
    """Through the worker's store: new segments go with the chunks before the main record, deletions
    after it; every prefix of the write leaves a state that loads whole, and the sweep deletes the rest."""

    def change(state: AccountState) -> None:
        for event_id, ts in conversations(12, start=30).items():
            state.note_conversation(event_id, ts, None)
            state.conversations[event_id] = ts
        state.conversations = {k: v for k, v in state.conversations.items() if v >= T0 + 9_000}
        state.prune_segments(T0 + 9_000)

    kinds = write_cut_everywhere(AccountState(conversations=conversations(30)), change)
    assert kinds == sorted(kinds, key=["record", "main", "delete"].index) and "delete" in kinds


def write_cut_everywhere(
    state: AccountState, change: Callable[[AccountState], None], account: str = "star"
) -> list[str]:
    """Store ``state`` through the worker's store, ``change`` it, store it again: every prefix of that
    second write (as the changelog received it) must leave the old state or the new one loading whole,
    and the sweep must leave exactly the records the main record names. Returns the second write's
    records' kinds in order (``record``: a chunk, window or segment record; ``main``; ``delete``)."""
    generations = Generations()
    table = FakeTable()
    first = StagedStore(table)
    first.put(account, *state.store_records(generations, lambda g: first.has_segment(account, g)))
    asyncio.run(_commit(first))
    before = dict(table)
    change(state)
    received: list[Record] = []

    async def changelog(phases: list[list[Record]]) -> Any:
        received.extend(record for phase in phases for record in phase)
        return asyncio.gather()

    second = StagedStore(FakeTable(before), changelog)
    second.put(account, *state.store_records(generations, lambda g: second.has_segment(account, g)))
    asyncio.run(_commit(second))
    key = account.encode("utf-8")
    old_state = AccountState.loads(before[key], lambda g: StagedStore(FakeTable(before)).get_segment(account, g))
    for cut in range(len(received) + 1):
        survived = replayed(before, received[:cut])
        recovered = StagedStore(survived)
        raw = recovered.get(account)
        assert raw is not None
        loaded = AccountState.loads(raw, lambda g, store=recovered: store.get_segment(account, g))
        assert loaded in (old_state, state), cut
        recovered.sweep({0})
        asyncio.run(_commit(recovered))
        named = segment_listing(survived[key])
        assert {parse_chunk_key(k)[0] for k in survived if is_chunk_key(k)} == named, cut
    return [("record" if is_chunk_key(k) else "main") if v is not None else "delete" for k, v, _ in received]


async def _commit(store: StagedStore) -> None:
    await (await store.commit())


def test_a_segment_record_stays_far_under_the_record_limit_whatever_its_ids(small_segments: None) -> None:
    """Ids of 128 characters that JSON escapes (control characters, 6 bytes each) would make 2,000 of them
    1.5 MB: a segment also closes at SEGMENT_BYTES."""
    store, generations = DictStore(), Generations()
    state = AccountState(conversations={f"{i:04d}" + "\x01" * 124: T0 + i for i in range(2_000)})
    monkey_from = account_state.SEGMENT_SIZE
    assert monkey_from == 8
    account_state.SEGMENT_SIZE = 2_000
    try:
        stored(state, store, generations)
    finally:
        account_state.SEGMENT_SIZE = monkey_from
    sizes = [len(v) for v in store.segments.values()]
    assert len(sizes) >= 3 and max(sizes) <= account_state.SEGMENT_BYTES + 1_000
    loaded = AccountState.loads(store.data["star"], lambda g: store.get_segment("star", g))
    assert loaded.conversations == state.conversations


def test_a_segment_record_the_store_lost_is_written_again(small_segments: None) -> None:
    """A changelog write drops the records of a partition not owned at that moment; if the partition comes
    back before the worker notices, its states believe their segments stored. The next store writes any
    segment the store does not hold, so the main record never names a missing one."""
    store, generations = DictStore(), Generations()
    state = AccountState(conversations=conversations(30))
    stored(state, store, generations)
    lost = next(iter(store.segments))
    del store.segments[lost]
    state.note_conversation("q99", T0 + 99_000, None)
    state.conversations["q99"] = T0 + 99_000
    assert stored(state, store, generations) == (2, 0)  # the lost one again, and a new one
    loaded = AccountState.loads(store.data["star"], lambda g: store.get_segment("star", g))
    assert loaded == state


def test_an_id_seen_again_earlier_is_pruned_from_every_segment_that_holds_it(small_segments: None) -> None:
    """An event id already in a stored segment comes again with an earlier time (another window): once that
    time ages out, no segment record may bring the id back at its first time after a reload."""
    store, generations = DictStore(), Generations()
    state = AccountState(conversations=conversations(30))  # q20 (T0 + 20 s) in the third segment
    stored(state, store, generations)
    earlier = T0 - 50_000
    state.note_conversation("q20", earlier, state.conversations["q20"])
    state.conversations["q20"] = earlier
    stored(state, store, generations)
    state.conversations = {k: v for k, v in state.conversations.items() if v >= T0}
    state.prune_segments(T0)
    stored(state, store, generations)
    loaded = AccountState.loads(store.data["star"], lambda g: store.get_segment("star", g))
    assert "q20" not in loaded.conversations and loaded == state


def test_an_id_seen_again_earlier_is_pruned_after_a_reload_too(small_segments: None) -> None:
    """As above, with a restart between: the reloaded segments take their times from the conversations as
    loaded (a later segment's time wins), so the pruning after the reload still looks at the segment
    holding the id's first time, and no later load brings the id back."""
    store, generations = DictStore(), Generations()
    state = AccountState(conversations=conversations(30))
    stored(state, store, generations)
    earlier = T0 - 50_000
    state.note_conversation("q5", earlier, state.conversations["q5"])  # in the first segment
    state.conversations["q5"] = earlier
    stored(state, store, generations)
    reloaded = AccountState.loads(store.data["star"], lambda g: store.get_segment("star", g))  # a restart
    reloaded.conversations = {k: v for k, v in reloaded.conversations.items() if v >= T0}
    reloaded.prune_segments(T0)
    stored(reloaded, store, generations)
    loaded = AccountState.loads(store.data["star"], lambda g: store.get_segment("star", g))
    assert "q5" not in loaded.conversations and loaded == reloaded
