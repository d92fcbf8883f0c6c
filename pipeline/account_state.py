"""The aggregation state of one account, and its compact serialized form (stored in a Faust table).

Contract: ``AccountState.loads(state.dumps())`` equals ``state`` (minus the transient ``dirty`` marks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.followers import FollowerLedger, LedgerEntry


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

    def to_list(self) -> list[Any]:
        return [
            self.likes,
            self.replies,
            self.mentions,
            self.follows,
            self.unfollows,
            self.responses,
            list(self.engagers),
            list(self.ids),
            list(self.response_ids),
        ]

    @classmethod
    def from_list(cls, raw: list[Any]) -> WindowCounts:
        return cls(raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], set(raw[6]), set(raw[7]), set(raw[8]))


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
        return orjson.dumps(
            {
                "w": {str(k): v.to_list() for k, v in self.windows.items()},
                "f": self.final_through,
                "c": self.conversations,
                "p": self.pending,
                "lb": self.ledger.base,
                "lf": self.ledger.folded_until,
                "le": [list(e) for e in self.ledger.entries],
            }
        )

    @classmethod
    def loads(cls, raw: bytes) -> AccountState:
        data = orjson.loads(raw)
        entries: list[LedgerEntry] = [(e[0], e[1], e[2], e[3]) for e in data["le"]]
        return cls(
            windows={int(k): WindowCounts.from_list(v) for k, v in data["w"].items()},
            final_through=data["f"],
            conversations=data["c"],
            pending=data["p"],
            ledger=FollowerLedger(data["lb"], data["lf"], entries),
        )
