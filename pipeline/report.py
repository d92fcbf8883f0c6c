"""The account report, computed by ClickHouse: runs the "account report" statements of :mod:`pipeline.queries`
and assembles an :class:`~pipeline.report_model.AccountReport` (definitions in :mod:`pipeline.report_model`).

Contract of :func:`account_report`:
- Every metric is computed by ClickHouse from the raw events and their rollups, each event once, with exact
  counts (see the "account report" section of :mod:`pipeline.queries`). Python only converts types and divides where the
  numerator and the denominator come from two statements: ``engagement_rate`` (engagers / followers) and
  ``human_engagement_rate`` (non-burst engagers / followers), with :func:`~pipeline.report_model.ratio`
  (None when followers is 0).
- It runs four read-only statements (five without ``as_of``) one after another, each a consistent read of
  its own: on a store being written, some may see an insert that others do not.
- Parameters are bound (:mod:`pipeline.warehouse.params`), never formatted: any account id is data.
- Given :class:`~pipeline.settings.Settings`, the statements go through :func:`pipeline.query_client.reading`
  (one connection for all; the worker's endpoint while a worker holds the embedded store, and read-only
  checked); given a :class:`~pipeline.warehouse.Warehouse`, they run on it.
  :class:`~pipeline.warehouse.WarehouseError` propagates.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pipeline import queries
from pipeline.query_client import Reader, reading
from pipeline.report_model import DAY_MS, DELAY_NAMES, AccountReport, Day, TopEngager, ratio
from pipeline.settings import Settings
from pipeline.warehouse import QueryResult, Warehouse

DEFAULT_DAYS = 28
DEFAULT_BURST_THRESHOLD = 30


class EmptyStore(ValueError):
    """The store holds no events, so there is no default ``as_of`` (the newest event time + 1 ms)."""


class Weights(NamedTuple):
    """The top engagers' score weights per inbound event type."""

    like: int = 1
    mention: int = 2
    reply: int = 3

    @classmethod
    def of(cls, settings: Settings) -> Weights:
        return cls(settings.weight_like, settings.weight_mention, settings.weight_reply)


def account_report(
    source: Warehouse | Settings,
    account_id: str,
    as_of: int | None = None,
    days: int = DEFAULT_DAYS,
    burst_threshold: int = DEFAULT_BURST_THRESHOLD,
    weights: Weights | None = None,
) -> AccountReport:
    """The report of ``account_id`` for P = [as_of - days, as_of) (epoch ms, ``as_of`` exclusive).

    ``as_of`` defaults to the newest event time in the store + 1 ms (:class:`EmptyStore` if there is none);
    ``weights`` default to the settings' (``source`` is Settings) or to 1/2/3. ``days`` must be >= 1 and P
    must start in 1970 or later (ValueError): the statements' day and minute arithmetic assumes times >= 0.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, not {days}")
    if isinstance(source, Settings):
        chosen = Weights.of(source) if weights is None else weights
        with reading(source) as run:
            return report_with(run, account_id, as_of, days, burst_threshold, chosen)
    chosen = Weights() if weights is None else weights
    return report_with(source.query, account_id, as_of, days, burst_threshold, chosen)


def report_with(
    run: Reader, account_id: str, as_of: int | None, days: int, burst_threshold: int, weights: Weights
) -> AccountReport:
    """:func:`account_report` with ``run(sql, params)`` running each statement."""
    if as_of is None:
        as_of = default_as_of(run)
    if as_of - days * DAY_MS < 0:
        raise ValueError(f"the period starts before 1970: as_of={as_of}, days={days}")
    params = report_params(account_id, as_of, days, burst_threshold, weights)

    daily = [
        Day(str(r["day"]), int(r["engagers"]), int(r["followers"]), _float(r["engagement_rate"]))
        for r in run(queries.REPORT_DAILY, params).as_dicts()
    ]
    followers = daily[-1].followers  # the last day ends at T
    inbound = _one(run(queries.REPORT_INBOUND, params))
    top = [
        TopEngager(str(actor), int(score))
        for actor, score in zip(inbound["top_actors"], inbound["top_scores"], strict=True)
    ]
    responses = _one(run(queries.REPORT_RESPONSES, params))
    outbound = _one(run(queries.REPORT_OUTBOUND, params))

    engagers = int(inbound["engagers"])
    return AccountReport(
        account_id=account_id,
        as_of=as_of,
        days=days,
        followers=followers,
        engagers=engagers,
        engagement_rate=ratio(engagers, followers),
        likes=int(inbound["likes"]),
        replies=int(inbound["replies"]),
        mentions=int(inbound["mentions"]),
        returning_engager_rate=_float(inbound["returning_engager_rate"]),
        loyal_core=int(inbound["loyal_core"]),
        inbound_conversations=int(responses["inbound_conversations"]),
        answered_24h=int(responses["answered_24h"]),
        response_rate=_float(responses["response_rate"]),
        median_response_seconds=_float(responses["median_response_seconds"]),
        outbound=int(outbound["outbound"]),
        responses_sent=int(outbound["responses_sent"]),
        dialogue_share=_float(outbound["dialogue_share"]),
        reciprocal_circle=int(outbound["reciprocal_circle"]),
        top_engagers=top,
        top10_share=_float(inbound["top10_share"]),
        bot_share=_float(inbound["bot_share"]),
        human_engagement_rate=ratio(int(inbound["human_engagers"]), followers),
        daily=daily,
        response_delays={name: int(responses[f"delay_{name}"]) for name in DELAY_NAMES},
    )


def report_params(account_id: str, as_of: int, days: int, burst_threshold: int, weights: Weights) -> dict[str, Any]:
    """The parameters every report statement takes (see the "account report" section of the queries)."""
    start = as_of - days * DAY_MS
    return {
        "account": account_id,
        "as_of": as_of,
        "start": start,
        "burst_threshold": burst_threshold,
        "weight_like": weights.like,
        "weight_mention": weights.mention,
        "weight_reply": weights.reply,
        **queries.rollup_params(start, as_of),
    }


def default_as_of(run: Reader) -> int:
    """The newest event time in the store + 1 ms; :class:`EmptyStore` if the store holds no event."""
    row = _one(run(queries.REPORT_DEFAULT_AS_OF, None))
    if not int(row["events"]):
        raise EmptyStore("the store holds no events: pass as_of")
    return int(row["as_of"])


def _one(result: QueryResult) -> dict[str, Any]:
    rows = result.as_dicts()
    if len(rows) != 1:
        raise AssertionError(f"a one-row report statement returned {len(rows)} rows")
    return rows[0]


def _float(value: Any) -> float | None:
    """A ratio as ClickHouse returned it (chDB's JSON writes 1.0 as 1); NULL stays None."""
    return None if value is None else float(value)
