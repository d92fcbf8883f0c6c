"""A guard for SQL that must only read: one statement, starting with a reading keyword, reaching nothing
outside the warehouse's own tables.

It is a first line of defence for the embedded store's ``/query`` endpoint and ``engagement sql``; on a
server, the read-only ClickHouse user (or read-only session) is the real guarantee. chDB has no users, so on
the embedded store this guard is all there is.

How it decides: :func:`tokens` splits the statement left to right the way ClickHouse's lexer does (string
literals with ``''`` and backslash escapes, ``"..."`` and ```...``` quoted identifiers, ``--`` and ``# ``
comments, ``/* */`` comments), so a quote or comment marker inside a literal hides nothing, and every check
runs on those tokens. Anything the tokenizer does not know (an unterminated literal or comment, a nested
``/*``, a backslash in a quoted identifier, a character such as ``$``, ``@`` or ``\\`` outside a literal)
is refused rather than guessed at. Then:

- one statement (a ``;`` only at the end), whose first word is one of :data:`READ_KEYWORDS`;
- no ``INTO`` anywhere (``INTO OUTFILE``); an ``EXPLAIN`` of a writing statement is refused too;
- a table function (a call where a table goes: after ``FROM``, ``JOIN``, a comma of a ``FROM`` list,
  ``DESCRIBE [TABLE]``, or after ``IN``, where ``tuple()`` and ``array()`` are allowed too) must be one of
  :data:`ALLOWED_TABLE_FUNCTIONS`, which read nothing but their arguments; anything else (``file``, ``url``,
  ``remote``, ``s3``, ``merge``, ``iceberg*``, one added in a later ClickHouse...) is refused, whatever its
  spelling or quoting;
- the functions of :data:`OUTSIDE_FUNCTIONS` (``file()`` is also a scalar function reading a file) are
  refused as a call anywhere.

``%(name)s`` parameters are bound before the checks (:func:`check_read_only` with ``params``), so what is
checked is the text ClickHouse receives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.warehouse.params import BindError, bind

READ_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})

# Table functions that read nothing but their own arguments (compared case-insensitively). view() takes a
# subquery, which is checked like the rest of the statement.
ALLOWED_TABLE_FUNCTIONS = (
    "numbers",
    "numbers_mt",
    "zeros",
    "zeros_mt",
    "values",
    "generateRandom",
    "generate_series",
    "generateSeries",
    "null",
    "view",
)
_ALLOWED = frozenset(name.lower() for name in ALLOWED_TABLE_FUNCTIONS)
# After IN, a call may also build the set itself.
_IN_CONSTRUCTORS = frozenset({"tuple", "array"})

# Functions that reach files, URLs, other servers or programs, refused as a call in any position (the
# allow-list already refuses them, and every other table function, where a table goes).
OUTSIDE_FUNCTIONS = frozenset(
    name.lower()
    for name in (
        "file",
        "fileCluster",
        "url",
        "urlCluster",
        "remote",
        "remoteSecure",
        "cluster",
        "clusterAllReplicas",
        "merge",
        "s3",
        "s3Cluster",
        "gcs",
        "cosn",
        "oss",
        "hdfs",
        "hdfsCluster",
        "azureBlobStorage",
        "azureBlobStorageCluster",
        "mysql",
        "postgresql",
        "mongodb",
        "redis",
        "sqlite",
        "jdbc",
        "odbc",
        "executable",
        "input",
        "iceberg",
        "icebergS3",
        "icebergS3Cluster",
        "icebergCluster",
        "icebergAzure",
        "icebergAzureCluster",
        "icebergHDFS",
        "icebergHDFSCluster",
        "icebergLocal",
        "icebergLocalCluster",
        "deltaLake",
        "deltaLakeCluster",
        "deltaLakeS3",
        "deltaLakeAzure",
        "deltaLakeLocal",
        "hudi",
        "hudiCluster",
        "paimon",
        "paimonS3",
        "paimonAzure",
        "paimonHDFS",
        "paimonLocal",
        "python",
        "arrowFlight",
        "ytsaurus",
        "catboostEvaluate",
    )
)

# Words that make an EXPLAIN explain a writing statement.
_WRITE_WORDS = frozenset(
    {
        "INSERT",
        "CREATE",
        "ALTER",
        "DROP",
        "TRUNCATE",
        "RENAME",
        "ATTACH",
        "DETACH",
        "OPTIMIZE",
        "GRANT",
        "REVOKE",
        "KILL",
        "DELETE",
        "UPDATE",
        "EXCHANGE",
        "UNDROP",
        "BACKUP",
        "RESTORE",
        "SET",
        "USE",
    }
)
# Words that end the list of tables of a FROM clause (at the same parenthesis depth).
_CLAUSE_WORDS = frozenset(
    {
        "SELECT",
        "WHERE",
        "PREWHERE",
        "GROUP",
        "ORDER",
        "HAVING",
        "LIMIT",
        "OFFSET",
        "UNION",
        "EXCEPT",
        "INTERSECT",
        "SETTINGS",
        "FORMAT",
        "WINDOW",
        "QUALIFY",
    }
)
# Functions whose arguments use FROM as a separator (EXTRACT(DAY FROM ts), trim(BOTH ' ' FROM s)...).
_FROM_ARGUMENT_CALLS = frozenset({"extract", "trim", "substring", "substr", "overlay"})

# One alternation, tried left to right at each position; possessive loops read a literal the way
# ClickHouse's lexer does ('' and a backslash escape the quote, the first other quote ends it).
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|\#[ !][^\n]*)
  | (?P<block>/\*)
  | (?P<string>'(?:[^'\\]|\\.|'')*+')
  | (?P<quoted>"(?:[^"\\]|\\.|"")*+"|`(?:[^`\\]|\\.|``)*+`)
  | (?P<number>(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+
              |(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9]+)?)
             (?![A-Za-z0-9_]))  # 1file is a word, as in ClickHouse
  | (?P<word>[A-Za-z0-9_]+)
  | (?P<op>->|<=|>=|!=|<>|==|\|\||::|[-+*/%=<>()\[\]{},;.:?^|&])
    """,
    re.S | re.X,
)


