"""The poisoned stream: every malformed message decodes exactly as its expectations say."""

from __future__ import annotations

from collections import Counter
from functools import cache

import orjson
import pytest

from pipeline.decode import decode_message
from pipeline.events import SOURCE_TOPICS, TYPE_TOPIC, Reason
from pipeline.generate import TrafficModel, generate
from pipeline.poison import PoisonedMessage, PoisonKind, poison_stream

SMALL = 8 * 1024  # a small max_bytes keeps the oversized messages small; the default is checked once


@cache
def valid_messages(topic: str) -> tuple[bytes, ...]:
    """Generated events of ``topic`` as messages: single objects and arrays of up to five."""
    objects = [
        o for o in generate(TrafficModel(accounts=40, users=400, events=4000, seed=5)) if TYPE_TOPIC[o["type"]] == topic
    ]
    messages, i = [], 0
    while i < len(objects):
        size = 1 + i % 5
        chunk = objects[i : i + size]
        messages.append(orjson.dumps(chunk if size > 1 else chunk[0]))
        i += size
    return tuple(messages)


def assert_decodes_as_expected(message: PoisonedMessage, topic: str, max_bytes: int) -> None:
    events, rejections = decode_message(message.value, topic, max_bytes)
    assert [(r.index, r.reason) for r in rejections] == [(d.index, d.reason) for d in message.dead_letters], message
    assert events == list(message.valid_events), message


@pytest.mark.parametrize("topic", SOURCE_TOPICS)
def test_every_malformed_message_decodes_as_expected(topic: str) -> None:
    messages = valid_messages(topic)
    stream = poison_stream(messages, topic, share=0.2, seed=3, max_bytes=SMALL)
    bad = [m for m in stream if m.kind is not None]
    assert {m.kind for m in bad} == set(PoisonKind)
    for message in bad:
        assert message.dead_letters, message
        assert_decodes_as_expected(message, topic, SMALL)
        assert 0 <= message.origin < len(messages)
    assert [m.value for m in stream if m.kind is None] == list(messages)  # the input, in order, unchanged
    assert [m.origin for m in stream if m.kind is None] == list(range(len(messages)))


def test_share_and_kinds_at_the_defaults() -> None:
    messages = valid_messages("likes")
    stream = poison_stream(messages, "likes")
    bad = [m for m in stream if m.kind is not None]
    assert len(bad) == round(0.05 * len(messages) / 0.95) and abs(len(bad) / len(stream) - 0.05) < 0.005
    kinds = Counter(m.kind for m in bad)
    assert set(kinds) == set(PoisonKind) and max(kinds.values()) - min(kinds.values()) <= 1  # taken in turns
    for message in bad:
        assert_decodes_as_expected(message, "likes", 1024 * 1024)
    oversized = [m for m in bad if m.kind is PoisonKind.OVERSIZED]
    assert oversized and all(len(m.value) == 1024 * 1024 * 17 // 16 for m in oversized)
    assert all(m.dead_letters[0].reason is Reason.TOO_LARGE for m in oversized)


def test_every_reason_the_decoder_has_appears() -> None:
    reasons = {
        letter.reason
        for topic in SOURCE_TOPICS
        for message in poison_stream(valid_messages(topic), topic, share=0.3, seed=1, max_bytes=SMALL)
        for letter in message.dead_letters
    }
    # no empty array; lateness and the clock's bound (future_ts) are the worker's, not the decoder's
    assert reasons == set(Reason) - {Reason.EMPTY_BATCH, Reason.LATE, Reason.FUTURE_TS}


def test_mixed_arrays_carry_new_valid_events_next_to_their_origin() -> None:
    stream = poison_stream(valid_messages("follows"), "follows", share=0.3, seed=2, max_bytes=SMALL)
    known = {e.event_id for m in valid_messages("follows") for e in decode_message(m, "follows")[0]}
    new = [(m, e) for m in stream for e in m.valid_events]
    assert new and all(m.kind is PoisonKind.MIXED_ARRAY for m, _ in new)
    ids = [e.event_id for _, e in new]
    assert len(set(ids)) == len(ids) and not set(ids) & known and all(i.startswith("poison-follows-2-") for i in ids)
    for message, event in new:  # a clone of an event of its origin: same account, actor and time
        origin_events = decode_message(valid_messages("follows")[message.origin], "follows")[0]
        assert event in [e._replace(event_id=event.event_id) for e in origin_events]
    for message in stream:
        if message.kind is PoisonKind.MIXED_ARRAY and message.dead_letters[0].reason is not Reason.TOO_LARGE:
            assert message.valid_events and message.dead_letters  # both good and bad elements


def test_deterministic_by_seed_and_topic() -> None:
    messages = valid_messages("mentions")
    first = poison_stream(messages, "mentions", seed=4, max_bytes=SMALL)
    assert first == poison_stream(messages, "mentions", seed=4, max_bytes=SMALL)
    assert first != poison_stream(messages, "mentions", seed=5, max_bytes=SMALL)


def test_oversized_messages_are_capped() -> None:
    stream = poison_stream(valid_messages("likes"), "likes", share=0.3, max_bytes=SMALL, max_oversized=2)
    assert sum(1 for m in stream if m.kind is PoisonKind.OVERSIZED) == 2


def test_the_decoder_s_default_limit_is_over_the_deep_and_huge_kinds() -> None:
    """At the default max_bytes nothing but the oversized kind is too large: the others test what they say."""
    stream = poison_stream(valid_messages("replies"), "replies", share=0.3, seed=6)
    for message in stream:
        if message.kind is not None and message.kind is not PoisonKind.OVERSIZED:
            assert all(d.reason is not Reason.TOO_LARGE for d in message.dead_letters), message.kind


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="topic"):
        poison_stream(valid_messages("likes"), "pokes")
    with pytest.raises(ValueError, match="share"):
        poison_stream(valid_messages("likes"), "likes", share=1.0)
    with pytest.raises(ValueError, match="no valid"):
        poison_stream([b"{truncated", b"[]"], "likes", share=0.5)
    assert poison_stream([b"{}"], "likes", share=0.0) == [PoisonedMessage(b"{}", None, 0)]
