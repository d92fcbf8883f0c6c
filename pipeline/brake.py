"""The dead-letter brake: stop the worker when most recent input is invalid, instead of dead-lettering it all.

Bad input is normally dead-lettered and the worker goes on (one bad producer must not stop the others).
But when a deploy upstream breaks a producer, *everything* it sends becomes a dead letter, and the
worker would faithfully move a whole topic into the dead-letter queue and commit past it. The brake
stops that: :class:`DeadLetterBrake` is told, for every consumed source message, whether it was
invalid, and raises :class:`DeadLetterBrakeTripped` once more than ``share`` of the last ``window``
messages were.

Rules (the contract the tests pin down):

- One observation per source message. A message is invalid when decoding rejected it, and counts as
  the share of its JSON array's elements that were rejected (any reason but ``late``: a late event is
  valid input that arrived after its window was final): a producer batching 100 events with one bad
  among them is 1 % bad, not a bad message. Messages of the re-key topic are ours and are not observed.
- It trips when, over the last ``window`` observations, ``invalid / window > share`` (``invalid``: the
  sum of the messages' invalid shares). It never trips
  before ``window`` messages have been observed: a handful of bad messages on a quiet topic is no bad
  deploy, and a fixed denominator makes the threshold mean the same at start-up as later.
- ``share >= 1`` disables it (no share can exceed 1); ``share = 0`` trips on any invalid message once
  ``window`` messages were seen.
- The window spans every source topic and partition this worker consumes, in consumption order, and
  lives as long as the process: a restarted worker starts with an empty window at the committed
  offsets, so it trips again at most ``window`` messages into the same bad input.
- :meth:`DeadLetterBrake.observe` is O(1): a ring buffer of the last ``window`` outcomes with running
  sums, in integer millionths of a message (exact for whole messages), and a count of the reasons (one
  per message with invalid elements: its first rejection's).

What tripping means for the batch (not acknowledged, not persisted, its dead letters not produced) is
:class:`~pipeline.processor.BatchProcessor`'s contract; the worker then serves ``/metrics`` for
``ENGAGEMENT_DEAD_LETTER_BRAKE_LINGER_SECONDS`` (processing nothing), so the trip is scraped, and exits with
:data:`EXIT_CODE`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pipeline import metrics
from pipeline.events import Reason, Rejection

SHARE_SETTING = "ENGAGEMENT_DEAD_LETTER_BRAKE_SHARE"
MESSAGES_SETTING = "ENGAGEMENT_DEAD_LETTER_BRAKE_MESSAGES"

EXIT_CODE = 65  # sysexits.h EX_DATAERR, "the input data was incorrect": apart from 70 (a bug, EX_SOFTWARE)

_LATE = Reason.LATE
_UNIT = 1_000_000  # a whole invalid message, in the ring's integer units


class DeadLetterBrakeTripped(RuntimeError):
    """More than ``share`` of the last ``window`` source messages were invalid; ``str()`` says what to do.

    ``topic``, ``partition``, ``offset``: the message whose observation tripped the brake (not committed:
    a restarted worker reads it again). ``reasons``: the most common reasons in the window, with counts.
    """

    def __init__(
        self,
        invalid: float,
        window: int,
        share: float,
        topic: str,
        partition: int,
        offset: int,
        reasons: Sequence[tuple[str, int]],
    ) -> None:
        self.invalid = invalid
        self.window = window
        self.share = share
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reasons = list(reasons)
        super().__init__(self._describe())

    @property
    def share_seen(self) -> float:
        return self.invalid / self.window

    def _describe(self) -> str:
        common = ", ".join(f"{reason} ({n})" for reason, n in self.reasons) or "none"
        return (
            f"dead-letter brake tripped: {self.invalid:g} of the last {self.window} source messages "
            f"({self.share_seen:.1%}) were invalid, more than the allowed {self.share:.1%}; "
            f"at {self.topic} partition {self.partition} offset {self.offset}; "
            f"most common reasons: {common}. "
            "Stopping without committing: nothing of this batch is committed or dead-lettered, and a worker "
            f"started on the same input stops again within {self.window} messages. Look at the producer of that "
            "topic (a bad deploy upstream?) and at the payloads from that offset on. To dead-letter such input "
            "instead, raise "
            f"{SHARE_SETTING} (now {self.share:g}; 1 disables the brake), or {MESSAGES_SETTING} (now "
            f"{self.window}) for a burst of bad input to fit among valid messages."
        )


class DeadLetterBrake:
    """Counts invalid source messages over a sliding window of the last ``window`` messages (see the
    module docstring). Not thread-safe: one per :class:`~pipeline.processor.BatchProcessor`."""

    __slots__ = ("_invalid", "_limit", "_next", "_reasons", "_ring", "_seen", "disabled", "share", "window")

    def __init__(self, share: float, window: int) -> None:
        if not share >= 0:  # NaN too
            raise ValueError(f"share must be >= 0, not {share}")
        if window < 1:
            raise ValueError(f"window must be >= 1, not {window}")
        self.share = share
        self.window = window
        self.disabled = share >= 1
        # The most invalid units a full window may hold: the largest k with k / (window * unit) <= share,
        # exactly as the float comparison in the rule (no rounding surprise at the trip point).
        total = window * _UNIT
        limit = min(total, int(share * total))
        while limit < total and (limit + 1) / total <= share:
            limit += 1
        while limit >= 0 and limit / total > share:
            limit -= 1
        self._limit = limit
        # Per slot: the invalid units of the message and its first reason (None: valid).
        self._ring: list[tuple[int, str | None]] = [(0, None)] * window
        self._next = 0  # the slot the next observation overwrites
        self._seen = 0  # observations so far, capped at window
        self._invalid = 0  # invalid units in the ring
        self._reasons: Counter[str] = Counter()  # reasons in the ring

    @property
    def invalid_share(self) -> float:
        """The share of invalid messages among the last ``window`` observations (or fewer, at start)."""
        return self._invalid / (self._seen * _UNIT) if self._seen else 0.0

    def observe(self, rejections: Sequence[Rejection], topic: str, partition: int, offset: int, valid: int = 0) -> None:
        """Record one source message with the ``rejections`` its decoding produced (empty: valid) and
        the number of ``valid`` events it carried (the message counts as its invalid share).

        Raises :class:`DeadLetterBrakeTripped` when this observation takes the window over the share.
        """
        if self.disabled:
            return
        reason: str | None = None
        bad = 0
        for rejection in rejections:
            if rejection.reason is not _LATE:
                bad += 1
                if reason is None:
                    reason = rejection.reason.value
        units = bad * _UNIT // (bad + valid) if bad else 0
        ring, slot = self._ring, self._next
        evicted_units, evicted = ring[slot]
        ring[slot] = (units, reason)
        slot += 1
        self._next = slot if slot < self.window else 0
        self._invalid += units - evicted_units
        if evicted is not None:
            self._reasons[evicted] -= 1
        if reason is not None:
            self._reasons[reason] += 1
        if self._seen < self.window:
            self._seen += 1
            if self._seen < self.window:
                return
        if self._invalid > self._limit:
            self._trip(topic, partition, offset)

    def _trip(self, topic: str, partition: int, offset: int) -> None:
        metrics.DEAD_LETTER_BRAKE_TRIPS.inc()
        reasons = [(r, n) for r, n in self._reasons.most_common() if n > 0][:3]
        invalid = self._invalid / _UNIT
        raise DeadLetterBrakeTripped(invalid, self.window, self.share, topic, partition, offset, reasons)
