"""Engagement drops: per account, a baseline of its final windows' scores, and an alert when they fall.

Definitions (settings in parentheses; the README's "Engagement drops" is the user-facing version):

- An account's final windows are observed in time order, each with its ``score`` (the window row's weighted
  score). A window in which the account had no events at all scores 0 ("silence"): the windows between two
  observed ones, and those after the last one once the event-time frontier has made them final, so an
  account whose events stop entirely is detected without waiting for its next event.
- ``baseline``: the exponentially weighted mean of the scores that entered it: the first sets it, each next
  one moves it by ``alpha * (score - baseline)``, ``alpha = 1 - 2 ** (-1 / half_life)``
  (ENGAGEMENT_DROP_HALF_LIFE_WINDOWS).
- ``armed``: at least ``warmup`` scores entered the baseline (ENGAGEMENT_DROP_WARMUP_WINDOWS) and it is at
  least ``min_baseline`` (ENGAGEMENT_DROP_MIN_BASELINE): quiet accounts never page.
- ``low``: armed, and ``score < (1 - threshold) * baseline`` (ENGAGEMENT_DROP_THRESHOLD).
- Outside a drop, a low window is counted and kept out of the baseline (a drop must not lower its own
  yardstick); ``windows`` low windows in a row (ENGAGEMENT_DROP_WINDOWS) start a drop: a ``firing`` alert at
  the last of them, reason ``silence`` when all of them scored 0, else ``drop``. A window that is not low
  resets the count and enters the baseline.
- In a drop, low windows change nothing (the baseline stays the one from before the drop); the first window
  that is not low ends it: a ``resolved`` alert (reason ``recovered``) at that window, which enters the
  baseline.

Contract: :class:`DropDetector` is pure computation over a :class:`DropState` the caller stores (the
aggregator keeps it in each account's state, so it is replayed and recovered exactly like the counts). The
same windows observed in the same order give the same alerts, whose identity (account, window, state) is
deterministic: a replay writes the same rows again. Not thread-safe.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson

from pipeline.settings import Settings

FIRING: Final = "firing"
RESOLVED: Final = "resolved"


@dataclass(frozen=True)
class DropConfig:
    """The detector's settings (see the module docstring); ``window_ms`` is the windows' length."""

    window_ms: int
    half_life_windows: float = 24.0
    warmup_windows: int = 12
    min_baseline: float = 5.0
    threshold: float = 0.5
    windows: int = 3

    @classmethod
    def of(cls, settings: Settings) -> DropConfig:
        """The detector's settings (``ENGAGEMENT_DROP_*``) for the windows of ``settings``."""
        return cls(
            window_ms=settings.window_seconds * 1000,
            half_life_windows=settings.drop_half_life_windows,
            warmup_windows=settings.drop_warmup_windows,
            min_baseline=settings.drop_min_baseline,
            threshold=settings.drop_threshold,
            windows=settings.drop_windows,
        )

    @property
    def alpha(self) -> float:
        return float(1.0 - 2.0 ** (-1.0 / self.half_life_windows))


@dataclass
class DropState:
    """One account's detector state. ``last_end``: the end (ms) of the newest window observed, -1 if none;
    ``entered``: scores in the baseline; ``below``/``below_silent``: low windows in a row outside a drop,
    and how many of them scored 0; ``decay``: silent windows whose decay of ``baseline`` is not applied
    yet (see :meth:`DropDetector.baseline`)."""

    baseline: float = 0.0
    entered: int = 0
    below: int = 0
    below_silent: int = 0
    in_drop: bool = False
    last_end: int = -1
    decay: int = 0

    def to_list(self) -> list[Any]:
        """The stored form, without ``decay`` (stored apart: see :class:`~pipeline.account_state.AccountState`,
        so that a release reading exactly these six fields can still read the states of this one)."""
        return [self.baseline, self.entered, self.below, self.below_silent, int(self.in_drop), self.last_end]

    @classmethod
    def from_list(cls, fields: list[Any], decay: int = 0) -> DropState:
        """The inverse of :meth:`to_list`, with the ``decay`` stored beside it."""
        baseline, entered, below, below_silent, in_drop, last_end = fields[:6]
        return cls(
            float(baseline), int(entered), int(below), int(below_silent), bool(in_drop), int(last_end), int(decay)
        )


class Alert(NamedTuple):
    """A state change of one account, at the final window (ms bounds) that caused it: one row of
    ``engagement_alerts`` and one message of the ``engagement-alerts`` topic."""

    alert_id: str
    account_id: str
    window_start: int
    window_end: int
    state: str  # FIRING | RESOLVED
    reason: str  # drop | silence | recovered
    observed: float
    baseline: float
    drop_pct: float  # (1 - observed / baseline) x 100; 0 when the baseline is 0
    windows_below: int

    def to_json(self) -> bytes:
        """The alert as the ``engagement-alerts`` topic carries it (times as epoch ms)."""
        return orjson.dumps(self._asdict())


