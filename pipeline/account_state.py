"""The aggregation state of one account, and its compact serialized form (stored in a Faust table).

Contract: ``AccountState.loads(state.dumps())`` equals ``state`` (minus the transient ``dirty`` marks), and
so does ``AccountState.loads(records.main, segment)`` of ``records = state.store_records(...)``, where
``segment`` reads the window and segment records written with it or before.

Two parts of a state grow with more than what changed since it was last stored; they are kept in records
of their own, written only when they change (``pipeline.state_records`` writes and deletes them; the main
record names them by generation):

- an open window holding :data:`WINDOW_RECORD_IDS` event ids or more: *window records* (its main-record
  entry is ``[start, [base generation, deltas]]``, see :func:`listed`): a base record (the window
  whole), then a *delta record* at each store where it had changed (its counters, and what its sets
  gained since), a new base after :data:`WINDOW_DELTAS` of them;
- an account's conversations (7 days of inbound replies and mentions, for matching responses), above
  :data:`SEGMENT_FROM` of them: *segment records* (at most :data:`SEGMENT_SIZE` each, in the order they
  came); a store writes only the segments that changed (a new one for the conversations it adds, small
  ones merged, those that lost conversations to age).

The rest is held for the lateness horizon (or, for conversations, until there are enough to segment)
while a store changes little of it: the windows under :data:`WINDOW_RECORD_IDS` ids, the follower
ledger's entries and the conversations not in segments. Once they hold :data:`JOURNAL_FROM` ids, entries
and conversations or more, they are kept in the account's *journal* (the main record's 12th field,
``[base generation, deltas, conversations_from]``; its window entries ``[start]``): a base record (all of
them), then a delta record at each store where they changed (see :class:`Journal`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson

from pipeline.drops import DropState
from pipeline.followers import FollowerLedger


def exact_bytes(raw: bytes) -> bytes:
    """``raw`` in an allocation of its own size.

    orjson returns its output in a buffer of at least 4 KiB that it never shrinks (``sys.getsizeof``
    does not show it): an account state of ~100 bytes kept that way in the table costs 4 KiB, i.e. 4 GB
    for 1,000,000 accounts. Anything kept beyond the batch must be copied out.
    """
    return bytes(memoryview(raw))


@dataclass
class Fresh:
    """What was added to a window's sets since its window record (or its last delta) was written, in order."""

    engagers: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    response_ids: list[str] = field(default_factory=list)

    # Written out, like the constructors below: a dataclass's generated __init__ is interpreted Python
    # even in the compiled build, and these are built per window and account on the hot path (6 % of a
    # draining worker's main thread, bench/RESULTS.md).
    def __init__(
        self, engagers: list[str] | None = None, ids: list[str] | None = None, response_ids: list[str] | None = None
    ) -> None:
        self.engagers = [] if engagers is None else engagers
        self.ids = [] if ids is None else ids
        self.response_ids = [] if response_ids is None else response_ids


@dataclass
class WindowCounts:
    """Counters of one open window of one account; ``ids``/``response_ids`` deduplicate within it.

    A window only grows: every change adds to a counter or a set (the aggregator never removes or lowers
    anything; a window ends whole when it becomes final), and it stays under one start. Its sets are
    added to only through :meth:`add_id`, :meth:`add_engager` and :meth:`add_response`, which note the
    additions in ``fresh`` while the window has a window record or is in its account's journal (None
    otherwise; not part of the value, not for the constructor): the next store writes only those (a
    delta record)."""

    likes: int = 0
    replies: int = 0
    mentions: int = 0
    follows: int = 0
    unfollows: int = 0
    responses: int = 0
    engagers: set[str] = field(default_factory=set)
    ids: set[str] = field(default_factory=set)
    response_ids: set[str] = field(default_factory=set)
    fresh: Fresh | None = field(default=None, compare=False, repr=False)
    # The aggregator's upsert throttle (pipeline.aggregator.Aggregator.take_rows): when this window was last
    # upserted (its monotonic clock; -inf: not by this object), and whether a change of it waits for that
    # upsert's interval to end. Not part of the value.
    upserted_at: float = field(default=-math.inf, compare=False, repr=False)
    waiting: bool = field(default=False, compare=False, repr=False)

    def __init__(
        self,
        likes: int = 0,
        replies: int = 0,
        mentions: int = 0,
        follows: int = 0,
        unfollows: int = 0,
        responses: int = 0,
        engagers: set[str] | None = None,
        ids: set[str] | None = None,
        response_ids: set[str] | None = None,
        fresh: Fresh | None = None,
        upserted_at: float = -math.inf,
        waiting: bool = False,
    ) -> None:
        self.likes = likes
        self.replies = replies
        self.mentions = mentions
        self.follows = follows
        self.unfollows = unfollows
        self.responses = responses
        self.engagers = set() if engagers is None else engagers
        self.ids = set() if ids is None else ids
        self.response_ids = set() if response_ids is None else response_ids
        self.fresh = fresh
        self.upserted_at = upserted_at
        self.waiting = waiting

    def add_id(self, event_id: str) -> None:
        fresh = self.fresh
        _add(self.ids, event_id, None if fresh is None else fresh.ids)

    def add_engager(self, actor_id: str) -> None:
        fresh = self.fresh
        _add(self.engagers, actor_id, None if fresh is None else fresh.engagers)

    def add_response(self, event_id: str) -> None:
        fresh = self.fresh
        _add(self.response_ids, event_id, None if fresh is None else fresh.response_ids)


