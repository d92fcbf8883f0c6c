"""The JSON Schema in schemas/ and the decoder agree on what is a valid event."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from pipeline.decode import decode_message

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "event.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
BASE = {"event_id": "e1", "type": "like", "ts": 1767225600123, "actor_id": "u1", "account_id": "a1"}

CASES = [
    BASE,
    {**BASE, "ts": "2026-01-01T00:00:00.123Z"},
    {**BASE, "ts": "2026-01-01T01:00:00+01:00"},
    {**BASE, "ts": "2026-01-01T00:00:00"},
    {**BASE, "ts": 1.5},
    {**BASE, "ts": -1},
    {**BASE, "type": "poke"},
    {**BASE, "event_id": ""},
    {**BASE, "event_id": "x" * 129},
    {**BASE, "account_id": "y" * 257},
    {k: v for k, v in BASE.items() if k != "actor_id"},
    {k: v for k, v in BASE.items() if k != "account_id"},
    {**BASE, "followers": 3},
    {**BASE, "post_id": "p1", "in_reply_to": "e0", "type": "reply"},
    {"event_id": "s", "type": "followers", "ts": 0, "account_id": "a", "followers": 5},
    {"event_id": "s", "type": "followers", "ts": 0, "account_id": "a", "followers": -5},
    {"event_id": "s", "type": "followers", "ts": 0, "account_id": "a"},
    {"event_id": "f", "type": "follow", "ts": 0, "account_id": "a", "actor_id": "u"},
    {"event_id": "f", "type": "follow", "ts": 0, "account_id": "a"},
    # null for an optional field is its absence; whole-number floats are integers; the bounds
    {**BASE, "post_id": None, "in_reply_to": None, "followers": None},
    {**BASE, "actor_id": None},
    {**BASE, "account_id": None},
    {"event_id": "s", "type": "followers", "ts": 0, "account_id": "a", "followers": 5, "actor_id": None},
    {"event_id": "s", "type": "followers", "ts": 0, "account_id": "a", "followers": None},
    {"event_id": "s", "type": "followers", "ts": 0, "account_id": "a", "followers": 5.0},
    {**BASE, "ts": 1767225600123.0},
    {**BASE, "ts": 4102444799999},
    {**BASE, "ts": 4102444800000},
    {**BASE, "ts": "2026-01-01T00:00:00+00:60"},
    {"event_id": "s", "type": "followers", "ts": 0, "account_id": "a", "followers": 2**53},
]


@pytest.mark.parametrize("obj", CASES)
def test_schema_and_decoder_agree(obj: dict[str, object]) -> None:
    by_schema = VALIDATOR.is_valid(obj)
    events, _ = decode_message(orjson.dumps(obj), None)
    assert by_schema == bool(events)


def test_schema_is_valid_json_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
