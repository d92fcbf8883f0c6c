"""The account report's renderings: every number where it belongs, ``—`` for undefined, no line wider than the
terminal, hostile ids shown (escaped, truncated) and never interpreted, and an HTML page that parses, balances
and refers to nothing outside itself. Reports come from the reference on the generated data and by hand."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from pipeline.report_data import BOT_TARGET, NO_FOLLOWERS, NO_INBOUND, RESPONDER, SCENARIO_ACCOUNTS, report_events
from pipeline.report_format import duration, fit, pct, sections, visible
from pipeline.report_html import DELAY_LABELS
from pipeline.report_model import DUNBAR, AccountReport, Day, TopEngager
from pipeline.report_reference import reference_report, store
from pipeline.report_render import MIN_WIDTH, render_html, render_terminal, sparkline
from tests.report_fixtures import zero_report

WIDTHS = (MIN_WIDTH, 57, 80, 100, 160)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG_ID = "long-" + "x" * 495
HOSTILE = [
    "<script>alert(1)</script>",
    "o'brien\\x",
    'quote"d',
    "用户_42",
    LONG_ID,
    "a&b&amp;c <b>",
    "tab\there\nnew\x1b[31mred",
    "\u202eevil-rtl",
    "🙂🚀" * 30,
    "e\u0301mile",
]


def columns(text: str) -> int:
    """Display columns, measured here independently of the renderer: wide/fullwidth 2, marks and ZWJ 0."""
    total = 0
    for ch in text:
        if unicodedata.category(ch) in ("Mn", "Me") or ch == "\u200d":
            continue
        total += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return total


def value_of(text: str, label: str) -> str:
    """The value shown after ``label`` on the terminal line that starts with it."""
    for line in text.splitlines():
        cells = re.split(r" {2,}", line.strip())
        if cells[0] == label:
            return cells[1]
    raise AssertionError(f"no line labelled {label!r}")


@pytest.fixture(scope="module")
def generated() -> dict[str, AccountReport]:
    """The reference's reports of every scenario account and of the busiest bulk account (seed 11)."""
    data = store(report_events(11))
    busiest = max((a for a in data.to_account if a.startswith("acct-")), key=lambda a: len(data.to_account[a]))
    return {a: reference_report(data, a) for a in (*SCENARIO_ACCOUNTS, busiest)}


def undefined_report() -> AccountReport:
    """Every field that can be None is None; no followers, no days, no engagers."""
    return zero_report("<script>alert(1)</script>", 1_770_000_000_000)


def hostile_report() -> AccountReport:
    """Ten hostile top engagers, zero followers, a 500-character account id, undefined daily rates."""
    top = [TopEngager(actor, 100 - 7 * i) for i, actor in enumerate(HOSTILE)]
    daily = [Day(f"2026-02-{d:02d}", d % 4, 0, None) for d in range(1, 29)]
    return replace(
        undefined_report(),
        account_id=LONG_ID,
        engagers=12,
        likes=30,
        replies=4,
        mentions=3,
        top_engagers=top,
        top10_share=sum(t.score for t in top) / 1000,
        bot_share=0.25,
        daily=daily,
    )


def big_report() -> AccountReport:
    """Large numbers, more engagers than followers, a circle beyond Dunbar, a negative median, 90 days."""
    daily = [Day(f"d{i}", 1000 + i * 37 % 500, 900 + i, (1000 + i * 37 % 500) / (900 + i)) for i in range(90)]
    return replace(
        undefined_report(),
        account_id="用户_big",
        days=90,
        followers=1_234_567,
        engagers=2_345_678,
        engagement_rate=2_345_678 / 1_234_567,
        human_engagement_rate=0.00001,
        inbound_conversations=10_000,
        answered_24h=9_999,
        response_rate=0.9999,
        median_response_seconds=-5.0,
        reciprocal_circle=300,
        top_engagers=[TopEngager("whale", 123_456_789)],
        top10_share=0.5,
        daily=daily,
    )


def hand_built() -> list[AccountReport]:
    return [undefined_report(), hostile_report(), big_report()]


def all_reports(generated: dict[str, AccountReport]) -> list[AccountReport]:
    return [*generated.values(), *hand_built()]


# --- terminal ---------------------------------------------------------------------------------------------