def alert_id(account_id: str, window_start: int, state: str) -> str:
    """The deterministic identity of an alert: the same account, window and state always give the same id."""
    key = f"{account_id}\x1f{window_start}\x1f{state}".encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


class DropDetector:
    """Applies the definitions of the module docstring to one account's :class:`DropState` at a time."""

    def __init__(self, config: DropConfig) -> None:
        self.config = config
        self._alpha = config.alpha
        self._floor = 1.0 - config.threshold

    def baseline(self, state: DropState) -> float:
        """The account's baseline with the decay of its pending silent windows.

        A long silence may be observed at once or in pieces (the frontier's steps); its decay is kept as a
        count and applied in one power when the next window enters, so the baseline is bit-for-bit the same
        however the silence was cut."""
        if state.decay:
            return state.baseline * (1.0 - self._alpha) ** state.decay
        return state.baseline

    def armed(self, state: DropState) -> bool:
        return state.entered >= self.config.warmup_windows and self.baseline(state) >= self.config.min_baseline

    def watches_silence(self, state: DropState) -> bool:
        """Whether windows without events could still raise an alert (so a timer must observe them): not
        in a drop, and a baseline above 0 and at least the minimum (silence only lowers a baseline, so one
        under the minimum never arms; one still warming up may arm on the silence itself)."""
        baseline = self.baseline(state)
        return not state.in_drop and baseline > 0 and baseline >= self.config.min_baseline

    def observe(self, account_id: str, state: DropState, window_start: int, score: float) -> list[Alert]:
        """Observe the final window starting at ``window_start`` (after the silent windows since the last
        one observed). Windows at or before the last observed one are ignored (already counted)."""
        alerts: list[Alert] = []
        if window_start < state.last_end:
            return alerts
        self._silent_until(account_id, state, window_start, alerts)
        self._step(account_id, state, window_start, float(score), alerts)
        return alerts

    def silence(self, account_id: str, state: DropState, until: int) -> list[Alert]:
        """Observe the windows without events from the last observed one up to ``until`` (ms, a window
        boundary, exclusive): those the frontier made final while the account had no events."""
        alerts: list[Alert] = []
        self._silent_until(account_id, state, until, alerts)
        return alerts

    def _silent_until(self, account_id: str, state: DropState, until: int, alerts: list[Alert]) -> None:
        """Score 0 for every window in [last_end, until), at most ``warmup + windows`` of them one by one:
        the rest cannot change anything but the baseline's decay, applied at once."""
        window_ms = self.config.window_ms
        start = state.last_end
        if start < 0 or start >= until:
            return
        while start < until:
            if state.in_drop:  # silence changes nothing in a drop
                state.last_end = until
                return
            if state.entered >= self.config.warmup_windows and not (self.armed(state) and self.baseline(state) > 0):
                # warm, and a 0 is not low (unarmed, or a baseline of 0): zeros only decay the baseline,
                # which keeps it unarmed (or at 0); the decay waits in ``decay`` (see baseline())
                gap = (until - start) // window_ms
                state.decay += gap
                state.entered += gap
                state.last_end = until
                return
            self._step(account_id, state, start, 0.0, alerts)
            start += window_ms

    def _step(self, account_id: str, state: DropState, start: int, score: float, alerts: list[Alert]) -> None:
        if state.decay:
            state.baseline, state.decay = self.baseline(state), 0
        low = self.armed(state) and score < self._floor * state.baseline
        if state.in_drop:
            if not low:
                alerts.append(self._alert(account_id, state, start, RESOLVED, "recovered", score, 0))
                state.in_drop = False
                self._enter(state, score)
        elif low:
            state.below += 1
            state.below_silent += score == 0.0
            if state.below >= self.config.windows:
                reason = "silence" if state.below_silent == state.below else "drop"
                alerts.append(self._alert(account_id, state, start, FIRING, reason, score, state.below))
                state.in_drop = True
                state.below = state.below_silent = 0
        else:
            state.below = state.below_silent = 0
            self._enter(state, score)
        state.last_end = start + self.config.window_ms

    def _enter(self, state: DropState, score: float) -> None:
        if state.entered == 0:
            state.baseline = score
        else:
            state.baseline += self._alpha * (score - state.baseline)
        state.entered += 1

    def _alert(
        self, account_id: str, state: DropState, start: int, kind: str, reason: str, score: float, below: int
    ) -> Alert:
        baseline = state.baseline
        return Alert(
            alert_id(account_id, start, kind),
            account_id,
            start,
            start + self.config.window_ms,
            kind,
            reason,
            score,
            baseline,
            (1.0 - score / baseline) * 100.0 if baseline > 0 else 0.0,
            below,
        )
