"""Follower counts at a window's end, from snapshots and follow/unfollow events.

Definition: followers at ``end`` = the latest ``followers`` snapshot with ``ts < end`` (0 if none), plus
follows minus unfollows with ``snapshot_ts < ts < end``; never below 0 (the clamp applies to the result).
Two snapshots with the same ``ts``: the one with the greater ``event_id`` is the latest (deterministic
whatever the arrival order).

:class:`FollowerLedger` keeps the events that can still matter and folds older ones into a base value, so
its size is bounded by the lateness horizon, not by the account's history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

SNAPSHOT: Final = 0
FOLLOW: Final = 1
UNFOLLOW: Final = -1

# (ts_ms, kind, value, event_id): kind SNAPSHOT carries the count in value; FOLLOW/UNFOLLOW carry 0.
LedgerEntry = tuple[int, int, int, str]
# FollowerLedger.at counts up to this many entries again at each call instead of caching counts by end:
# the cache's dict and boxed keys cost more than such a scan (callgrind over the bench's live traffic).
COUNT_WITHOUT_CACHE: Final = 8


def followers_unclamped(base: int, entries: list[LedgerEntry], end: int) -> int:
    """The follower count at ``end`` before the clamp, from ``base`` (everything folded) and ``entries``.

    ``entries`` must all have ``ts`` at or after the fold point of ``base``.
    """
    # The latest snapshot before ``end`` (by time, then by id), its fields kept apart: compiled, a tuple
    # held across iterations or compared whole is boxed anew each time.
    found = False
    snap_ts = snap_count = 0
    snap_id = ""
    for entry in entries:
        ts = entry[0]
        if entry[1] == SNAPSHOT and ts < end:
            eid = entry[3]
            if not found or ts > snap_ts or (ts == snap_ts and eid > snap_id):
                found, snap_ts, snap_count, snap_id = True, ts, entry[2], eid
    if not found:
        count = base
        for entry in entries:
            kind = entry[1]
            if kind != SNAPSHOT and entry[0] < end:
                count += kind
        return count
    count = snap_count
    for entry in entries:
        kind = entry[1]
        if kind != SNAPSHOT and snap_ts < entry[0] < end:
            count += kind
    return count


@dataclass
class FollowerLedger:
    """Follower history of one account: ``base`` (the unclamped count over everything before
    ``folded_until``) plus the entries at or after it."""

    base: int = 0
    folded_until: int = -1
    entries: list[LedgerEntry] = field(default_factory=list)
    # Counts given by at() since the entries last changed, by end, once there are more than
    # COUNT_WITHOUT_CACHE entries: a window row asks for its end's count at every upsert, and scanning long
    # ledgers each time took 7 % of a steady worker's main thread (bench/RESULTS.md, "Window records").
    # Not part of the value; not for the constructor.
    counted: dict[int, int] | None = field(default=None, compare=False, repr=False)
    # How many of the entries, from the first, its account's journal holds (pipeline.account_state): the
    # next store writes only those after them. Kept through folds. Not part of the value.
    journaled: int = field(default=0, compare=False, repr=False)

    def __init__(
        self,
        base: int = 0,
        folded_until: int = -1,
        entries: list[LedgerEntry] | None = None,
        counted: dict[int, int] | None = None,
        journaled: int = 0,
    ) -> None:  # written out: a dataclass's generated __init__ stays interpreted in the compiled build
        self.base = base
        self.folded_until = folded_until
        self.entries = [] if entries is None else entries
        self.counted = counted
        self.journaled = journaled

    def add(self, entry: LedgerEntry) -> None:
        self.entries.append(entry)
        self.counted = None

    def at(self, end: int) -> int:
        """Followers at ``end`` (clamped at 0). ``end`` must be after ``folded_until``."""
        entries = self.entries
        if len(entries) <= COUNT_WITHOUT_CACHE:  # most ledgers: scanning them costs less than the cache
            return max(0, followers_unclamped(self.base, entries, end))
        counted = self.counted
        if counted is None:
            counted = self.counted = {}
        else:
            count = counted.get(end)
            if count is not None:
                return count
        count = max(0, followers_unclamped(self.base, entries, end))
        counted[end] = count
        return count

    def fold(self, until: int) -> None:
        """Fold entries with ``ts < until`` into the base; no count at an end > ``until`` changes."""
        if until <= self.folded_until:
            return
        old = [e for e in self.entries if e[0] < until]
        if old:
            entries = self.entries
            self.base = followers_unclamped(self.base, entries, until)
            if self.journaled:
                self.journaled -= sum(1 for e in entries[: self.journaled] if e[0] < until)
            self.entries = [e for e in entries if e[0] >= until]
        self.counted = None  # later counts do not change; this keeps the cache to the open windows' ends
        self.folded_until = until
