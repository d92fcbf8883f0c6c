"""Client-side binding of ``%(name)s`` parameters into SQL, identical for every backend.

Strings are quoted and escaped the way ClickHouse's parser reads them (backslash escapes), so any value,
quotes, backslashes, control characters and Unicode included, arrives as data and never as SQL.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    "\b": "\\b",
    "\f": "\\f",
    "\r": "\\r",
    "\n": "\\n",
    "\t": "\\t",
    "\0": "\\0",
    "\a": "\\a",
    "\v": "\\v",
}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


class BindError(ValueError):
    """A placeholder has no value, or a value has a type that cannot be bound."""


def identifier(name: str) -> str:
    """``name`` as a backquoted ClickHouse identifier (backslashes and backquotes escaped), for names that
    cannot be bound as values: databases, tables, columns, users."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote(value: Any) -> str:
    """The SQL literal for ``value``."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BindError(f"cannot bind non-finite float {value!r}")
        return repr(value)
    if isinstance(value, str):
        return "'" + "".join(_ESCAPES.get(c, c) for c in value) + "'"
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return "toDateTime('" + str(value.strftime("%Y-%m-%d %H:%M:%S")) + "', 'UTC')"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(quote(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    raise BindError(f"cannot bind a value of type {type(value).__name__}")


def bind(sql: str, params: Mapping[str, Any] | None) -> str:
    """Replace every ``%(name)s`` in ``sql`` by the literal of ``params[name]``."""
    if not params:
        return sql

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise BindError(f"no value for parameter {name!r}")
        return quote(params[name])

    return _PLACEHOLDER.sub(substitute, sql)
