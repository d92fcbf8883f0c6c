"""The leaderboard as a terminal table: rank, account, followers, engagers, engagement rate, response rate
and reciprocal circle, the ranking column marked with ``▼``. None (undefined) is written ``—``; ids go
through :func:`~pipeline.report_format.visible`, so no id can break a line or hide text."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from pipeline.leaderboard import LeaderboardRow
from pipeline.report_format import count, moment, pad, pct, visible, width
from pipeline.report_reference import RankBy

MARK = "▼"
ACCOUNT_MAX = 40
Column = tuple[str, RankBy | None, Callable[[LeaderboardRow], str]]
COLUMNS: list[Column] = [
    ("followers", "followers", lambda r: count(r.followers)),
    ("engagers", "engagers", lambda r: count(r.engagers)),
    ("engagement rate", "engagement_rate", lambda r: pct(r.engagement_rate)),
    ("response rate", "response_rate", lambda r: pct(r.response_rate)),
    ("reciprocal circle", "reciprocal_circle", lambda r: count(r.reciprocal_circle)),
]


def render_leaderboard(rows: Sequence[LeaderboardRow], by: RankBy, as_of: int, days: int) -> str:
    """The table, a title line above it; one line per row, every line ending in a newline."""
    title = f"Engagement leaderboard by {by.replace('_', ' ')}: {days} days to {moment(as_of)} (exclusive)\n"
    if not rows:
        return title + "no accounts\n"
    accounts = [visible(r.account_id) for r in rows]
    cells: list[tuple[str, list[str], Literal["left", "right"]]] = [
        ("#", [str(r.rank) for r in rows], "right"),
        ("account", accounts, "left"),
    ]
    for header, metric, show in COLUMNS:
        cells.append((f"{header} {MARK}" if metric == by else header, [show(r) for r in rows], "right"))
    widths = [max(width(header), *(width(v) for v in values)) for header, values, _ in cells]
    widths[1] = min(widths[1], ACCOUNT_MAX)
    lines = ["  ".join(pad(h, w, align) for (h, _, align), w in zip(cells, widths, strict=True)).rstrip()]
    lines.append("  ".join("─" * w for w in widths))
    for i in range(len(rows)):
        line = "  ".join(pad(vs[i], w, align) for (_, vs, align), w in zip(cells, widths, strict=True))
        lines.append(line.rstrip())
    return title + "\n".join(lines) + "\n"
