"""The engagement leaderboard, computed by ClickHouse: every account ranked by one metric, with followers
beside engagement so the gap between connected and engaged is plain.

Contract of :func:`leaderboard_with`:
- One read-only statement (the "leaderboard" section of :mod:`pipeline.queries`) computes every metric for
  every account and ranks them: the chosen metric highest first, None (undefined) after every number, ties
  by ``account_id`` ascending; the candidates are every ``account_id`` of an event before ``as_of``. The
  values are the account report's (:mod:`pipeline.report_model`), exactly.
- ``by`` picks one of the fixed statements (ValueError for any other value); parameters are bound.
- :class:`~pipeline.warehouse.WarehouseError` propagates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline import queries
from pipeline.query_client import Reader
from pipeline.report import DEFAULT_DAYS, default_as_of
from pipeline.report_model import DAY_MS
from pipeline.report_reference import RANK_BY, RankBy

DEFAULT_LIMIT = 20


@dataclass(frozen=True)
class LeaderboardRow:
    """One ranked account (rank 1 is the highest)."""

    rank: int
    account_id: str
    followers: int
    engagers: int
    engagement_rate: float | None
    inbound_conversations: int
    answered_24h: int
    response_rate: float | None
    reciprocal_circle: int

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


def leaderboard_with(
    run: Reader,
    by: RankBy = "engagement_rate",
    limit: int = DEFAULT_LIMIT,
    as_of: int | None = None,
    days: int = DEFAULT_DAYS,
) -> list[LeaderboardRow]:
    """The ``limit`` highest accounts by ``by`` over P = [as_of - days, as_of), ``run(sql, params)`` running
    the statement. ``as_of`` defaults to the newest event time + 1 ms (:class:`~pipeline.report.EmptyStore`
    if there is none)."""
    if by not in RANK_BY:
        raise ValueError(f"cannot rank by {by!r}; one of {', '.join(RANK_BY)}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    if days < 1:
        raise ValueError(f"days must be >= 1, not {days}")
    if as_of is None:
        as_of = default_as_of(run)
    if as_of - days * DAY_MS < 0:
        raise ValueError(f"the period starts before 1970: as_of={as_of}, days={days}")
    start = as_of - days * DAY_MS
    params = {"as_of": as_of, "start": start, "limit": limit, **queries.rollup_params(start, as_of)}
    return [
        LeaderboardRow(
            rank=rank,
            account_id=str(r["account_id"]),
            followers=int(r["followers"]),
            engagers=int(r["engagers"]),
            engagement_rate=_float(r["engagement_rate"]),
            inbound_conversations=int(r["inbound_conversations"]),
            answered_24h=int(r["answered_24h"]),
            response_rate=_float(r["response_rate"]),
            reciprocal_circle=int(r["reciprocal_circle"]),
        )
        for rank, r in enumerate(run(queries.LEADERBOARD_BY[by], params).as_dicts(), start=1)
    ]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
