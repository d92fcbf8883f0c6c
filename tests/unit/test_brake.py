"""The dead-letter brake: the exact trip point over a sliding window, what counts, and what a trip leaves
behind in the batch data path (fakes from test_processor: no network)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.brake import EXIT_CODE, DeadLetterBrake, DeadLetterBrakeTripped
from pipeline.events import Reason, Rejection
from pipeline.processor import Message
from pipeline.settings import Settings, SettingsError
from tests.unit.test_processor import T0, like, make, owned_by

BAD = [Rejection(Reason.INVALID_JSON, "not JSON", -1, b"{")]
LATE = [Rejection(Reason.LATE, "window is already final", -1, b"{}")]


def feed(brake: DeadLetterBrake, outcomes: Sequence[bool], first_offset: int = 0) -> int | None:
    """Observe ``outcomes`` (True: invalid) as offsets of likes/0; the offset that tripped, or None."""
    for i, invalid in enumerate(outcomes):
        try:
            brake.observe(BAD if invalid else [], "likes", 0, first_offset + i)
        except DeadLetterBrakeTripped as exc:
            return exc.offset
    return None


def test_trips_on_the_first_message_that_takes_the_window_over_the_share() -> None:
    brake = DeadLetterBrake(share=0.5, window=10)
    assert feed(brake, [False] * 5 + [True] * 5) is None  # 5 of 10 is not more than half
    assert brake.invalid_share == 0.5
    with pytest.raises(DeadLetterBrakeTripped) as tripped:
        brake.observe(BAD, "likes", 3, 42)  # evicts a valid one: 6 of the last 10
    exc = tripped.value
    assert (exc.invalid, exc.window, exc.share, exc.topic, exc.partition, exc.offset) == (6, 10, 0.5, "likes", 3, 42)
    assert exc.share_seen == 0.6


def test_needs_a_full_window_before_it_trips() -> None:
    brake = DeadLetterBrake(share=0.5, window=10)
    assert feed(brake, [True] * 9) is None  # 9 invalid, but only 9 seen
    assert brake.invalid_share == 1.0
    assert feed(brake, [False], first_offset=9) == 9  # the 10th message fills the window: 9 of 10


def test_the_window_slides_old_invalid_messages_out() -> None:
    brake = DeadLetterBrake(share=0.5, window=4)
    # 2 of 4 invalid, then every invalid message evicts an invalid one: the share never exceeds 1/2
    assert feed(brake, [True, True, False, False] * 50) is None
    assert brake.invalid_share == 0.5
    # the window is [bad, bad, ok, ok]: two more bad ones evict bad ones, the third evicts an ok one
    assert feed(brake, [True, True, True], first_offset=200) == 202


@given(
    outcomes=st.lists(st.booleans(), max_size=60),
    window=st.integers(1, 12),
    share=st.one_of(st.sampled_from([0.0, 0.1, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.99, 1.0]), st.floats(0, 1)),
)
def test_trip_point_matches_a_recount_of_every_window(outcomes: list[bool], window: int, share: float) -> None:
    expected = next(
        (i for i in range(window - 1, len(outcomes)) if sum(outcomes[i + 1 - window : i + 1]) / window > share),
        None,
    )
    assert feed(DeadLetterBrake(share, window), outcomes) == expected


def test_late_rejections_do_not_count() -> None:
    brake = DeadLetterBrake(share=0.0, window=3)  # the strictest brake: any invalid message trips it
    for offset in range(10):
        brake.observe(LATE, "likes", 0, offset)
    assert brake.invalid_share == 0.0
    with pytest.raises(DeadLetterBrakeTripped):  # a late element next to a bad one: the message is invalid
        brake.observe([*LATE, *BAD], "likes", 0, 10)


def test_share_one_disables_it() -> None:
    brake = DeadLetterBrake(share=1.0, window=1)
    assert brake.disabled and feed(brake, [True] * 1000) is None


def test_the_message_says_what_happened_where_and_what_to_change() -> None:
    brake = DeadLetterBrake(share=0.5, window=4)
    brake.observe([], "likes", 0, 0)
    brake.observe([Rejection(Reason.MISSING_FIELD, "no ts", 0, b"{}")], "likes", 0, 1)
    brake.observe([Rejection(Reason.INVALID_UTF8, "bad", -1, b"\xff")], "likes", 0, 2)
    with pytest.raises(DeadLetterBrakeTripped) as tripped:
        brake.observe([Rejection(Reason.INVALID_UTF8, "bad", -1, b"\xff")], "replies", 1, 77)
    text = str(tripped.value)
    assert "3 of the last 4 source messages (75.0%) were invalid, more than the allowed 50.0%" in text
    assert "at replies partition 1 offset 77" in text
    assert "most common reasons: invalid_utf8 (2), missing_field (1)" in text
    assert "ENGAGEMENT_DEAD_LETTER_BRAKE_SHARE (now 0.5; 1 disables the brake)" in text
    assert "ENGAGEMENT_DEAD_LETTER_BRAKE_MESSAGES (now 4)" in text
    assert tripped.value.reasons == [("invalid_utf8", 2), ("missing_field", 1)]


def test_reasons_are_those_of_the_window_only() -> None:
    brake = DeadLetterBrake(share=0.5, window=4)
    brake.observe([Rejection(Reason.TOO_LARGE, "big", -1, b"")], "likes", 0, 0)  # slides out below
    for offset in range(1, 4):
        brake.observe([], "likes", 0, offset)
    brake.observe(BAD, "likes", 0, 4)
    brake.observe(BAD, "likes", 0, 5)
    with pytest.raises(DeadLetterBrakeTripped) as tripped:
        brake.observe(BAD, "likes", 0, 6)
    assert tripped.value.reasons == [("invalid_json", 3)]


@pytest.mark.parametrize(("share", "window"), [(-0.1, 10), (float("nan"), 10), (0.5, 0)])
def test_nonsense_arguments_are_refused(share: float, window: int) -> None:
    with pytest.raises(ValueError):
        DeadLetterBrake(share, window)


def test_settings_defaults_environment_and_validation() -> None:
    settings = Settings.from_env({})
    assert (settings.dead_letter_brake_share, settings.dead_letter_brake_messages) == (0.5, 1000)
    env = {"ENGAGEMENT_DEAD_LETTER_BRAKE_SHARE": "0.25", "ENGAGEMENT_DEAD_LETTER_BRAKE_MESSAGES": "200"}
    settings = Settings.from_env(env)
    assert (settings.dead_letter_brake_share, settings.dead_letter_brake_messages) == (0.25, 200)
    assert Settings.from_env({"ENGAGEMENT_DEAD_LETTER_BRAKE_SHARE": "1"}).dead_letter_brake_share == 1.0
    assert Settings.from_env({}).dead_letter_brake_linger_seconds == 30.0  # two scrapes at 15 s
    assert Settings.from_env({"ENGAGEMENT_DEAD_LETTER_BRAKE_LINGER_SECONDS": "0"}).dead_letter_brake_linger_seconds == 0
    for name, value in [
        ("ENGAGEMENT_DEAD_LETTER_BRAKE_SHARE", "1.5"),
        ("ENGAGEMENT_DEAD_LETTER_BRAKE_SHARE", "-0.1"),
        ("ENGAGEMENT_DEAD_LETTER_BRAKE_SHARE", "nan"),
        ("ENGAGEMENT_DEAD_LETTER_BRAKE_SHARE", "half"),
        ("ENGAGEMENT_DEAD_LETTER_BRAKE_MESSAGES", "0"),
        ("ENGAGEMENT_DEAD_LETTER_BRAKE_LINGER_SECONDS", "-1"),
        ("ENGAGEMENT_DEAD_LETTER_BRAKE_LINGER_SECONDS", "nan"),
    ]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


def test_exit_code_is_apart_from_a_crash() -> None:
    assert EXIT_CODE == 65 and EXIT_CODE != 70


# -- in the batch data path ------------------------------------------------------------------------------


def test_a_batch_of_mostly_garbage_raises_and_leaves_nothing_behind() -> None:
    processor, outbox, warehouse, table, _ = make()
    processor.brake = DeadLetterBrake(share=0.5, window=10)
    account = owned_by(0)
    good = [Message("likes", 0, i, orjson.dumps(like(f"g{i}", account, actor=f"u{i}"))) for i in range(12)]
    garbage = [Message("likes", 0, 12 + i, b"{not json") for i in range(20)]

    asyncio.run(processor.process(good[:10]))  # an earlier batch: persisted, as the worker acknowledges it
    inserts, sent, states = list(warehouse.inserts), list(outbox.sent), dict(table)
    assert len(warehouse.rows("engagement_events")) == 10 and account.encode() in states

    with pytest.raises(DeadLetterBrakeTripped) as tripped:
        asyncio.run(processor.process([*good[10:], *garbage]))
    # offsets 8-11 valid, 12-17 garbage: 6 of the last 10 at offset 17
    assert (tripped.value.offset, tripped.value.invalid, tripped.value.reasons) == (17, 6, [("invalid_json", 6)])
    assert warehouse.inserts == inserts  # not even the good events g10, g11 before the garbage
    assert outbox.sent == sent  # no dead letters, no re-keyed messages, no watermark markers
    assert dict(table) == states  # no account state persisted
    assert processor._in_flight is None


def test_rekey_topic_messages_are_not_observed() -> None:
    processor, outbox, _, _, _ = make()
    processor.brake = DeadLetterBrake(share=0.0, window=1)  # any observed invalid message would trip it
    asyncio.run(processor.process([Message("engagement-rekeyed", 0, i, b"corrupt") for i in range(5)]))
    assert len(outbox.on("engagement-dead-letters")) == 5


def test_late_events_are_dead_lettered_without_tripping_it() -> None:
    processor, outbox, _, _, _ = make(partitions=1, highwaters={("likes", 0): 3})
    processor.brake = DeadLetterBrake(share=0.0, window=1)
    account = owned_by(0, partitions=1)
    late_marker = orjson.dumps({"k": "w", "q": 0, "t": T0 + 10_000_000})
    asyncio.run(processor.process([Message("engagement-rekeyed", 0, 0, late_marker)]))
    asyncio.run(processor.process([Message("likes", 0, 0, orjson.dumps(like("new", account, sec=10_000)))]))
    asyncio.run(processor.process([Message("likes", 0, 1, orjson.dumps(like("old", account, sec=0)))]))
    assert [d["reason"] for d in outbox.on("engagement-dead-letters")] == ["late"]
    assert processor.brake.invalid_share == 0.0


def test_a_batched_message_counts_as_the_share_of_its_elements_that_were_bad() -> None:
    brake = DeadLetterBrake(share=0.5, window=10)
    one_bad = [Rejection(Reason.MISSING_FIELD, "no ts", 7, b"{}")]
    for offset in range(1000):  # a producer batching 100 events, one of them bad: 1 % bad input
        brake.observe(one_bad, "likes", 0, offset, valid=99)
    assert brake.invalid_share == pytest.approx(0.01)
    for offset in range(1000, 1008):  # 60 % bad: 8 * 0.6 + 2 * 0.01 = 4.82 of 10, not over half
        brake.observe(one_bad * 60, "likes", 0, offset, valid=40)
    with pytest.raises(DeadLetterBrakeTripped) as tripped:  # 9 * 0.6 + 0.01 = 5.41
        brake.observe(one_bad * 60, "likes", 0, 1008, valid=40)
    assert tripped.value.invalid == pytest.approx(5.41)
    assert "5.41 of the last 10 source messages (54.1%) were invalid" in str(tripped.value)