def test_no_line_wider_than_the_terminal(generated: dict[str, AccountReport]) -> None:
    for report in all_reports(generated):
        for width in WIDTHS:
            text = render_terminal(report, width)
            assert text.endswith("\n")
            for line in text.splitlines():
                assert columns(line) <= width, (report.account_id[:20], width, line)
                assert line == line.rstrip(" ")
                assert not any(unicodedata.category(ch) == "Cc" for ch in line), repr(line)


def test_nothing_of_the_generated_reports_is_cut(generated: dict[str, AccountReport]) -> None:
    """Their ids are short: the layout fits them whole, and drops notes rather than cutting them."""
    for report in generated.values():
        for width in WIDTHS:
            assert "…" not in render_terminal(report, width), (report.account_id, width)


def test_every_row_shows_its_value(generated: dict[str, AccountReport]) -> None:
    for report in all_reports(generated):
        for width in WIDTHS:  # values are never cut, whatever the width
            text = render_terminal(report, width)
            for _, rows in sections(report):
                for row in rows:
                    assert value_of(text, row.label) == row.value
            assert value_of(text, "followers") == f"{report.followers:,}"
            assert value_of(text, "engagers") == f"{report.engagers:,}"


def test_fields_land_in_their_rows(generated: dict[str, AccountReport]) -> None:
    for report in generated.values():
        text = render_terminal(report)
        assert value_of(text, "engagement rate") == pct(report.engagement_rate)
        assert value_of(text, "human engagement rate") == pct(report.human_engagement_rate)
        assert value_of(text, "returning engagers") == pct(report.returning_engager_rate)
        assert value_of(text, "loyal core") == f"{report.loyal_core:,}"
        assert value_of(text, "inbound conversations") == f"{report.inbound_conversations:,}"
        assert value_of(text, "answered within 24 h") == f"{report.answered_24h:,}"
        assert value_of(text, "response rate") == pct(report.response_rate)
        assert value_of(text, "median response time") == duration(report.median_response_seconds)
        assert value_of(text, "outbound") == f"{report.outbound:,}"
        assert value_of(text, "responses sent") == f"{report.responses_sent:,}"
        assert value_of(text, "dialogue share") == pct(report.dialogue_share)
        assert value_of(text, "two-way relationships") == f"{report.reciprocal_circle:,}"
        assert value_of(text, "top-10 share") == pct(report.top10_share)
        assert value_of(text, "bot share") == pct(report.bot_share)
        assert value_of(text, "inbound events") == f"{report.likes + report.replies + report.mentions:,}"


def test_spot_values_of_the_responder(generated: dict[str, AccountReport]) -> None:
    text = render_terminal(generated[RESPONDER])
    assert text.splitlines()[0] == "ACCOUNT REPORT  o'brien\\x"
    assert "2026-01-07T12:59:47.655Z → 2026-02-04T12:59:47.655Z" in text
    assert value_of(text, "followers") == "12"
    assert value_of(text, "engagers") == "10"
    assert value_of(text, "engagement rate") == "83.3%"
    assert value_of(text, "inbound events") == "12"
    assert "3 likes · 3 replies · 6 mentions" in text
    assert value_of(text, "inbound conversations") == "9"
    assert value_of(text, "answered within 24 h") == "5"
    assert "4 not within 24 h" in text
    assert value_of(text, "response rate") == "55.6%"
    assert value_of(text, "median response time") == "1 min 45 s"
    assert value_of(text, "outbound") == "15"
    assert value_of(text, "responses sent") == "11"
    assert value_of(text, "dialogue share") == "73.3%"
    assert value_of(text, "two-way relationships") == "9"
    assert value_of(text, "against Dunbar's ~150") == "6.0%"
    assert re.search(r"^ +4 +用户_42 +3 +12\.5%", text, re.MULTILINE)  # score 3 of all 24
    assert "29 UTC days" in text