class ReadOnlyViolation(ValueError):
    """The statement writes, reaches outside the warehouse, is more than one statement, or cannot be read
    safely (see the module docstring)."""


@dataclass(frozen=True)
class Token:
    """One significant token: ``kind`` is string, quoted (identifier), number, word or op; ``text`` is the
    source text (for quoted identifiers: the name without quotes or escapes)."""

    kind: str
    text: str

    @property
    def is_name(self) -> bool:
        """Whether this token is a bare word or a quoted identifier (a name a call can use)."""
        return self.kind in ("word", "quoted")

    def is_op(self, text: str) -> bool:
        return self.kind == "op" and self.text == text

    def is_word(self, *words: str) -> bool:
        """Whether this token is one of ``words`` (upper case) as a bare word."""
        return self.kind == "word" and self.text.upper() in words


def _unquote(text: str) -> str:
    """The name a quoted identifier spells. A backslash in it is refused: ClickHouse decodes escapes such as
    ``\\x66`` (``f``) in identifiers, and no name of ours needs one."""
    quote, body = text[0], text[1:-1]
    if "\\" in body:
        raise ReadOnlyViolation("a backslash in a quoted identifier is refused")
    return body.replace(quote * 2, quote)


def tokens(sql: str) -> list[Token]:
    """The significant tokens of ``sql`` (no whitespace, no comments), left to right.

    Raises :class:`ReadOnlyViolation` on what ClickHouse would not read as this tokenizer does: an
    unterminated literal or comment, a nested ``/*``, an unknown character.
    """
    out: list[Token] = []
    pos, end = 0, len(sql)
    while pos < end:
        match = _TOKEN.match(sql, pos)
        if match is None:
            if sql[pos] in "'\"`":
                raise ReadOnlyViolation("an unterminated string or quoted identifier is refused")
            raise ReadOnlyViolation(f"the character {sql[pos]!r} at offset {pos} is refused outside a string")
        kind = match.lastgroup
        assert kind is not None
        pos = match.end()
        if kind == "block":
            close = sql.find("*/", pos)
            if close < 0:
                raise ReadOnlyViolation("an unterminated /* comment is refused")
            if "/*" in sql[pos:close]:
                raise ReadOnlyViolation("nested /* comments are refused")
            pos = close + 2
        elif kind == "quoted":
            out.append(Token(kind, _unquote(match.group())))
        elif kind not in ("space", "comment"):
            out.append(Token(kind, match.group()))
    return out


