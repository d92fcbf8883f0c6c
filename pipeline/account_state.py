"""The aggregation state of one account, and its compact serialized form (stored in a Faust table).

Contract: ``AccountState.loads(state.dumps())`` equals ``state`` (minus the transient ``dirty`` marks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
class WindowCounts:
    """Counters of one open window of one account; ``ids``/``response_ids`` deduplicate within it."""

    likes: int = 0
    replies: int = 0
    mentions: int = 0
    follows: int = 0
    unfollows: int = 0
    responses: int = 0
    engagers: set[str] = field(default_factory=set)
    ids: set[str] = field(default_factory=set)
    response_ids: set[str] = field(default_factory=set)


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

    def fold_applied(self) -> None:
        """Record the inputs applied since the state was last stored as stored (call right before
        :meth:`dumps`, between whole messages)."""
        applied = self.applied
        for origin, position in self.applying.items():
            if position > applied.get(origin, -1):
                applied[origin] = position
        self.applying.clear()

    def dumps(self) -> bytes:
        """Compact JSON: ``[windows, final_through, conversations, pending, ledger base, folded_until,
        ledger entries, applied, drop]``, each window as ``[start, likes, replies, mentions, follows, unfollows,
        responses, engagers, ids, response_ids]`` (a positional layout: no key strings to write or read)."""
        ledger = self.ledger
        return exact_bytes(
            orjson.dumps(
                [
                    [
                        [
                            s,
                            w.likes,
                            w.replies,
                            w.mentions,
                            w.follows,
                            w.unfollows,
                            w.responses,
                            list(w.engagers),
                            list(w.ids),
                            list(w.response_ids),
                        ]
                        for s, w in self.windows.items()
                    ],
                    self.final_through,
                    self.conversations,
                    self.pending,
                    ledger.base,
                    ledger.folded_until,
                    ledger.entries,
                    self.applied,
                    None if self.drop is None else self.drop.to_list(),
                    0 if self.drop is None else self.drop.decay,  # apart from it: older readers take 6 fields
                ]
            )
        )

    @classmethod
    def loads(cls, raw: bytes) -> AccountState:
        fields = orjson.loads(raw)
        windows, final_through, conversations, pending, base, folded_until, entries = fields[:7]
        applied = fields[7] if len(fields) > 7 else {}  # states stored by earlier versions have none
        drop = fields[8] if len(fields) > 8 else None
        decay = fields[9] if len(fields) > 9 else 0
        return cls(
            windows={
                w[0]: WindowCounts(w[1], w[2], w[3], w[4], w[5], w[6], set(w[7]), set(w[8]), set(w[9])) for w in windows
            },
            final_through=final_through,
            conversations=conversations,
            pending=pending,
            ledger=FollowerLedger(base, folded_until, [(e[0], e[1], e[2], e[3]) for e in entries]),
            applied=applied,
            drop=None if drop is None else DropState.from_list(drop, decay),
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