def test_spot_values_of_the_edges(generated: dict[str, AccountReport]) -> None:
    no_followers = render_terminal(generated[NO_FOLLOWERS])
    assert value_of(no_followers, "followers") == "0"
    assert value_of(no_followers, "engagement rate") == "—"
    assert value_of(no_followers, "human engagement rate") == "—"
    assert "no followers: the rates are undefined" in no_followers
    assert re.search(r"^  rate +—{29}  min —  max —$", no_followers, re.MULTILINE)
    no_inbound = render_terminal(generated[NO_INBOUND])
    assert value_of(no_inbound, "engagement rate") == "0.0%"  # defined: 0 of 100 followers
    assert value_of(no_inbound, "response rate") == "—"
    assert value_of(no_inbound, "bot share") == "—"
    assert "no inbound engagement in the period" in no_inbound
    bots = render_terminal(generated[BOT_TARGET])
    assert value_of(bots, "bot share") == "3.7%"
    assert value_of(bots, "top-10 share") == "77.3%"
    assert re.search(r"^ +1 +bob +6 +13\.6%", bots, re.MULTILINE)


def test_undefined_is_a_dash_never_zero() -> None:
    text = render_terminal(undefined_report())
    for label in ("engagement rate", "human engagement rate", "returning engagers", "response rate",
                  "median response time", "dialogue share", "top-10 share", "bot share"):  # fmt: skip
        assert value_of(text, label) == "—", label
    others = [line for line in text.splitlines() if not line.startswith("  against Dunbar's")]
    assert not any("%" in line for line in others)  # no share is defined but the circle's (0 of ~150)
    assert value_of(text, "against Dunbar's ~150") == "0.0%"
    assert "no days in the period" in text
    assert "no inbound engagement in the period" in text


def test_hostile_ids_are_escaped_and_truncated() -> None:
    for width in WIDTHS:
        text = render_terminal(hostile_report(), width)
        header = text.splitlines()[0]
        assert header.startswith("ACCOUNT REPORT  long-xxx") and header.endswith("…")
        assert LONG_ID not in text
        assert "\x1b" not in text and "\t" not in text and "\u202e" not in text
        assert value_of(text, "engagement rate") == "—"
    wide = render_terminal(hostile_report(), 160)
    assert "<script>alert(1)</script>" in wide  # shown as it is: a terminal interprets no markup
    assert "tab\\x09here\\x0anew\\x1b[31mred" in wide
    assert "\\u202eevil-rtl" in wide
    assert "用户_42" in wide and 'quote"d' in wide and "o'brien\\x" in wide
    assert re.search(r"^ +10 +e\u0301mile +37 ", wide, re.MULTILINE)
    assert re.search(r"^ +rate +—{28}  min —  max —$", wide, re.MULTILINE)


def test_big_numbers_overflow_and_negative_median() -> None:
    text = render_terminal(big_report())
    assert value_of(text, "followers") == "1,234,567"
    assert value_of(text, "engagers") == "2,345,678"
    assert value_of(text, "engagement rate") == "190.0%"
    assert value_of(text, "human engagement rate") == "<0.1%"
    assert value_of(text, "response rate") == ">99.9%"
    assert value_of(text, "median response time") == "-5 s"
    assert "more distinct engagers than followers" in text
    assert "▶" in text and "beyond ~150 a person can hold" in text
    assert re.search(r"^ +1 +whale +123,456,789 +50\.0%", text, re.MULTILINE)
    assert "min 900  max 989" in text and "min 1,000  max 1,499" in text
    narrow = render_terminal(big_report(), 60)
    assert "1 column ≈" in narrow  # 90 days do not fit 46 columns: averaged


def test_color_only_adds_escapes(generated: dict[str, AccountReport]) -> None:
    for report in (generated[RESPONDER], hostile_report()):
        colored = render_terminal(report, 80, color=True)
        assert "\x1b[" in colored
        assert ANSI.sub("", colored) == render_terminal(report, 80)
    assert "\x1b" not in render_terminal(generated[RESPONDER])


def test_width_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError):
        render_terminal(undefined_report(), MIN_WIDTH - 1)


# --- values ----------------------------------------------------------------------------------------------


