"""Secrets never reach a log record: a log record factory that masks every revealed secret.

:meth:`pipeline.settings.Secret.reveal` registers its value here before handing it out, so a library that
logs its configuration (kafka-python's ``KafkaAdminClient`` logs every keyword argument, the SASL password
included, at DEBUG) prints ``********`` instead. The factory wraps the one installed before it and works for
every logger and handler, Faust's included, because it rewrites the record when it is made: a record is
made only when its level is enabled, so records below the level cost nothing.

Values shorter than :data:`MIN_LENGTH` are not masked (they would mask ordinary words); the settings refuse
such passwords where they matter (ClickHouse users need 12 characters).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

MASK = "********"
MIN_LENGTH = 4

_secrets: set[str] = set()
_lock = threading.Lock()
_previous: Any = None


def redact(secret: str) -> None:
    """From now on, mask ``secret`` in every log record of this process (idempotent)."""
    global _previous
    if len(secret) < MIN_LENGTH or secret in _secrets:
        return
    with _lock:
        _secrets.add(secret)
        if _previous is None:
            _previous = logging.getLogRecordFactory()
            logging.setLogRecordFactory(_make_record)


def masked(text: str) -> str:
    """``text`` with every registered secret replaced by :data:`MASK` (longest first)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record: logging.LogRecord = _previous(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: let the handler report it as it would have
        return record
    clean = masked(message)
    if clean != message:
        record.msg, record.args = clean, None
    return record
