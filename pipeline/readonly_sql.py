"""A guard for SQL that must only read: one statement, starting with a reading keyword.

It is a first line of defence for the embedded store's ``/query`` endpoint and ``engagement sql``; on a
server, the read-only ClickHouse user is the real guarantee.
"""

from __future__ import annotations

import re

READ_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"", re.S)


class ReadOnlyViolation(ValueError):
    """The statement writes, changes settings, or is more than one statement."""


def check_read_only(sql: str) -> None:
    """Raise :class:`ReadOnlyViolation` unless ``sql`` is a single reading statement."""
    stripped = _STRING.sub("''", _COMMENT.sub(" ", sql)).strip().rstrip(";").strip()
    if not stripped:
        raise ReadOnlyViolation("empty statement")
    if ";" in stripped:
        raise ReadOnlyViolation("only one statement is allowed")
    first = stripped.split(None, 1)[0].upper().lstrip("(")
    if first not in READ_KEYWORDS:
        raise ReadOnlyViolation(
            f"{first} statements are refused: this connection only reads (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN)"
        )
    if re.search(r"\bINTO\s+OUTFILE\b", stripped, re.I):
        raise ReadOnlyViolation("INTO OUTFILE is refused")
