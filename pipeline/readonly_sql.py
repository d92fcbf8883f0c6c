"""A guard for SQL that must only read: one statement, starting with a reading keyword, reaching nothing
outside the warehouse's own tables.

It is a first line of defence for the embedded store's ``/query`` endpoint and ``engagement sql``; on a
server, the read-only ClickHouse user (or read-only session) is the real guarantee. chDB has no users, so on
the embedded store this guard is all there is: it also refuses the table functions that read files, call
URLs or other servers, or run programs (``file()``, ``url()``, ``remote()``, ``s3()``, ``executable()``...).
"""

from __future__ import annotations

import re

READ_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
OUTSIDE_TABLE_FUNCTIONS = (
    "file",
    "fileCluster",
    "url",
    "urlCluster",
    "remote",
    "remoteSecure",
    "cluster",
    "clusterAllReplicas",
    "s3",
    "s3Cluster",
    "gcs",
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
    "deltaLake",
    "hudi",
    "python",
    "arrowFlight",
    "ytsaurus",
)
_OUTSIDE = re.compile(r"\b(" + "|".join(OUTSIDE_TABLE_FUNCTIONS) + r")\s*\(", re.I)
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
    # quoted identifiers (`file`, "url") may name functions too: unquote them for this check
    outside = _OUTSIDE.search(
        re.sub(r"'(?:[^'\\]|\\.)*'", "''", _COMMENT.sub(" ", sql)).replace("`", "").replace('"', "")
    )
    if outside:
        raise ReadOnlyViolation(
            f"the table function {outside.group(1)}() is refused: it reads files, URLs or other servers"
        )
