"""The account report on a terminal: :func:`render_terminal` (and :func:`render_html`, the self-contained page
of :mod:`pipeline.report_html`, re-exported here so that both renderings are imported from one place).

Pure functions of an :class:`~pipeline.report_model.AccountReport`: no I/O, no clock, no network. Both show
the rows of :func:`pipeline.report_format.sections` with the same strings: ``None`` (undefined) as ``—``,
never as 0; ids through :func:`~pipeline.report_format.visible`, so that no id can break a line, hide text or
reorder it. The terminal truncates ids to their column with ``…``.
"""

from __future__ import annotations

from pipeline.report_format import (
    ELLIPSIS,
    UNDEFINED,
    Row,
    count,
    cut,
    engager_shares,
    pad,
    pct,
    period,
    plural,
    sections,
    visible,
)
from pipeline.report_format import width as display_width
from pipeline.report_html import render_html
from pipeline.report_model import AccountReport, Day

__all__ = ["MIN_WIDTH", "render_html", "render_terminal", "sparkline"]

MIN_WIDTH = 40
MAX_BAR = 60  # columns of the widest terminal bar, whatever the width
BLOCKS = "▏▎▍▌▋▊▉█"  # 1/8 .. 8/8 of a column
SPARKS = "▁▂▃▄▅▆▇█"
EMPTY = "░"
ANSI = {"title": "\x1b[1m", "bar": "\x1b[36m", "dim": "\x1b[2m"}
RESET = "\x1b[0m"

Segment = tuple[str, str]  # text, style ("" or a key of ANSI)


def render_terminal(report: AccountReport, width: int = 100, color: bool = False) -> str:
    """The report as text for a terminal ``width`` columns wide (>= :data:`MIN_WIDTH`, else ValueError).

    No line is wider than ``width`` columns (measured by :func:`pipeline.report_format.width`); ids are
    truncated to their column with ``…``; lines carry no trailing spaces; the text ends with a newline.
    ANSI styles (bold titles, cyan bars, dim notes) only when ``color``; without their escapes the text is
    the same as without ``color``.
    """
    if width < MIN_WIDTH:
        raise ValueError(f"width must be >= {MIN_WIDTH}")
    sheet = _Sheet(width)
    _header(sheet, report)
    for title, rows in sections(report):
        sheet.title(title)
        if title == "Connected vs engaged":
            _glance(sheet, report)
        for row in rows:
            sheet.row(row)
        if title == "Top engagers":
            _top_engagers(sheet, report)
    sheet.title("Daily trend")
    _trend(sheet, report.daily)
    sheet.blank()
    sheet.add([(f"{UNDEFINED} undefined (division by zero), not 0", "dim")])
    return sheet.text(color)


class _Sheet:
    """Lines of styled segments, each at most ``width`` columns."""

    LABEL = 23
    VALUE = 11

    def __init__(self, cols: int) -> None:
        self.width = cols
        self.lines: list[list[Segment]] = []

    def add(self, segments: list[Segment]) -> None:
        self.lines.append(_clip(segments, self.width))

    def blank(self) -> None:
        self.lines.append([])

    def title(self, text: str) -> None:
        self.blank()
        head = f"── {text.upper()} "
        self.add([(head, "title"), ("─" * (self.width - display_width(head)), "dim")])

    def row(self, row: Row) -> None:
        """``  label  value  [bar]  note``: the bar (8 to 20 columns, narrower to leave room for the note) where
        it fits, the note where it fits whole."""
        value = _rjust(row.value, self.VALUE)
        segments: list[Segment] = [("  " + pad(row.label, self.LABEL), ""), (value, "")]
        room = self.width - 2 - self.LABEL - display_width(value)  # columns after the value
        note = 2 + display_width(row.note) if row.note else 0  # the note and its gap
        if row.meter is not None and room >= 2 + 8:
            cols = min(20, room - 2 - note if room - 2 - note >= 8 else room - 2)
            segments += [("  ", ""), *_meter(*row.meter, cols)]
            room -= 2 + cols
        if row.note and note <= room:
            segments.append(("  " + row.note, "dim"))
        self.add(segments)

    def text(self, color: bool) -> str:
        def line(segments: list[Segment]) -> str:
            parts = [ANSI[style] + text + RESET if color and style and text else text for text, style in segments]
            return "".join(parts).rstrip(" ")

        return "\n".join(line(s) for s in self.lines) + "\n"


