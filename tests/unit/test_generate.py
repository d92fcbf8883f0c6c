"""The traffic generator: reproducible, and as dirty as the README promises."""

from __future__ import annotations

from collections import Counter

import orjson

from pipeline.decode import decode_line
from pipeline.generate import TrafficModel, generate, lines

MODEL = TrafficModel(accounts=200, users=5000, events_per_second=100, events=8000, seed=3)


def test_same_seed_same_traffic() -> None:
    assert list(lines(MODEL, 0.01)) == list(lines(MODEL, 0.01))
    assert list(generate(MODEL)) != list(generate(TrafficModel(**{**MODEL.__dict__, "seed": 4})))


def test_traffic_has_the_promised_shape() -> None:
    objects = list(generate(MODEL))
    assert len(objects) == 8000
    types = Counter(o["type"] for o in objects)
    assert types["like"] > types["reply"] > 0 and types["mention"] > 0 and types["follow"] > 0
    assert types["followers"] >= MODEL.accounts  # a snapshot per account at the start
    ids = Counter(o["event_id"] for o in objects)
    assert any(n > 1 for n in ids.values())  # duplicates
    assert any(o.get("actor_id") == o["account_id"] for o in objects)  # self-engagement
    assert any(isinstance(o["ts"], str) and o["ts"].endswith("Z") for o in objects)
    assert any(isinstance(o["ts"], str) and not o["ts"].endswith("Z") for o in objects)
    assert any(isinstance(o["ts"], int) for o in objects)
    assert any(not o["account_id"].isascii() for o in objects)
    bots = Counter(o["actor_id"] for o in objects if o.get("actor_id", "").startswith("bot-"))
    assert bots and max(bots.values()) > 30  # bursting bots
    answers = [o for o in objects if o["type"] == "reply" and o.get("in_reply_to")]
    assert answers


def test_invalid_lines_are_invalid_and_the_rest_valid() -> None:
    valid = invalid = 0
    for line in lines(MODEL, invalid_share=0.02):
        events, rejections = decode_line(line)
        valid += len(events)
        invalid += len(rejections)
        assert events or rejections
    assert valid == 8000 and invalid > 50
    assert orjson.loads(next(lines(MODEL)))["type"] == "followers"