@dataclass
class _Frame:
    """One level of parentheses: whether the tokens at this level are a FROM list (``tables``: a comma is
    followed by a table), and the function that opened it (lower case; None if not a call)."""

    tables: bool = False
    opener: str | None = None


def check_read_only(sql: str, params: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ReadOnlyViolation` unless ``sql`` (with ``params`` bound as the warehouses bind them)
    is a single reading statement that reaches nothing outside the warehouse (see the module docstring)."""
    try:
        text = bind(sql, params)
    except BindError as exc:
        raise ReadOnlyViolation(f"the parameters cannot be bound: {exc}") from None
    toks = tokens(text)
    while toks and toks[-1].is_op(";"):
        toks.pop()
    if not toks:
        raise ReadOnlyViolation("empty statement")
    if any(t.is_op(";") for t in toks):
        raise ReadOnlyViolation("only one statement is allowed")
    start = next((i for i, t in enumerate(toks) if not t.is_op("(")), 0)
    first = toks[start]
    if not first.is_word(*READ_KEYWORDS):
        raise ReadOnlyViolation(
            f"{first.text.upper()} statements are refused: this connection only reads "
            "(SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS)"
        )
    if any(t.is_word("INTO") for t in toks):
        raise ReadOnlyViolation("INTO (INTO OUTFILE) is refused")
    writes = sorted({t.text.upper() for t in toks if t.is_word(*_WRITE_WORDS)})
    if first.is_word("EXPLAIN") and writes:
        raise ReadOnlyViolation(f"EXPLAIN {writes[0]} is refused: only reads are explained")
    _check_calls(toks, start)


def _check_calls(toks: list[Token], start: int) -> None:
    """Refuse calls of :data:`OUTSIDE_FUNCTIONS` anywhere and table functions outside the allow-list where a
    table goes. ``start``: the index of the statement's first keyword."""
    frames = [_Frame()]
    table_next = in_next = False  # the next token stands where a table goes / the right side of IN
    for i, tok in enumerate(toks):
        frame = frames[-1]
        calls = tok.is_name and i + 1 < len(toks) and toks[i + 1].is_op("(")
        name = tok.text.lower()
        if calls and name in OUTSIDE_FUNCTIONS:
            raise ReadOnlyViolation(
                f"the table function {tok.text}() is refused: it reads files, URLs or other servers, or runs programs"
            )
        allowed = _ALLOWED | (_IN_CONSTRUCTORS if in_next else frozenset())
        if calls and (table_next or in_next) and name not in allowed:
            raise ReadOnlyViolation(
                f"the table function {tok.text}() is refused: only "
                f"{', '.join(ALLOWED_TABLE_FUNCTIONS)} may stand where a table goes"
            )
        qualifier = tok.is_name and i + 1 < len(toks) and toks[i + 1].is_op(".")
        if table_next and (qualifier or tok.is_op(".") or tok.is_word("TABLE")):
            continue  # db.table, DESCRIBE TABLE t: the table (function) is still to come
        opens_table = table_next
        table_next = in_next = False
        if tok.is_op("("):
            opener = _called(toks, i)
            frames.append(_Frame(tables=opens_table, opener=opener))
            table_next = opens_table  # FROM (numbers(3)): still where a table goes
        elif tok.is_op(")"):
            if len(frames) > 1:
                frames.pop()
        elif tok.is_op(","):
            table_next = frame.tables
        elif tok.is_word("FROM"):
            if frame.opener not in _FROM_ARGUMENT_CALLS:
                frame.tables = table_next = True
        elif tok.is_word("JOIN"):
            frame.tables = table_next = not (i > 0 and toks[i - 1].is_word("ARRAY"))
        elif tok.is_word("DESCRIBE", "DESC") and i == start:
            table_next = True
        elif tok.is_word("IN"):
            in_next = frame.opener != "position"  # position(needle IN haystack)
        elif tok.is_word(*_CLAUSE_WORDS):
            frame.tables = False


def _called(toks: list[Token], i: int) -> str | None:
    """The function (lower case) whose argument list the parenthesis ``toks[i]`` opens, if any."""
    return toks[i - 1].text.lower() if i > 0 and toks[i - 1].is_name else None
