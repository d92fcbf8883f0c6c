"""What the read commands take: the worker's /query body (any body that is not {"sql": ..., "params": {...}}
is a clear 400, it was a 500 from an exception; params that are not an object stay a 403 of the read-only
guard), and --as-of (ASCII digits or RFC 3339: Arabic-Indic digits were read as a number)."""

from __future__ import annotations

import argparse

import orjson
import pytest

from pipeline.cli import parse_as_of
from pipeline.readonly_sql import ReadOnlyViolation
from pipeline.worker import BadQueryRequest, query_request


def test_a_query_with_and_without_parameters() -> None:
    assert query_request(b'{"sql": "SELECT 1"}') == ("SELECT 1", None)
    assert query_request(b'{"sql": "SELECT 1", "params": {}}') == ("SELECT 1", None)
    body = {"sql": "SELECT %(a)s, %(b)s", "params": {"a": "x", "b": [1, 2.5, None, True]}}
    assert query_request(orjson.dumps(body)) == (body["sql"], body["params"])


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b"[]", "JSON object"),
        (b"null", "JSON object"),
        (b'"SELECT 1"', "JSON object"),
        (b"{}", "sql must be"),
        (b'{"sql": null}', "sql must be"),
        (b'{"sql": 1}', "sql must be"),
        (b'{"sql": "  "}', "sql must be"),
        (b'{"sql": "SELECT %(a)s", "params": {"a": {"b": 1}}}', "parameter 'a'"),
        (b'{"sql": "SELECT %(a)s", "params": {"a": [[1]]}}', "parameter 'a'"),
        (b'{"sql": "SELECT %(a)s", "params": {"a": ' + b"[" * 1000 + b"]" * 1000 + b"}}", "parameter 'a'"),
    ],
)
def test_a_malformed_body_is_a_bad_request(raw: bytes, says: str) -> None:
    with pytest.raises(BadQueryRequest, match=says):
        query_request(raw)


@pytest.mark.parametrize("params", [[], ["not", "an", "object"], "x", 1])
def test_params_that_are_not_an_object_are_refused_by_the_guard(params: object) -> None:
    with pytest.raises(ReadOnlyViolation, match="params must be a JSON object"):
        query_request(orjson.dumps({"sql": "SELECT 1", "params": params}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1767225600000", 1767225600000), (" 1767225600000 ", 1767225600000), ("2026-01-01T00:00:00Z", 1767225600000)],
)
def test_as_of_takes_epoch_ms_or_rfc3339(text: str, expected: int) -> None:
    assert parse_as_of(text) == expected


@pytest.mark.parametrize("text", ["١٢٣", "yesterday", "-5", "2026-01-01"])
def test_as_of_refuses_anything_else(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_as_of(text)
