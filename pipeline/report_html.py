"""The account report as one self-contained HTML page: :func:`render_html`.

The page needs nothing but itself: inline CSS, inline SVG charts, no script, no external reference (no
``http://`` or ``https://`` anywhere, not even an SVG namespace), so it opens offline and can be mailed. It
shows the rows of :func:`pipeline.report_format.sections` with the terminal's strings, and draws:

- the connected-vs-engaged picture: followers and engagers as two bars on one scale;
- followers vs engagers per day (one scale, so the gap is plain) and the daily engagement rate;
- the responses: conversations answered within 24 h against the rest. The report holds the counts and the
  median first-response delay, not each conversation's delay, so the page shows no delay distribution and
  cannot split "answered later" from "never answered" (that needs per-conversation delays or more counts in
  :class:`~pipeline.report_model.AccountReport`);
- the top engagers as horizontal bars.

Every text that comes from the data (ids, day labels) goes through
:func:`~pipeline.report_format.visible` then :func:`html.escape` (quotes included), so an id such as
``<script>`` or ``"`` is shown, never interpreted. Every element is closed explicitly.
"""

from __future__ import annotations

import html
import math

from pipeline.report_format import (
    UNDEFINED,
    Row,
    count,
    duration,
    engager_shares,
    pct,
    period,
    plural,
    sections,
    visible,
)
from pipeline.report_model import AccountReport, Day

CSS = """
:root { color-scheme: light dark; --fg: #1d2430; --muted: #5b6575; --bg: #ffffff; --card: #f3f5f8;
  --track: #e2e6ec; --followers: #7f9cc6; --engagers: #dd6b20; --good: #2f855a; --rest: #a0aec0; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e9ef; --muted: #9aa4b5; --bg: #14181f;
  --card: #1e242d; --track: #2c333e; } }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); max-width: 62rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.45rem; margin: 0 0 .3rem; overflow-wrap: anywhere; }
h2 { font-size: 1.1rem; margin: 2.2rem 0 .6rem; padding-bottom: .25rem; border-bottom: 1px solid var(--track); }
p { margin: .4rem 0; }
.muted { color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: .75rem; margin: .5rem 0 1rem; }
.card { background: var(--card); border-radius: 6px; padding: .55rem .9rem; min-width: 9.5rem; }
.card .value { font-size: 1.6rem; font-variant-numeric: tabular-nums; }
.card .label { color: var(--muted); font-size: .85rem; }
table { border-collapse: collapse; }
th, td { padding: .2rem .8rem .2rem 0; text-align: left; vertical-align: middle; }
th { font-weight: normal; }
thead th { color: var(--muted); font-size: .85rem; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.id { display: inline-block; max-width: 22rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;
  vertical-align: bottom; }
.track { display: flex; width: 14rem; height: .85rem; background: var(--track); border-radius: 3px;
  overflow: hidden; }
.track.wide { width: 100%; max-width: 40rem; height: 1.3rem; }
.fill { height: 100%; background: var(--engagers); }
.fill.followers { background: var(--followers); }
.fill.good { background: var(--good); }
.fill.rest { background: var(--rest); }
.over { color: var(--engagers); font-weight: bold; }
.key { display: inline-block; width: .8rem; height: .8rem; border-radius: 2px; vertical-align: -1px;
  margin: 0 .3rem 0 .9rem; }
.key.followers, svg .followers { background: var(--followers); stroke: var(--followers); }
.key.engagers { background: var(--engagers); }
.key.good { background: var(--good); }
.key.rest { background: var(--rest); }
svg { display: block; width: 100%; max-width: 46rem; height: auto; margin: .4rem 0; }
svg text { fill: var(--muted); font: 11px system-ui, sans-serif; }
svg .grid { stroke: var(--track); stroke-width: 1; }
svg .bar { fill: var(--engagers); }
svg .line { fill: none; stroke-width: 2; }
svg .rate { stroke: var(--engagers); }
svg .dot { fill: var(--followers); }
svg .dot.rate { fill: var(--engagers); stroke: none; }
details { margin: .6rem 0; }
footer { margin: 2.5rem 0 1rem; color: var(--muted); font-size: .85rem; }
"""


