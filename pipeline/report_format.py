"""What the account report says to people, whatever the medium: its values and ids as strings, how wide they
are on a terminal, and the labelled rows of every section (:func:`sections`).

Pure functions shared by the terminal rendering (:mod:`pipeline.report_render`) and the HTML page
(:mod:`pipeline.report_html`), so both show the same strings for the same numbers.

Contracts:

- Every value formatter writes ``None`` (undefined: a division by zero) as :data:`UNDEFINED`, never as 0.
- :func:`visible` makes an id safe to show on one line: control characters (newline, tab, ESC...), format
  characters that are invisible or reorder text (bidi overrides, zero-width spaces; the zero-width joiner of
  emoji sequences is kept), line/paragraph separators and lone surrogates are written as Python-style escapes
  (``\\x1b``, ``\\u202e``). Everything else is kept as it is.
- :func:`width` counts terminal columns: 2 for East Asian wide and fullwidth characters
  (:func:`unicodedata.east_asian_width` ``W``/``F``, which covers most emoji), 0 for combining marks,
  variation selectors and the zero-width joiner, 1 for everything else (ambiguous-width characters count 1,
  as in Western locales). Terminals that draw an emoji sequence differently can still disagree.
- :func:`cut`, :func:`fit` and :func:`pad` never return text wider than the columns they are given.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pipeline.report_model import DAY_MS, DUNBAR, AccountReport, TopEngager

UNDEFINED = "—"
ELLIPSIS = "…"
ZWJ = "\u200d"


def visible(text: str) -> str:
    """``text`` with every character that could hide, move or reorder what is printed written as an escape."""
    return "".join(_escape(ch) if _hidden(ch) else ch for ch in text)


def _hidden(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category in ("Cc", "Cs", "Zl", "Zp") or (category == "Cf" and ch != ZWJ)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def char_width(ch: str) -> int:
    """Terminal columns of one (visible) character: 0, 1 or 2 (see the module docstring)."""
    if ch == ZWJ or unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def width(text: str) -> int:
    """Terminal columns of ``text`` (passed through :func:`visible` first, or made only of visible text)."""
    return sum(char_width(ch) for ch in text)


def cut(text: str, cols: int) -> str:
    """The longest prefix of ``text`` at most ``cols`` columns wide."""
    used = 0
    for i, ch in enumerate(text):
        used += char_width(ch)
        if used > cols:
            return text[:i]
    return text


def fit(text: str, cols: int) -> str:
    """``text`` if it is at most ``cols`` columns wide, else cut to ``cols - 1`` columns and ``…``."""
    if width(text) <= cols:
        return text
    return cut(text, cols - 1) + ELLIPSIS if cols >= 1 else ""


def pad(text: str, cols: int, align: Literal["left", "right"] = "left") -> str:
    """``text`` fitted to ``cols`` columns and padded with spaces to exactly ``cols`` (``cols`` >= 0)."""
    text = fit(text, cols)
    fill = " " * (cols - width(text))
    return text + fill if align == "left" else fill + text


def count(n: int) -> str:
    """An integer with thousands separators: ``12,345``."""
    return f"{n:,}"


def pct(share: float | None) -> str:
    """A share as a percentage with one decimal (``24.0%``; more than 100 % is possible for the engagement
    rate). A share that is not 0 never shows as ``0.0%`` (``<0.1%``), one that is not 1 never as ``100.0%``
    (``>99.9%``)."""
    if share is None:
        return UNDEFINED
    if 0 < share < 0.0005:
        return "<0.1%"
    if 0.9995 <= share < 1:
        return ">99.9%"
    return f"{share:.1%}"


def duration(seconds: float | None) -> str:
    """Seconds in human units: ``400 ms``, ``4.5 s``, ``45 s``, ``1 min 45 s``, ``3 h 5 min``, ``2 d 4 h``
    (rounded to the unit shown; negative delays keep their ``-``)."""
    if seconds is None:
        return UNDEFINED
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if 0 < s < 1:
        return f"{sign}{round(s * 1000)} ms"
    if s < 10:
        return f"{sign}{f'{s:.1f}'.removesuffix('.0')} s"
    total = round(s)
    if total < 60:
        return f"{sign}{total} s"
    for big, big_unit, small, small_unit in ((86_400, "d", 3600, "h"), (3600, "h", 60, "min"), (60, "min", 1, "s")):
        if total >= big:
            whole, rest = divmod(total, big)
            part = rest // small
            return f"{sign}{whole} {big_unit}" + (f" {part} {small_unit}" if part else "")
    raise AssertionError("unreachable")  # pragma: no cover


def moment(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC (``2026-01-01T00:00:00.000Z``); out of range: ``<ms> ms``."""
    try:
        stamp = datetime.fromtimestamp(ms // 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Row:
    """One labelled value of the report, as both renderings show it.

    ``meter`` is (value, full scale) when the value is drawn as a bar too (a rate against 1, the reciprocal
    circle against :data:`~pipeline.report_model.DUNBAR`), None when it is not drawn (or undefined).
    """

    label: str
    value: str
    note: str = ""
    meter: tuple[float, float] | None = None


def sections(report: AccountReport) -> list[tuple[str, list[Row]]]:
    """The report's labelled values, section by section (top engagers and the daily trend are drawn apart)."""
    r = report
    inbound = r.likes + r.replies + r.mentions

    def meter(share: float | None, full: float = 1.0) -> tuple[float, float] | None:
        return None if share is None else (share, full)

    later = r.inbound_conversations - r.answered_24h
    circle_note = f"{'beyond' if r.reciprocal_circle > DUNBAR else 'of'} ~{DUNBAR} a person can hold"
    return [
        (
            "Connected vs engaged",
            [
                Row("engagement rate", pct(r.engagement_rate), "distinct engagers / followers"),
                Row("human engagement rate", pct(r.human_engagement_rate), "engagers who are not bots / followers"),
                Row(
                    "inbound events",
                    count(inbound),
                    " · ".join(
                        (plural(r.likes, "like"), plural(r.replies, "reply", "replies"), plural(r.mentions, "mention"))
                    ),
                ),
            ],
        ),
        (
            "Loyalty",
            [
                Row(
                    "returning engagers",
                    pct(r.returning_engager_rate),
                    "engagers of 2 weeks ago back last week",
                    meter(r.returning_engager_rate),
                ),
                Row("loyal core", count(r.loyal_core), "engaged in at least 3 of the last 4 weeks"),
            ],
        ),
        (
            "Responsiveness",
            [
                Row("inbound conversations", count(r.inbound_conversations), "replies and mentions received"),
                Row("answered within 24 h", count(r.answered_24h), f"{count(later)} not within 24 h (later, never)"),
                Row("response rate", pct(r.response_rate), "within 24 h / conversations", meter(r.response_rate)),
                Row("median response time", duration(r.median_response_seconds), _median_note(r)),
            ],
        ),
        (
            "Broadcast vs dialogue",
            [
                Row("outbound", count(r.outbound), "the account's own replies and mentions"),
                Row("responses sent", count(r.responses_sent), "of its replies, answers to a conversation"),
                Row("dialogue share", pct(r.dialogue_share), "responses / outbound", meter(r.dialogue_share)),
            ],
        ),
        (
            "Reciprocal circle",
            [
                Row("two-way relationships", count(r.reciprocal_circle), "replied to and engaged back, in 90 days"),
                Row(
                    "against Dunbar's ~150",
                    pct(r.reciprocal_circle / DUNBAR),
                    circle_note,
                    (r.reciprocal_circle, DUNBAR),
                ),
            ],
        ),
        (
            "Top engagers",
            [Row("top-10 share", pct(r.top10_share), "of all inbound score (weighted)")],
        ),
        (
            "Bots",
            [Row("bot share", pct(r.bot_share), "of inbound events made by burst actors")],
        ),
    ]


def plural(n: int, singular: str, many: str = "") -> str:
    """``1 like``, ``2 likes``, ``0 replies``: a count and its noun."""
    return f"{count(n)} {singular if n == 1 else many or singular + 's'}"


def _median_note(r: AccountReport) -> str:
    if r.median_response_seconds is None:
        return "no conversation answered"
    if r.median_response_seconds < 0:
        return "timestamped before the conversation"
    return "first response, answered conversations"


def engager_shares(report: AccountReport) -> list[tuple[TopEngager, float | None]]:
    """Each top engager with its share of all inbound score in the period: ``score * top10_share / Σ top
    scores`` (the report holds the top-10 share, not the total); None when that is undefined."""
    top_total = sum(t.score for t in report.top_engagers)
    share = report.top10_share
    return [(t, None if share is None or top_total == 0 else t.score * share / top_total) for t in report.top_engagers]


def period(report: AccountReport) -> tuple[str, str]:
    """The period's first moment and its (exclusive) end, RFC 3339 UTC."""
    return moment(report.as_of - report.days * DAY_MS), moment(report.as_of)
