"""The drop detector against scripted streams of final-window scores, with exact alert sequences."""

from __future__ import annotations

import time

import pytest

from pipeline.drops import FIRING, RESOLVED, Alert, DropConfig, DropDetector, DropState, alert_id

W = 60_000  # one-minute windows
CONFIG = DropConfig(window_ms=W, half_life_windows=1.0, warmup_windows=4, min_baseline=5.0, threshold=0.5, windows=3)


def run(scores: list[float | None], config: DropConfig = CONFIG, silence_until: int | None = None) -> list[Alert]:
    """Observe window k with ``scores[k]`` (None: no events, so no final window for it)."""
    detector, state, alerts = DropDetector(config), DropState(), []
    for k, score in enumerate(scores):
        if score is not None:
            alerts += detector.observe("acct", state, k * W, score)
    if silence_until is not None:
        alerts += detector.silence("acct", state, silence_until * W)
    return alerts


def brief(alerts: list[Alert]) -> list[tuple[int, str, str]]:
    """(window index, state, reason) of each alert."""
    return [(a.window_start // W, a.state, a.reason) for a in alerts]


def test_a_steady_account_never_fires() -> None:
    assert run([10.0] * 200) == []
    assert run([10.0, 12.0, 8.0, 11.0, 9.0] * 40) == []


def test_a_sudden_drop_fires_at_the_third_low_window_and_a_recovery_resolves_it() -> None:
    alerts = run([10.0] * 10 + [2.0, 0.0, 4.0, 4.0, 10.0, 10.0])
    assert brief(alerts) == [(12, FIRING, "drop"), (14, RESOLVED, "recovered")]
    fired, resolved = alerts
    assert (fired.observed, fired.baseline, fired.windows_below) == (4.0, 10.0, 3)
    assert fired.drop_pct == pytest.approx(60.0)
    assert (fired.window_end - fired.window_start, fired.account_id) == (W, "acct")
    # the low windows stayed out of the baseline: 10 until the recovery, which enters it
    assert (resolved.observed, resolved.baseline, resolved.drop_pct) == (10.0, 10.0, 0.0)


def test_two_low_windows_are_a_dip_not_a_drop() -> None:
    assert run([10.0] * 10 + [1.0, 1.0, 10.0, 1.0, 1.0, 10.0] * 5) == []


def test_a_gradual_decline_fires_once_the_baseline_lags_behind() -> None:
    # half-life 1 window: the baseline moves half way to each score that is not low
    # 16 16 16 16 | 12 (b 14) 9 (b 11.5) 6 (b 8.75) | 4 3 2: below 4.375, three in a row
    alerts = run([16.0] * 4 + [12.0, 9.0, 6.0, 4.0, 3.0, 2.0, 1.0])
    assert brief(alerts) == [(9, FIRING, "drop")]
    assert alerts[0].baseline == 8.75 and alerts[0].drop_pct == pytest.approx((1 - 2 / 8.75) * 100)
    # a slow decline is followed by the baseline and never fires
    assert run([100.0 * 0.97**k for k in range(100)]) == []


def test_total_silence_fires_without_a_next_event_and_resolves_when_events_return() -> None:
    # events until window 9, then nothing: the frontier makes windows 10.. final without events
    assert brief(run([10.0] * 10, silence_until=11)) == []  # one silent window
    alerts = run([10.0] * 10, silence_until=50)
    assert brief(alerts) == [(12, FIRING, "silence")]
    assert (alerts[0].observed, alerts[0].drop_pct) == (0.0, 100.0)
    # the stream stops, then resumes at window 40: the silent windows between are observed first
    assert brief(run([10.0] * 10 + [None] * 30 + [10.0])) == [(12, FIRING, "silence"), (40, RESOLVED, "recovered")]
    # low but not silent windows in the streak: a drop
    assert brief(run([10.0] * 10 + [1.0], silence_until=12)) == []
    assert brief(run([10.0] * 10 + [1.0], silence_until=13)) == [(12, FIRING, "drop")]


def test_a_noisy_low_volume_account_never_pages() -> None:
    noisy = [0.0, 3.0, 0.0, 4.0, 1.0, 0.0, 0.0, 6.0, 2.0, 0.0] * 20
    assert run(noisy) == []
    assert run(noisy, silence_until=10_000) == []
    # the same shape ten times larger is above the minimum baseline and does fire
    assert run([10 * s for s in noisy]) != []


def test_nothing_fires_during_the_warm_up() -> None:
    assert run([10.0, 0.0, 0.0, 0.0]) == []  # the zeros enter the baseline: not armed yet
    assert brief(run([10.0] * 4 + [0.0] * 3)) == [(6, FIRING, "silence")]


def test_replayed_windows_are_ignored_and_alert_ids_are_deterministic() -> None:
    detector, state = DropDetector(CONFIG), DropState()
    first = [a for k in range(14) for a in detector.observe("acct", state, k * W, 10.0 if k < 10 else 0.0)]
    assert brief(first) == [(12, FIRING, "silence")]
    assert detector.observe("acct", state, 12 * W, 10.0) == []  # a replay of a window already observed
    assert state.in_drop
    again = DropState()
    second = [a for k in range(14) for a in detector.observe("acct", again, k * W, 10.0 if k < 10 else 0.0)]
    assert second == first and again == state
    assert first[0].alert_id == alert_id("acct", 12 * W, FIRING) != alert_id("acct", 12 * W, RESOLVED)


def test_a_long_gap_costs_no_more_than_warm_up_and_streak() -> None:
    detector = DropDetector(CONFIG)
    quiet = DropState()
    for k in range(10):
        detector.observe("q", quiet, k * W, 1.0)  # below the minimum baseline: never armed
    began = time.perf_counter()
    assert detector.observe("q", quiet, 10_000_000 * W, 1.0) == []
    assert time.perf_counter() - began < 0.1
    assert quiet.entered == 10_000_001 and quiet.baseline == pytest.approx(0.5)  # decayed to 0, then half way to 1
    busy = DropState()
    for k in range(10):
        detector.observe("b", busy, k * W, 10.0)
    assert brief(detector.silence("b", busy, 10_000_000 * W)) == [(12, FIRING, "silence")]
    assert busy.last_end == 10_000_000 * W and busy.in_drop


def test_state_round_trips_and_silence_is_watched_only_when_it_counts() -> None:
    detector, state = DropDetector(CONFIG), DropState()
    assert not detector.watches_silence(state)
    for k in range(5):
        detector.observe("a", state, k * W, 10.0)
    assert detector.watches_silence(state)
    detector.observe("a", state, 5 * W, 0.0)
    assert DropState.from_list(state.to_list()) == state
    detector.silence("a", state, 10 * W)
    assert state.in_drop and not detector.watches_silence(state)
    assert DropConfig(window_ms=W, half_life_windows=24).alpha == pytest.approx(1 - 0.5 ** (1 / 24))


def test_alerts_serialize_for_the_topic() -> None:
    (alert,) = run([10.0] * 10 + [0.0] * 3)
    assert b'"state":"firing"' in alert.to_json() and b'"window_start":720000' in alert.to_json()


def test_silence_during_the_warm_up_can_arm_the_detector_and_fire() -> None:
    # warm-up 4: three windows of 10, then silence: the first silent window is the 4th in the baseline
    # (10 -> 5, at the minimum: armed), the next three are low: firing at window 6
    detector, state = DropDetector(CONFIG), DropState()
    for k in range(3):
        detector.observe("w", state, k * W, 10.0)
    assert not detector.armed(state) and detector.watches_silence(state)  # the timer must watch it already
    assert brief(detector.silence("w", state, 20 * W)) == [(6, FIRING, "silence")]
    # a baseline under the minimum never arms, silence or not
    quiet = DropState()
    detector.observe("q", quiet, 0, 4.0)
    assert not detector.watches_silence(quiet) and detector.silence("q", quiet, 100 * W) == []


@pytest.mark.parametrize("cuts", [[], [13], list(range(6, 300, 1)), list(range(6, 300, 3))])
def test_a_silence_observed_in_pieces_equals_it_observed_at_once_bit_for_bit(cuts: list[int]) -> None:
    """A worker observes a silence as its frontier steps forward; the reference observes it at once. The
    states and alerts are identical (no float rounding apart), also after the account comes back. (Steps of
    3 windows gave a different last bit when each piece applied its own decay.)"""
    config = DropConfig(window_ms=W, half_life_windows=24.0, warmup_windows=4, min_baseline=20.0, threshold=0.5)
    detector = DropDetector(config)
    states, raised = [], []
    for pieces in (cuts, []):
        state, alerts = DropState(), []
        for k, score in enumerate([7.3, 11.1, 9.7, 3.3, 2.2]):  # warm, never armed: silence only decays
            alerts += detector.observe("a", state, k * W, score)
        for cut in pieces:
            alerts += detector.silence("a", state, cut * W)
        alerts += detector.silence("a", state, 300 * W)
        assert state.decay > 0  # the bulk path: the decay waits to be applied
        alerts += detector.observe("a", state, 300 * W, 8.8)
        states.append(state)
        raised.append(alerts)
    assert states[0] == states[1] and states[0].decay == 0
    assert raised[0] == raised[1]