def render_html(report: AccountReport) -> str:
    """The report as a complete HTML5 document (a ``str``; write it as UTF-8). Self-contained, script-free,
    every data text escaped (see the module docstring); ``None`` shown as ``—``."""
    r = report
    start, end = period(r)
    before = {"Connected vs engaged": _glance(r), "Responsiveness": _responses(r)}
    after = {"Top engagers": _top_engagers(r)}
    body: list[str] = [
        "<header>",
        f"<h1>Account report: <span>{_h(r.account_id)}</span></h1>",
        f'<p class="muted">{_h(start)} → {_h(end)} ({_h(plural(r.days, "day"))}, end exclusive) · as of {_h(end)}</p>',
        "</header>",
    ]
    for title, rows in sections(r):
        slug = title.lower().replace(" ", "-")
        body += [f'<section id="{slug}">', f"<h2>{_h(title)}</h2>", before.get(title, ""), _rows(rows)]
        body += [after.get(title, ""), "</section>"]
        if title == "Connected vs engaged":
            body += ['<section id="over-time">', "<h2>Followers vs engagers over time</h2>", _trend(r.daily)]
            body.append("</section>")
    body.append(f"<footer><p>{UNDEFINED} undefined (a division by zero), never 0.</p></footer>")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>Account report: {_h(r.account_id)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            *[part for part in body if part],
            "</body>",
            "</html>",
            "",
        ]
    )


def _h(text: str) -> str:
    """Data text for HTML: visible (no control or bidi characters), then escaped, quotes included."""
    return html.escape(visible(text), quote=True)


def _percent(value: float, full: float) -> str:
    """``value`` of ``full`` as a CSS width, clamped to 0..100 %; a value above 0 gets at least 2 px."""
    share = 0.0 if full <= 0 else max(0.0, min(value / full, 1.0))
    return f"max({share * 100:.2f}%, 2px)" if value > 0 else "0%"


def _meter(value: float, full: float, css: str = "", wide: bool = False) -> str:
    """``value`` of ``full`` as a bar on a track; ``▶`` after it when ``value`` is beyond ``full``."""
    over = ' <span class="over" title="beyond the scale">▶</span>' if value > full else ""
    track, fill = "track wide" if wide else "track", f"fill {css}" if css else "fill"
    return f'<div class="{track}"><div class="{fill}" style="width:{_percent(value, full)}"></div></div>{over}'


def _rows(rows: list[Row]) -> str:
    out = ['<table class="rows">']
    for row in rows:
        meter = "" if row.meter is None else _meter(*row.meter)
        out.append(
            f'<tr><th scope="row">{_h(row.label)}</th><td class="num">{_h(row.value)}</td>'
            f'<td>{meter}</td><td class="muted">{_h(row.note)}</td></tr>'
        )
    out.append("</table>")
    return "\n".join(out)


def _card(label: str, value: str) -> str:
    return f'<div class="card"><div class="value">{_h(value)}</div><div class="label">{_h(label)}</div></div>'


def _glance(r: AccountReport) -> str:
    """Four cards and two bars on one scale: how many of the connected are engaged."""
    scale = max(r.followers, r.engagers)
    cards = [
        _card("followers", count(r.followers)),
        _card("engagers", count(r.engagers)),
        _card("engagement rate", pct(r.engagement_rate)),
        _card("human engagement rate", pct(r.human_engagement_rate)),
    ]
    bars = "".join(
        f'<tr><th scope="row">{name}</th><td class="num">{_h(count(n))}</td>'
        f"<td>{_meter(n, scale, css, wide=True)}</td></tr>"
        for name, n, css in (("followers", r.followers, "followers"), ("engagers", r.engagers, ""))
    )
    note = ""
    if r.followers == 0:
        note = '<p class="muted">No followers: the engagement rates are undefined.</p>'
    elif r.engagers > r.followers:
        note = '<p class="muted">More distinct engagers than followers.</p>'
    return f'<div class="cards">{"".join(cards)}</div>\n<table class="glance">{bars}</table>{note}'