def _add(items: set[str], item: str, added: list[str] | None) -> None:
    """Add ``item`` to ``items``, and note it in ``added`` (if given) when it is new there."""
    held = len(items)
    items.add(item)
    if added is not None and len(items) != held:
        added.append(item)


@dataclass
class WindowRecord:
    """How a window is stored in window records: its base record's generation, then its deltas', and its
    :func:`window_size` when the last of them was written."""

    generations: list[int]
    size: int


# A window holding at least this many event ids is stored in a *window record* of its own, written only
# when the window changed (see AccountState.store_records). On live traffic a state holds every event id
# of its open windows (the window and the allowed lateness, 6 minutes by default) while only its newest
# window changes: stored whole at every persist, each id was written up to 72 times (bench/RESULTS.md,
# "Live-paced steady state"). Smaller windows stay in the main record: cheap to write again, and not
# worth a record (a worker holds a million of them).
WINDOW_RECORD_IDS = 32
# A window whose JSON is larger than this stays in the main record (which is then stored in chunks, see
# pipeline.state_records): a record must stay under Kafka's limit (1 MiB by default).
WINDOW_RECORD_BYTES = 512 * 1024
# A changed window with a window record gets a *delta record* (its counters, and what its sets gained
# since the record before), so each event id is written about once, not once per store while its
# window fills (or takes late events); after this many deltas, the window is written whole again as a
# new base and the old records are deleted (a window's records, read back on a recovery, stay few).
WINDOW_DELTAS = 16


def listed(generations: list[int]) -> list[int]:
    """A window's record generations as its main-record entry lists them: ``[base, deltas]``. Its deltas'
    generations follow its base's (the base reserves :data:`WINDOW_DELTAS` above it, see
    ``_window_entries``): a steady account lists its open windows' records at every store, and a
    generation takes 19 digits."""
    return [generations[0], len(generations) - 1]


def unlisted(entry: list[int]) -> list[int]:
    """The generations that :func:`listed` gave ``entry`` for."""
    base, deltas = entry
    return [base + i for i in range(deltas + 1)]


def window_size(w: WindowCounts) -> int:
    """The sum of a window's counters and set sizes: it grows with every change (a window only grows)."""
    return (
        w.likes
        + w.replies
        + w.mentions
        + w.follows
        + w.unfollows
        + w.responses
        + len(w.engagers)
        + len(w.ids)
        + len(w.response_ids)
    )


def counters(w: WindowCounts) -> list[object]:
    """``[likes, replies, mentions, follows, unfollows, responses]``."""
    return [w.likes, w.replies, w.mentions, w.follows, w.unfollows, w.responses]


def window_value(start: int, w: WindowCounts) -> list[object]:
    """The stored form of the window at ``start`` (for ``orjson.dumps``): ``[start, likes, replies,
    mentions, follows, unfollows, responses, engagers, ids, response_ids]``."""
    return [start, *counters(w), list(w.engagers), list(w.ids), list(w.response_ids)]


def window_from_value(w: list[Any]) -> WindowCounts:
    return WindowCounts(w[1], w[2], w[3], w[4], w[5], w[6], set(w[7]), set(w[8]), set(w[9]))


def delta_value(w: WindowCounts, fresh: Fresh) -> list[object]:
    """A delta record's value: ``[likes, replies, mentions, follows, unfollows, responses, engagers added,
    ids added, response_ids added]`` (the counters whole: they replace those of the records before)."""
    return [*counters(w), fresh.engagers, fresh.ids, fresh.response_ids]


def apply_delta(w: WindowCounts, d: list[Any]) -> None:
    w.likes, w.replies, w.mentions, w.follows, w.unfollows, w.responses = d[0], d[1], d[2], d[3], d[4], d[5]
    w.engagers.update(d[6])
    w.ids.update(d[7])
    w.response_ids.update(d[8])