def _rjust(text: str, cols: int) -> str:
    """``text`` right-aligned in ``cols`` columns; never cut (a number wider than its column widens the line)."""
    return " " * max(0, cols - display_width(text)) + text


def _clip(segments: list[Segment], cols: int) -> list[Segment]:
    """The segments cut to ``cols`` columns, ending with ``…`` where something was cut."""
    if sum(display_width(text) for text, _ in segments) <= cols:
        return segments
    out: list[Segment] = []
    room = cols - 1
    for text, style in segments:
        if display_width(text) > room:
            out.append((cut(text, room), style))
            break
        out.append((text, style))
        room -= display_width(text)
    return [*out, (ELLIPSIS, "")]


def _bar(value: float, full: float, cols: int) -> str:
    """``value`` of ``full`` as ``cols`` columns of eighth blocks (at most); a value above 0 shows at least
    ``▏`` (where ``cols`` > 0)."""
    if full <= 0 or value <= 0 or cols <= 0:
        return ""
    eighths = round(min(value / full, 1.0) * cols * 8)
    bar = BLOCKS[-1] * (eighths // 8) + (BLOCKS[eighths % 8 - 1] if eighths % 8 else "")
    return bar or BLOCKS[0]


def _meter(value: float, full: float, cols: int) -> list[Segment]:
    """A bar on a ``░`` track of ``cols`` columns; ``▶`` at the end when ``value`` is beyond ``full``."""
    bar = _bar(value, full, cols)
    if value > full:
        bar = bar[:-1] + "▶"
    return [(bar, "bar"), (EMPTY * (cols - display_width(bar)), "dim")]


def _header(sheet: _Sheet, r: AccountReport) -> None:
    """The account (cut to the width), the period on one line or, narrow, two, and T."""
    start, end = period(r)
    sheet.add([("ACCOUNT REPORT  ", "title"), (visible(r.account_id), "title")])
    days = plural(r.days, "day")
    if display_width(f"  period  {start} → {end}") <= sheet.width:
        note = f"  {days}, end exclusive"
        fits = display_width(f"  period  {start} → {end}{note}") <= sheet.width
        sheet.add([("  period  ", ""), (f"{start} → {end}", ""), (note if fits else f"  {days}", "dim")])
    else:
        sheet.add([("  from    ", ""), (start, "")])
        sheet.add([("  to      ", ""), (end, "")])
        sheet.add([("  days    ", ""), (count(r.days), "")])
    sheet.add([("  as of   ", ""), (end, "")])


def _glance(sheet: _Sheet, r: AccountReport) -> None:
    """Followers and engagers as two bars on one scale: the gap between connected and engaged."""
    cols = min(MAX_BAR, sheet.width - 2 - sheet.LABEL - sheet.VALUE - 2)
    scale = max(r.followers, r.engagers)
    for name, n in (("followers", r.followers), ("engagers", r.engagers)):
        cells = "  " + pad(name, sheet.LABEL) + _rjust(count(n), sheet.VALUE) + "  "
        sheet.add([(cells, ""), (_bar(n, scale, cols), "bar")])
    if r.followers == 0:
        sheet.add([("  no followers: the rates are undefined", "dim")])
    elif r.engagers > r.followers:
        sheet.add([("  more distinct engagers than followers", "dim")])


def _top_engagers(sheet: _Sheet, r: AccountReport) -> None:
    """Rank, actor (cut to its column), score, share of all inbound score, and a bar against the first."""
    if not r.top_engagers:
        sheet.add([("  no inbound engagement in the period", "dim")])
        return
    rows = [(count(t.score), pct(share)) for t, share in engager_shares(r)]
    score = max(5, *(display_width(s) for s, _ in rows))
    share = max(6, *(display_width(s) for _, s in rows))
    rest = sheet.width - (2 + 3 + 2 + 2 + score + 2 + share + 2)  # what the actor and the bar share
    bar = min(24, rest // 3) if rest >= 30 else 0  # narrow: the ids get the room
    actor = min(40, rest - bar)
    head = f"  {_rjust('#', 3)}  {pad('actor', actor)}  {_rjust('score', score)}  {_rjust('share', share)}"
    sheet.add([(head, "dim")])
    top_score = max(t.score for t in r.top_engagers)
    for rank, (engager, (score_text, share_text)) in enumerate(zip(r.top_engagers, rows, strict=True), start=1):
        cells = (
            f"  {_rjust(str(rank), 3)}  {pad(visible(engager.actor_id), actor)}  "
            f"{_rjust(score_text, score)}  {_rjust(share_text, share)}"
        )
        sheet.add([(cells + "  ", ""), (_bar(engager.score, top_score, bar), "bar")] if bar else [(cells, "")])


def _trend(sheet: _Sheet, days: list[Day]) -> None:
    """Sparklines of engagers, followers and the rate per UTC day, with their min and max."""
    if not days:
        sheet.add([("  no days in the period", "dim")])
        return
    sheet.add([(f"  {days[0].day} → {days[-1].day}, {len(days)} UTC days", "dim")])
    series: list[tuple[str, list[float | None], list[str]]] = [
        ("engagers", [d.engagers for d in days], [count(d.engagers) for d in days]),
        ("followers", [d.followers for d in days], [count(d.followers) for d in days]),
        ("rate", [d.engagement_rate for d in days], [pct(d.engagement_rate) for d in days]),
    ]
    labels = [_extremes(values, text) for _, values, text in series]
    label_cols = max(display_width(label) for label in labels)
    inline = sheet.width - 2 - 10 - 2 - 2 - label_cols
    below = inline < min(len(days), sheet.width - 14)  # min and max on a line of their own: more columns
    cols = min(len(days), sheet.width - 14 if below else inline)
    for (name, values, _), label in zip(series, labels, strict=True):
        spark = sparkline(values, cols)
        if below:
            sheet.add([("  " + pad(name, 10) + "  ", ""), (spark, "bar")])
            sheet.add([(" " * 14 + label, "dim")])
        else:
            sheet.add([("  " + pad(name, 10) + "  ", ""), (pad(spark, cols), "bar"), ("  " + label, "dim")])
    if cols < len(days):
        sheet.add([(f"  1 column ≈ {len(days) / cols:.1f} days (mean)", "dim")])


def _extremes(values: list[float | None], text: list[str]) -> str:
    defined = [(v, t) for v, t in zip(values, text, strict=True) if v is not None]
    if not defined:
        return f"min {UNDEFINED}  max {UNDEFINED}"
    return f"min {min(defined)[1]}  max {max(defined)[1]}"


def sparkline(values: list[float | None], cols: int) -> str:
    """One character per value (``▁`` lowest to ``█`` highest of the values shown, ``—`` undefined); more
    values than ``cols`` are averaged into ``cols`` consecutive groups (a group of only None stays None)."""
    if cols <= 0 or not values:
        return ""
    if len(values) > cols:
        groups = [values[i * len(values) // cols : (i + 1) * len(values) // cols] for i in range(cols)]
        values = [_mean(g) for g in groups]
    defined = [v for v in values if v is not None]
    lo, hi = (min(defined), max(defined)) if defined else (0.0, 0.0)

    def level(v: float) -> str:
        if hi == lo:
            return SPARKS[0] if v == 0 else SPARKS[3]
        return SPARKS[round((v - lo) / (hi - lo) * (len(SPARKS) - 1))]

    return "".join(UNDEFINED if v is None else level(v) for v in values)


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None