def _trend(days: list[Day]) -> str:
    if not days:
        return '<p class="muted">No days in the period.</p>'
    table = "".join(
        f'<tr><td>{_h(d.day)}</td><td class="num">{_h(count(d.engagers))}</td>'
        f'<td class="num">{_h(count(d.followers))}</td><td class="num">{_h(pct(d.engagement_rate))}</td></tr>'
        for d in days
    )
    return (
        f'<p class="muted">per UTC day: <span class="key followers"></span>followers at the day\'s end'
        f'<span class="key engagers"></span>distinct engagers that day</p>'
        f"{_counts_chart(days)}"
        f"<h3>Engagement rate per UTC day</h3>{_rate_chart(days)}"
        f'<details><summary>Daily numbers</summary><table><thead><tr><th>day</th><th class="num">engagers</th>'
        f'<th class="num">followers</th><th class="num">rate</th></tr></thead><tbody>{table}</tbody></table>'
        f"</details>"
    )


W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 230, 64, 14, 12, 30


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten that is >= ``value`` (> 0): a chart's
    scale whose half is a round number too."""
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * power >= value * (1 - 1e-12))


def _frame(days: list[Day], height: int, top_label: str, mid_label: str, label: str) -> list[str]:
    """An SVG's opening, gridlines at 0, half and full scale with their labels, and the first/last day."""
    plot = height - TOP - BOTTOM
    parts = [f'<svg viewBox="0 0 {W} {height}" role="img" aria-label="{_h(label)}">']
    for frac, text in ((0.0, "0"), (0.5, mid_label), (1.0, top_label)):
        y = TOP + plot - frac * plot
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}"></line>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_h(text)}</text>')
    baseline = height - BOTTOM + 18
    parts.append(f'<text x="{LEFT}" y="{baseline}">{_h(days[0].day)}</text>')
    if len(days) > 1:
        parts.append(f'<text x="{W - RIGHT}" y="{baseline}" text-anchor="end">{_h(days[-1].day)}</text>')
    return parts