@dataclass
class Journal:
    """How a state's journal is stored: its base record's generation, then its deltas' (listed as a
    window's records are, :func:`listed`), the :func:`window_size` of each window it holds as last
    written, by start, and whether it holds the state's conversations (not when they are in segments).

    A journal record is ``[windows whole, window deltas, ledger entries added, conversations added]``: a
    base holds every window under :data:`WINDOW_RECORD_IDS` ids whole (:func:`window_value`), no deltas,
    the ledger's entries and the conversations (unless segmented); a delta holds the windows new to the
    journal whole, ``[start, *delta_value]`` of those that changed since, and the entries and
    conversations (``{event_id: ts}``) added since. Read in order, a later window or conversation
    replaces an earlier one; the main record says which windows are open (its entries ``[start]``); the
    ledger's entries are those read at or after its ``folded_until`` (a fold drops exactly those before,
    and no later entry is before it: its window would be final), and the conversations those at or after
    the cutoff of their last pruning, ``conversations_from`` (the same holds)."""

    generations: list[int]
    sizes: dict[int, int]
    conversations: bool = False


# Windows under WINDOW_RECORD_IDS ids, follower ledger entries and conversations not in segments: from
# this many ids, entries and conversations in all, they go to the account's journal; under a quarter of it
# again, back into the main record. Stored in the main record they were written again at every store
# while the state held them (minutes): three quarters of the bytes a steady worker persisted
# (bench/RESULTS.md, "An account's journal").
JOURNAL_FROM = 32
# Deltas after which the journal is written whole again as a new base (its older records deleted): a
# recovery reads at most JOURNAL_DELTAS + 1 records of it, and what it holds of final windows and folded
# entries stays bounded.
JOURNAL_DELTAS = 16


# More conversations than this: they go to segment records (see the module docstring); fewer than
# SEGMENT_FROM // 4 again: back into the main record. Conversations in the main record are written again
# at every store of the state: that grows with what an active account gathers, not with what changed
# (bench/RESULTS.md, "Live-paced steady state"), so it stays small. Each store that added conversations
# begins a segment; SEGMENT_TAIL small ones at the end are merged (AccountState._merge_tail). An account
# with a week of conversations at 0.6 a second has ~3,000 segment records.
SEGMENT_FROM = 64
SEGMENT_SIZE = 128  # conversations per segment record at most
SEGMENT_TAIL = 4
# ...and encoded bytes at most (plus one conversation): an event id's 128 characters take up to 768 bytes
# in JSON (escaped control characters), so a count alone does not keep a record under Kafka's limit.
SEGMENT_BYTES = 256 * 1024
_NEVER = 2**63 - 1
_ENTRY_BYTES = 24  # a conversation's JSON beyond its quoted id: `:1767225600000,`


def conversation_bytes(event_id: str) -> int:
    """The bytes a conversation takes in a segment record (its id as JSON, quoted and escaped, and its time)."""
    return len(orjson.dumps(event_id)) + _ENTRY_BYTES


@dataclass
class Segment:
    """Conversations of a segmented state, in the order they came. ``generation``: of its stored record;
    0 while it changed since (it is written at the next store). ``oldest``: the earliest time among them
    (no later than it: a pruning looks only at segments it may shorten)."""

    ids: list[str]
    generation: int = 0
    oldest: int = _NEVER
    size: int = 0  # bytes of its record, at most (see SEGMENT_BYTES)


def _joined(segment: Segment | None, segments: list[Segment], event_id: str, ts: int) -> Segment:
    """Add a conversation to ``segment``, or, when that is None, stored or full, to a new segment appended
    to ``segments``; returns the segment it joined."""
    size = conversation_bytes(event_id)
    if segment is None or segment.generation or len(segment.ids) >= SEGMENT_SIZE or segment.size + size > SEGMENT_BYTES:
        segment = Segment([])
        segments.append(segment)
    segment.ids.append(event_id)
    segment.size += size
    if ts < segment.oldest:
        segment.oldest = ts
    return segment


class GenerationSource(Protocol):
    def next(self, above: int = 0) -> int: ...


class StoredRecords(NamedTuple):
    """What one store of a state writes: its main record, its new window and segment records (generation,
    value: the store keeps both kinds alike, as *segment records* keyed by generation), and the generations
    of those it no longer names (to delete once the main is stored)."""

    main: bytes
    segments: list[tuple[int, bytes]]
    replaced: list[int]


def _held(generation: int) -> bool:
    return True


def no_segments(generation: int) -> bytes:
    raise ValueError(f"a segmented state names segment {generation}, and no segment reader was given")