def test_formats() -> None:
    assert [pct(v) for v in (None, 0.0, 0.0001, 0.2398, 0.9996, 1.0, 2.5)] == [
        "—", "0.0%", "<0.1%", "24.0%", ">99.9%", "100.0%", "250.0%"
    ]  # fmt: skip
    seconds = (None, 0.0, 0.4, 4.5, 5.0, 45.2, 105.0, 110.066, 3600, 11_100, 86_400 * 2 + 4 * 3600)
    assert [duration(s) for s in seconds] == [
        "—", "0 s", "400 ms", "4.5 s", "5 s", "45 s", "1 min 45 s", "1 min 50 s", "1 h", "3 h 5 min", "2 d 4 h"
    ]  # fmt: skip
    assert duration(-90.0) == "-1 min 30 s"
    assert visible("a\nb\x1b\u202e\u200dc") == "a\\x0ab\\x1b\\u202e\u200dc"
    assert fit("用户_42", 4) == "用…" and columns(fit("🙂🚀🙂", 5)) <= 5 and fit("abc", 3) == "abc"


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5, 5], 3) == "▄▄▄" and sparkline([0, 0], 2) == "▁▁"
    assert sparkline([None, 1, None, 3], 4) == "—▁—█"
    assert sparkline([None, None], 2) == "——"
    assert sparkline([1.0, 3.0, None, None, 8.0, 8.0], 3) == "▁—█"  # means of pairs: 2, None, 8
    assert len(sparkline(list(range(90)), 29)) == 29


# --- HTML ------------------------------------------------------------------------------------------------

VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class Page(HTMLParser):
    """Parses the page and checks that every element is closed in order."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.decl: list[str] = []
        self.feed(page)
        self.close()
        assert self.stack == [], f"unclosed: {self.stack}"

    def handle_decl(self, decl: str) -> None:
        self.decl.append(decl)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs += attrs
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs += attrs

    def handle_endtag(self, tag: str) -> None:
        assert self.stack, f"</{tag}> closes nothing"
        open_tag = self.stack.pop()
        assert open_tag == tag, f"</{tag}> closes <{open_tag}>"

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def data(self) -> str:
        return "".join(self.text)


def test_html_parses_balances_and_stands_alone(generated: dict[str, AccountReport]) -> None:
    for report in all_reports(generated):
        page = render_html(report)
        parsed = Page(page)
        assert parsed.decl == ["DOCTYPE html"]
        assert {"html", "head", "body", "style", "title"} <= parsed.tags
        assert "script" not in parsed.tags and "<script" not in page.lower()
        assert "http://" not in page and "https://" not in page
        assert not {"link", "img", "iframe", "object", "embed"} & parsed.tags
        assert not [name for name, _ in parsed.attrs if name in ("src", "href") or name.startswith("on")]
        assert "\x1b" not in page and "\u202e" not in page


def test_html_shows_hostile_ids_as_text() -> None:
    page = render_html(hostile_report())
    parsed = Page(page)
    for actor in HOSTILE:
        assert visible(actor) in parsed.data, actor[:30]
        assert ("title", visible(actor)) in parsed.attrs  # the full id on hover
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "quote&quot;d" in page and "o&#x27;brien\\x" in page and "a&amp;b&amp;amp;c &lt;b&gt;" in page
    assert LONG_ID in parsed.data
    assert "Undefined (—) every day: no followers." in parsed.data


def test_html_shows_the_terminal_numbers(generated: dict[str, AccountReport]) -> None:
    for report in all_reports(generated):
        data = Page(render_html(report)).data
        for _, rows in sections(report):
            for row in rows:
                assert f"{row.label}{row.value}" in data, row.label
        for day in report.daily:
            assert f"{day.day}{day.engagers:,}{day.followers:,}{pct(day.engagement_rate)}" in data
    responder = Page(render_html(generated[RESPONDER])).data
    assert "answered within 24 h: 5 (55.6%)" in responder
    assert "not within 24 h (later or never): 4" in responder
    assert "median first response: 1 min 45 s" in responder
    delays = generated[RESPONDER].response_delays
    assert sum(delays.values()) == 9 and sum(v for k, v in delays.items() if k.startswith("within")) == 5
    for name, label in DELAY_LABELS.items():  # the distribution: label, conversations, share
        assert f"{label}{delays[name]:,}{pct(delays[name] / 9)}" in responder, name
    assert "o'brien\\x" in responder and "1r-fan-s312.5%" in responder  # rank, actor, score, share


def test_html_without_data() -> None:
    data = Page(render_html(undefined_report())).data
    assert "No days in the period." in data
    assert "No inbound conversations: the response rate is undefined (—)." in data
    assert "No inbound engagement in the period." in data
    assert "0.0%" not in data.replace("against Dunbar's ~1500.0%", "")
    assert f"against Dunbar's ~{DUNBAR}0.0%" in data
