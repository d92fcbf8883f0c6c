"""Account reports built for tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pipeline.report_model import AccountReport


def zero_report(account_id: str, as_of: int, days: int = 28, **fields: Any) -> AccountReport:
    """The report of an account with nothing in its period: counts 0, every ratio undefined (None);
    ``fields`` replace any of them."""
    return replace(
        AccountReport(
            account_id=account_id,
            as_of=as_of,
            days=days,
            followers=0,
            engagers=0,
            engagement_rate=None,
            likes=0,
            replies=0,
            mentions=0,
            returning_engager_rate=None,
            loyal_core=0,
            inbound_conversations=0,
            answered_24h=0,
            response_rate=None,
            median_response_seconds=None,
            outbound=0,
            responses_sent=0,
            dialogue_share=None,
            reciprocal_circle=0,
        ),
        **fields,
    )