@dataclass
class AccountState:
    """Everything the stream keeps for one account.

    - ``windows``: open (not yet final) windows by start (ms).
    - ``final_through``: the end (ms) of the newest window already written as final; -1 if none.
    - ``conversations``: inbound reply/mention ``event_id`` -> ts, for matching responses.
    - ``pending``: responses that arrived before what they answer: answered ``event_id`` ->
      ``[[response_event_id, ts], ...]``.
    - ``ledger``: follower history (:class:`~pipeline.followers.FollowerLedger`).
    - ``applied``: per source partition (``"likes:3"``), the :func:`input_position` of the last input
      element whose effect on this account is in this stored state. Inputs at or before it are replays
      (Kafka redelivers what was processed but not yet committed) and are skipped: see
      ``docs/DESIGN.md``.
    - ``applying``: the same for inputs applied since the state was last stored (not serialized; folded
      into ``applied`` when the state is stored, which happens only between whole messages).
    - ``drop``: the engagement-drop detector's state (:mod:`pipeline.drops`); None before the first final
      window, or when detection is off.
    """

    windows: dict[int, WindowCounts] = field(default_factory=dict)
    final_through: int = -1
    conversations: dict[str, int] = field(default_factory=dict)
    pending: dict[str, list[list[Any]]] = field(default_factory=dict)
    ledger: FollowerLedger = field(default_factory=FollowerLedger)
    applied: dict[str, int] = field(default_factory=dict)
    applying: dict[str, int] = field(default_factory=dict)
    drop: DropState | None = None
    dirty: set[int] = field(default_factory=set)
    # Segmented conversations (None: kept in the main record), and the generations of segment records no
    # longer named (deleted with the next store). How the state is stored, not what it holds: not compared.
    segments: list[Segment] | None = field(default=None, compare=False)
    replaced: list[int] = field(default_factory=list, compare=False)
    # The windows stored in window records, by start; None if none.
    window_records: dict[int, WindowRecord] | None = field(default=None, compare=False)
    # How its journal is stored; None: the small windows, ledger entries and conversations not in
    # segments are in the main record.
    journal: Journal | None = field(default=None, compare=False)
    # The conversations added since the journal was last written (id, time), while it holds them (else
    # None), and the cutoff of their pruning, the latest (none before it is held; -1: none known).
    fresh_conversations: list[tuple[str, int]] | None = field(default=None, compare=False)
    conversations_from: int = field(default=-1, compare=False)
    # The store's count of lost writes when this state's window and segment records were last checked as
    # held (see store_records' ``recheck``); -1: never.
    checked: int = field(default=-1, compare=False)

    def __init__(
        self,
        windows: dict[int, WindowCounts] | None = None,
        final_through: int = -1,
        conversations: dict[str, int] | None = None,
        pending: dict[str, list[list[Any]]] | None = None,
        ledger: FollowerLedger | None = None,
        applied: dict[str, int] | None = None,
        applying: dict[str, int] | None = None,
        drop: DropState | None = None,
        dirty: set[int] | None = None,
        segments: list[Segment] | None = None,
        replaced: list[int] | None = None,
        window_records: dict[int, WindowRecord] | None = None,
        journal: Journal | None = None,
        fresh_conversations: list[tuple[str, int]] | None = None,
        conversations_from: int = -1,
        checked: int = -1,
    ) -> None:
        self.windows = {} if windows is None else windows
        self.final_through = final_through
        self.conversations = {} if conversations is None else conversations
        self.pending = {} if pending is None else pending
        self.ledger = FollowerLedger() if ledger is None else ledger
        self.applied = {} if applied is None else applied
        self.applying = {} if applying is None else applying
        self.drop = drop
        self.dirty = set() if dirty is None else dirty
        self.segments = segments
        self.replaced = [] if replaced is None else replaced
        self.window_records = window_records
        self.journal = journal
        self.fresh_conversations = fresh_conversations
        self.conversations_from = conversations_from
        self.checked = checked

    def needs_records(self) -> bool:
        """Whether storing this state takes :meth:`store_records` (window or segment records, or the
        deletion of some); if not, :meth:`dumps` alone is its one record."""
        if self.segments is not None or self.window_records or self.journal is not None:
            return True
        conversations = len(self.conversations)
        if conversations > SEGMENT_FROM:
            return True
        weight = len(self.ledger.entries) + conversations
        for w in self.windows.values():
            held = len(w.ids)
            if held >= WINDOW_RECORD_IDS:
                return True
            weight += held
        return weight >= JOURNAL_FROM

    def add_conversation(self, event_id: str, ts: int) -> None:
        """Hold an inbound reply or mention at ``ts`` (for matching responses; a later time for the same id
        replaces the earlier), noted for the segment or journal record the next store writes."""
        conversations = self.conversations
        if self.segments is not None:
            self.note_conversation(event_id, ts, conversations.get(event_id))
        else:
            fresh = self.fresh_conversations
            if fresh is not None:
                fresh.append((event_id, ts))
        conversations[event_id] = ts

    def prune_conversations(self, oldest_useful: int) -> None:
        """Drop the conversations before ``oldest_useful`` (later conversations are at or after it, or
        their windows would be final). A cutoff before an earlier one (a horizon raised since) keeps it."""
        if self.conversations:
            self.conversations = {k: v for k, v in self.conversations.items() if v >= oldest_useful}
            if self.segments is not None:
                self.prune_segments(oldest_useful)
        self.conversations_from = max(self.conversations_from, oldest_useful)  # (a horizon raised: not back)

    def note_conversation(self, event_id: str, ts: int, previous: int | None) -> None:
        """Call on a segmented state before ``conversations[event_id] = ts`` (``previous``: its time until
        now, None if new): it joins the newest segment if that one is not stored yet, else a new one
        (a stored segment is not written again to add to it: see :meth:`_merge_tail`); that segment's
        record then holds the new time (a later segment's wins on loading). An id seen again at an
        earlier time lowers every segment's ``oldest`` (it may be in any of them): the next pruning looks
        at them all."""
        if previous == ts:
            return
        segments = self.segments
        assert segments is not None
        if previous is not None:
            for segment in segments:
                if ts < segment.oldest:
                    segment.oldest = ts
        _joined(segments[-1] if segments else None, segments, event_id, ts)

    def _merge_tail(self, segments: list[Segment]) -> None:
        """Once :data:`SEGMENT_TAIL` segments or more at the end are small (each store that added
        conversations began one), each holding no more than those after it together, merge them into as
        few as :data:`SEGMENT_SIZE` and :data:`SEGMENT_BYTES` allow, written at this store (those stored,
        replaced). A merge thus at least doubles the segment of every conversation it rewrites, so a
        conversation is written a few times at most (log2 of SEGMENT_SIZE), where appending to the newest
        segment rewrote it at every store until that segment was full. (Merging every small segment at
        the end, as before, rewrote a segment growing by a few conversations a store up to ~20 times:
        bench/RESULTS.md, "An account's journal".)"""
        small = after = 0
        for segment in reversed(segments):
            held = len(segment.ids)
            if held >= SEGMENT_SIZE or 2 * segment.size > SEGMENT_BYTES or (small and held > after):
                break
            small += 1
            after += held
        if small < SEGMENT_TAIL:
            return
        tail = segments[-small:]
        del segments[-small:]
        self.replaced += [segment.generation for segment in tail if segment.generation]
        conversations = self.conversations
        merged: Segment | None = None
        for event_id in dict.fromkeys(i for segment in tail for i in segment.ids):
            ts = conversations.get(event_id)
            if ts is not None:  # (else pruned)
                merged = _joined(merged, segments, event_id, ts)

    def prune_segments(self, oldest_useful: int) -> None:
        """Call after conversations older than ``oldest_useful`` were dropped from a segmented state: the
        segments that held some are rewritten, or deleted once empty."""
        segments = self.segments
        assert segments is not None
        conversations = self.conversations
        kept: list[Segment] = []
        for segment in segments:
            if segment.oldest < oldest_useful:
                ids = [i for i in segment.ids if i in conversations]
                if len(ids) != len(segment.ids):
                    if segment.generation:
                        self.replaced.append(segment.generation)
                    segment.ids, segment.generation = ids, 0
                    segment.size = sum(map(conversation_bytes, ids))  # (conversations may join it again)
                segment.oldest = min((conversations[i] for i in ids), default=_NEVER)
            if segment.ids:
                kept.append(segment)
            elif segment.generation:
                self.replaced.append(segment.generation)
        self.segments = kept

    def store_records(
        self, generations: GenerationSource, stored: Callable[[int], bool], recheck: bool = True
    ) -> StoredRecords:
        """The records that store this state now (see :class:`StoredRecords`); marks its window and
        segment records stored. A window of :data:`WINDOW_RECORD_IDS` event ids or more gets a window
        record, written again only when the window changed (its :func:`window_size` moved); one that became
        final is deleted. Segments the conversations when there are more than :data:`SEGMENT_FROM` of them,
        and keeps them in the main record again when fewer than a quarter of that remain. ``stored``:
        whether the store holds the record of a generation; with ``recheck``, every record the state names
        is looked up, and one the store lost (a changelog write that dropped the records of a partition not
        owned at that moment) is written again. Without, only those written anew are: the caller knows the
        store lost nothing since the state was last stored (an account with a week of conversations names
        thousands of segments)."""
        conversations = self.conversations
        segments = self.segments
        if segments is None and len(conversations) > SEGMENT_FROM:
            segments = self.segments = []
            for event_id, ts in conversations.items():
                self.note_conversation(event_id, ts, None)
        elif segments is not None and len(conversations) < SEGMENT_FROM // 4:
            self.replaced += [segment.generation for segment in segments if segment.generation]
            segments = self.segments = None
        if segments is not None:
            self._merge_tail(segments)
        replaced, self.replaced = self.replaced, []
        written: list[tuple[int, bytes]] = []
        held = stored if recheck else _held
        journaled = self._store_journal(generations, held, written, replaced)
        windows = self._window_entries(generations, held, written, replaced, journaled)
        journal = None if self.journal is None else [*listed(self.journal.generations), self.conversations_from]
        if segments is None:
            return StoredRecords(
                self._dumps(windows, {} if journaled else conversations, None, journal), written, replaced
            )
        for segment in segments:
            if recheck and segment.generation and not stored(segment.generation):  # lost: write it again
                segment.generation = 0
            if not segment.generation:
                segment.generation = generations.next()
                value = orjson.dumps({i: conversations[i] for i in segment.ids if i in conversations})
                written.append((segment.generation, exact_bytes(value)))
        listing = [segment.generation for segment in segments]
        return StoredRecords(self._dumps(windows, {}, listing, journal), written, replaced)

    def _store_journal(
        self,
        generations: GenerationSource,
        stored: Callable[[int], bool],
        written: list[tuple[int, bytes]],
        replaced: list[int],
    ) -> bool:
        """Write what the journal needs now (new records to ``written``, those no longer named to
        ``replaced``): nothing if its windows, entries and conversations did not change, a delta if they
        did, a new base after :data:`JOURNAL_DELTAS` deltas, after a record of it was lost (``stored``),
        or when its conversations come back from segments. Begins the journal once the small windows'
        ids, the ledger's entries and the conversations not in segments reach :data:`JOURNAL_FROM`, ends
        it under a quarter of that, or when it would not fit a record (:data:`WINDOW_RECORD_BYTES`: then
        they go in the main record, which is chunked). Returns whether the journal holds them."""
        ledger = self.ledger
        small = [(start, w) for start, w in self.windows.items() if len(w.ids) < WINDOW_RECORD_IDS]
        inline = self.segments is None  # the conversations are the journal's too
        conversations = self.conversations if inline else {}
        weight = len(ledger.entries) + sum(len(w.ids) for _, w in small) + len(conversations)
        journal = self.journal
        if weight < (JOURNAL_FROM if journal is None else JOURNAL_FROM // 4):
            self._end_journal(small, replaced)
            return False
        if journal is not None and not inline:
            journal.conversations = False  # (those it holds are read no more: the segments hold them)
            self.fresh_conversations = None
        if (
            journal is not None
            and len(journal.generations) <= JOURNAL_DELTAS
            and journal.conversations == inline  # (back from segments: a new base holds them all)
            and all(map(stored, journal.generations))
        ):
            sizes: dict[int, int] = {}
            wholes: list[object] = []
            deltas: list[object] = []
            changed: list[WindowCounts] = []
            before = journal.sizes
            for start, w in small:
                size = sizes[start] = window_size(w)
                fresh = w.fresh
                if fresh is None or start not in before:
                    wholes.append(window_value(start, w))
                    changed.append(w)
                elif before[start] != size:
                    deltas.append([start, *delta_value(w, fresh)])
                    changed.append(w)
            added = ledger.entries[ledger.journaled :]
            noted = self.fresh_conversations
            # Those pruned since too: an id seen again earlier and pruned by that time must not come back
            # with the later time the journal held (its time here is before conversations_from).
            talk = dict(noted) if noted else {}
            if not (changed or added or talk):
                journal.sizes = sizes  # (less the windows now final)
                return True
            delta = orjson.dumps([wholes, deltas, added, talk])
            if len(delta) <= WINDOW_RECORD_BYTES:
                generation = journal.generations[-1] + 1  # reserved by its base
                written.append((generation, exact_bytes(delta)))
                journal.generations.append(generation)
                journal.sizes = sizes
                for w in changed:
                    w.fresh = Fresh()
                ledger.journaled = len(ledger.entries)
                if noted:
                    self.fresh_conversations = []
                return True
        # A new base: the first, after JOURNAL_DELTAS deltas, after a lost record, or a delta too large.
        value = exact_bytes(
            orjson.dumps([[window_value(start, w) for start, w in small], [], ledger.entries, conversations])
        )
        if len(value) > WINDOW_RECORD_BYTES:  # (a burst of follows: too large for a record)
            self._end_journal(small, replaced)
            return False
        if journal is not None:
            replaced += journal.generations
        generation = generations.next()
        generations.next(above=generation + JOURNAL_DELTAS)  # its deltas' generations, reserved
        written.append((generation, value))
        self.journal = Journal([generation], {start: window_size(w) for start, w in small}, inline)
        for _, w in small:
            w.fresh = Fresh()
        ledger.journaled = len(ledger.entries)
        self.fresh_conversations = [] if inline else None
        return True

    def _end_journal(self, small: list[tuple[int, WindowCounts]], replaced: list[int]) -> None:
        """Keep the small windows, the ledger's entries and the conversations not in segments in the main
        record from now on (the journal's records, if any, to delete)."""
        journal = self.journal
        if journal is None:
            return
        replaced += journal.generations
        self.journal = None
        for _, w in small:
            w.fresh = None
        self.ledger.journaled = 0
        self.fresh_conversations = None

    def _window_entries(
        self,
        generations: GenerationSource,
        stored: Callable[[int], bool],
        written: list[tuple[int, bytes]],
        replaced: list[int],
        journaled: bool,
    ) -> list[object]:
        """The main record's window entries: small windows whole, or ``[start]`` when ``journaled``, large
        ones ``[start, [base, deltas]]`` of their window records (new records added to ``written``; those
        no longer named to ``replaced``)."""
        before = self.window_records or {}
        now: dict[int, WindowRecord] = {}
        entries: list[object] = []
        for start, w in self.windows.items():
            if len(w.ids) < WINDOW_RECORD_IDS:
                entries.append([start] if journaled else window_value(start, w))
                continue
            size = window_size(w)
            record = before.get(start)
            if record is not None and not all(map(stored, record.generations)):
                record = None  # one of its records was lost: written whole again
            if record is not None and record.size != size:
                fresh = w.fresh
                delta = (
                    None
                    if fresh is None or len(record.generations) > WINDOW_DELTAS
                    else orjson.dumps(delta_value(w, fresh))
                )
                if delta is None or len(delta) > WINDOW_RECORD_BYTES:  # (a burst: too large for a record)
                    record = None  # written whole again: a new base (or in the main record, if too large)
                else:
                    generation = record.generations[-1] + 1  # reserved by its base
                    written.append((generation, exact_bytes(delta)))
                    w.fresh = Fresh()
                    record.generations.append(generation)
                    record.size = size
            if record is None:
                value = exact_bytes(orjson.dumps(window_value(start, w)))
                if len(value) > WINDOW_RECORD_BYTES:  # too large for a record: in the main record (chunked)
                    w.fresh = None
                    entries.append(orjson.Fragment(value))
                    continue
                generation = generations.next()
                generations.next(above=generation + WINDOW_DELTAS)  # its deltas' generations, reserved
                written.append((generation, value))
                w.fresh = Fresh()
                record = WindowRecord([generation], size)
            now[start] = record
            entries.append([start, listed(record.generations)])
        for start, record in before.items():
            if now.get(start) is not record:
                replaced += record.generations
        self.window_records = now or None
        return entries

    def fold_applied(self) -> None:
        """Record the inputs applied since the state was last stored as stored (call right before
        :meth:`dumps`, between whole messages)."""
        applied = self.applied
        for origin, position in self.applying.items():
            if position > applied.get(origin, -1):
                applied[origin] = position
        self.applying.clear()

    def dumps(self) -> bytes:
        """The whole state, every window and conversation in it, as one record: compact JSON, ``[windows,
        final_through, conversations, pending, ledger base, folded_until, ledger entries, applied, drop,
        decay]``, each window as :func:`window_value` gives it (a positional layout: no key strings to
        write or read). :meth:`store_records` writes the same main record, where a window entry may be
        ``[start, generation]`` of a window record instead, ``conversations`` empty and an 11th field, the
        generations of the conversations' segment records (null if none), and a 12th, its journal's records
        and pruning cutoff (``[base, deltas, conversations_from]``, :class:`Journal`; its window entries
        ``[start]``, its ledger entries and conversations empty)."""
        return self._dumps([window_value(s, w) for s, w in self.windows.items()], self.conversations, None, None)

    def _dumps(
        self, windows: list[object], conversations: dict[str, int], listing: list[int] | None, journal: list[int] | None
    ) -> bytes:
        ledger = self.ledger
        fields = [
            windows,
            self.final_through,
            conversations,
            self.pending,
            ledger.base,
            ledger.folded_until,
            [] if journal is not None else ledger.entries,
            self.applied,
            None if self.drop is None else self.drop.to_list(),
            0 if self.drop is None else self.drop.decay,  # apart from it: older readers take 6 fields
        ]
        if listing is not None or journal is not None:
            fields.append(listing)
        if journal is not None:
            fields.append(journal)
        return exact_bytes(orjson.dumps(fields))

    @classmethod
    def loads(
        cls, raw: bytes, segment: Callable[[int], bytes] = no_segments, conversations_too: bool = True
    ) -> AccountState:
        """The state stored as ``raw`` (a main record); ``segment`` reads the window or segment record of
        a generation that it names. Without ``conversations_too``, the segment records of its
        conversations are not read: what it gives is not the state, only its windows and other fields."""
        fields = orjson.loads(raw)
        windows, final_through, conversations, pending, base, folded_until, entries = fields[:7]
        applied = fields[7] if len(fields) > 7 else {}  # states stored by earlier versions have none
        drop = fields[8] if len(fields) > 8 else None
        decay = fields[9] if len(fields) > 9 else 0
        segments = None
        # Segmented: later segments hold the later time of a conversation seen twice.
        if len(fields) > 10 and fields[10] is not None and conversations_too:
            segments = []
            for generation in fields[10]:
                record = segment(generation)
                part: dict[str, int] = orjson.loads(record)
                conversations.update(part)
                segments.append(Segment(list(part), generation, _NEVER, len(record)))
            for loaded_segment in segments:  # the times held now: a later segment's may be earlier (seen again)
                loaded_segment.oldest = min((conversations[i] for i in loaded_segment.ids), default=_NEVER)
        journal: Journal | None = None
        journaled: dict[int, WindowCounts] = {}
        conversations_from = -1
        if len(fields) > 11:  # the small windows, the ledger's entries and the conversations are in its journal
            listing = fields[11]
            # (A journal of the first form, [base, deltas], held no conversations: they are in the main record.)
            held = len(listing) > 2
            conversations_from = listing[2] if held else -1
            journal = Journal(unlisted(listing[:2]), {}, held and fields[10] is None)
            added: list[Any] = []
            talk: dict[str, int] = {}
            for generation in journal.generations:
                parts: list[Any] = orjson.loads(segment(generation))  # (not `record`: that is bytes above)
                wholes, deltas, more = parts[:3]
                if len(parts) > 3:  # (not in a record of the first form, which a later delta may follow)
                    talk.update(parts[3])
                for value in wholes:
                    journaled[value[0]] = window_from_value(value)
                for delta in deltas:
                    apply_delta(journaled[delta[0]], delta[1:])
                added += more
            entries = [e for e in added if e[0] >= folded_until]
            if journal.conversations:
                conversations = {i: ts for i, ts in talk.items() if ts >= conversations_from}
        loaded: dict[int, WindowCounts] = {}
        window_records: dict[int, WindowRecord] | None = None
        for w in windows:
            if len(w) == 1:  # in the journal
                assert journal is not None
                window = loaded[w[0]] = journaled[w[0]]
                window.fresh = Fresh()
                journal.sizes[w[0]] = window_size(window)
            elif len(w) == 2:  # [start, generations] of a window's records: its base, then its deltas
                chain = unlisted(w[1])
                window = loaded[w[0]] = window_from_value(orjson.loads(segment(chain[0])))
                for generation in chain[1:]:
                    apply_delta(window, orjson.loads(segment(generation)))
                window.fresh = Fresh()
                if window_records is None:
                    window_records = {}
                window_records[w[0]] = WindowRecord(chain, window_size(window))
            else:
                loaded[w[0]] = window_from_value(w)
        ledger = FollowerLedger(base, folded_until, [(e[0], e[1], e[2], e[3]) for e in entries])
        if journal is not None:
            ledger.journaled = len(ledger.entries)
        return cls(
            windows=loaded,
            final_through=final_through,
            conversations=conversations,
            pending=pending,
            ledger=ledger,
            applied=applied,
            drop=None if drop is None else DropState.from_list(drop, decay),
            segments=segments,
            window_records=window_records,
            journal=journal,
            fresh_conversations=[] if journal is not None and journal.conversations else None,
            conversations_from=conversations_from,
        )


# An input element's position: its message's offset, then its index in the message (a JSON array).
_ELEMENTS_PER_MESSAGE = 1 << 22
# The largest offset whose positions fit the signed 64 bits a state is stored in (orjson's integers).
MAX_POSITIONED_OFFSET = (2**63 - 1) // _ELEMENTS_PER_MESSAGE


def input_position(offset: int, index: int) -> int:
    """The position of the ``index``-th valid event of the message at ``offset`` in one source partition,
    as one integer that orders events as Kafka delivers them. A valid event takes over 50 bytes, so a
    message would need over 200 MB to reach the last slot (4,194,303), which larger indexes share."""
    return offset * _ELEMENTS_PER_MESSAGE + min(index, _ELEMENTS_PER_MESSAGE - 1)
