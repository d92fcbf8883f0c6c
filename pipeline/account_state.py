"""The aggregation state of one account, and its compact serialized form (stored in a Faust table).

Contract: ``AccountState.loads(state.dumps())`` equals ``state`` (minus the transient ``dirty`` marks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

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
    """

    windows: dict[int, WindowCounts] = field(default_factory=dict)
    final_through: int = -1
    conversations: dict[str, int] = field(default_factory=dict)
    pending: dict[str, list[list[Any]]] = field(default_factory=dict)
    ledger: FollowerLedger = field(default_factory=FollowerLedger)
    dirty: set[int] = field(default_factory=set)

    def dumps(self) -> bytes:
        """Compact JSON: ``[windows, final_through, conversations, pending, ledger base, folded_until,
        ledger entries]``, each window as ``[start, likes, replies, mentions, follows, unfollows,
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
                ]
            )
        )

    @classmethod
    def loads(cls, raw: bytes) -> AccountState:
        windows, final_through, conversations, pending, base, folded_until, entries = orjson.loads(raw)
        return cls(
            windows={
                w[0]: WindowCounts(w[1], w[2], w[3], w[4], w[5], w[6], set(w[7]), set(w[8]), set(w[9])) for w in windows
            },
            final_through=final_through,
            conversations=conversations,
            pending=pending,
            ledger=FollowerLedger(base, folded_until, [(e[0], e[1], e[2], e[3]) for e in entries]),
        )