def _counts_chart(days: list[Day]) -> str:
    """Engagers as bars and followers as a line, on one scale from 0."""
    top = nice_ceiling(max(max(d.followers for d in days), max(d.engagers for d in days), 1))
    plot, band = H - TOP - BOTTOM, (W - LEFT - RIGHT) / len(days)
    half = f"{top / 2:,.1f}".removesuffix(".0")
    parts = _frame(days, H, f"{top:,.0f}", half, "Followers and engagers per day")

    def y(value: float) -> float:
        return TOP + plot - value / top * plot

    for i, d in enumerate(days):
        x, h = LEFT + i * band + band * 0.15, d.engagers / top * plot
        tip = f"{d.day}: {plural(d.engagers, 'engager')}, {plural(d.followers, 'follower')}"
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y(d.engagers):.1f}" width="{band * 0.7:.1f}" height="{h:.1f}">'
            f"<title>{_h(tip)}</title></rect>"
        )
    points = " ".join(f"{LEFT + (i + 0.5) * band:.1f},{y(d.followers):.1f}" for i, d in enumerate(days))
    parts.append(f'<polyline class="line followers" points="{points}"></polyline>')
    for i, d in enumerate(days):
        tip = f"{d.day}: {plural(d.followers, 'follower')}"
        parts.append(
            f'<circle class="dot" cx="{LEFT + (i + 0.5) * band:.1f}" cy="{y(d.followers):.1f}" r="2.5">'
            f"<title>{_h(tip)}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _rate_chart(days: list[Day]) -> str:
    """The daily rate as a line broken where it is undefined (no followers that day)."""
    rates = [d.engagement_rate for d in days]
    defined = [rate for rate in rates if rate is not None]
    if not defined:
        return f'<p class="muted">Undefined ({UNDEFINED}) every day: no followers.</p>'
    height = 170
    top = nice_ceiling(max(max(defined), 1e-6))
    plot, band = height - TOP - BOTTOM, (W - LEFT - RIGHT) / len(days)
    parts = _frame(days, height, pct(top), pct(top / 2), "Engagement rate per day")

    def point(i: int, rate: float) -> str:
        return f"{LEFT + (i + 0.5) * band:.1f},{TOP + plot - rate / top * plot:.1f}"

    runs: list[list[str]] = [[]]
    for i, rate in enumerate(rates):
        if rate is None:
            runs.append([])
        else:
            runs[-1].append(point(i, rate))
    for run in runs:
        if len(run) > 1:
            parts.append(f'<polyline class="line rate" points="{" ".join(run)}"></polyline>')
    for i, (d, rate) in enumerate(zip(days, rates, strict=True)):
        if rate is not None:
            x, y = point(i, rate).split(",")
            parts.append(
                f'<circle class="dot rate" cx="{x}" cy="{y}" r="2.5"><title>{_h(d.day)}: {_h(pct(rate))}</title>'
                "</circle>"
            )
    parts.append("</svg>")
    gaps = sum(1 for rate in rates if rate is None)
    note = f'<p class="muted">{plural(gaps, "day")} undefined ({UNDEFINED}): no followers.</p>' if gaps else ""
    return "".join(parts) + note


DELAY_LABELS = {
    "before": "before the conversation",
    "within_5m": "within 5 min",
    "within_1h": "5 min to 1 h",
    "within_4h": "1 h to 4 h",
    "within_24h": "4 h to 24 h",
    "over_24h": "after more than 24 h",
    "unanswered": "no response",
}


def _responses(r: AccountReport) -> str:
    """Conversations answered within 24 h against the rest, as one stacked bar with the median beside it,
    then the response-delay distribution: conversations per first-response delay bucket."""
    total, within = r.inbound_conversations, r.answered_24h
    if total == 0:
        return f'<p class="muted">No inbound conversations: the response rate is undefined ({UNDEFINED}).</p>'
    rest = total - within
    return (
        f'<div class="track wide"><div class="fill good" style="width:{_percent(within, total)}" '
        f'title="answered within 24 h: {within:,}"></div><div class="fill rest" style="width:{_percent(rest, total)}" '
        f'title="not within 24 h: {rest:,}"></div></div>'
        f'<p><span class="key good"></span>answered within 24 h: {_h(count(within))} ({_h(pct(r.response_rate))})'
        f'<span class="key rest"></span>not within 24 h (later or never): {_h(count(rest))}'
        f" · median first response: {_h(duration(r.median_response_seconds))}</p>"
        f"{_delay_distribution(r.response_delays, total)}"
    )


def _delay_distribution(delays: dict[str, int], total: int) -> str:
    """One row per delay bucket: its conversations, their share of all, a bar (answered in 24 h: good)."""
    rows = "".join(
        f'<tr><th scope="row">{_h(label)}</th><td class="num">{_h(count(delays.get(name, 0)))}</td>'
        f'<td class="num">{_h(pct(delays.get(name, 0) / total))}</td>'
        f"<td>{_meter(delays.get(name, 0), total, 'good' if name.startswith('within') else 'rest')}</td></tr>"
        for name, label in DELAY_LABELS.items()
    )
    return (
        "<h3>First response delay</h3>"
        '<table class="rows delays"><thead><tr><th>first response</th><th class="num">conversations</th>'
        f'<th class="num">share</th><th></th></tr></thead><tbody>{rows}</tbody></table>'
    )


def _top_engagers(r: AccountReport) -> str:
    if not r.top_engagers:
        return '<p class="muted">No inbound engagement in the period.</p>'
    top = max(t.score for t in r.top_engagers)
    rows = "".join(
        f'<tr><td class="num">{rank}</td><td><span class="id" title="{_h(t.actor_id)}">{_h(t.actor_id)}</span></td>'
        f'<td class="num">{_h(count(t.score))}</td><td class="num">{_h(pct(share))}</td>'
        f"<td>{_meter(t.score, top)}</td></tr>"
        for rank, (t, share) in enumerate(engager_shares(r), start=1)
    )
    return (
        '<table class="top"><thead><tr><th class="num">#</th><th>actor</th><th class="num">score</th>'
        f'<th class="num">share</th><th></th></tr></thead><tbody>{rows}</tbody></table>'
    )
