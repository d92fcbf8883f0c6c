"""A direct, whole-input implementation of the window definitions: the oracle the stream is checked against.

It is written for clarity, not speed, and shares no logic with :mod:`pipeline.aggregator`. It assumes no
event is late (later than the allowed lateness), as in the test streams.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from pipeline.aggregator import WindowConfig
from pipeline.events import FOLLOW, FOLLOWERS, LIKE, MENTION, REPLY, UNFOLLOW, Event

# (account_id, window_start_ms) -> the row's values without version, as WindowRow.values() gives them.
ReferenceRows = dict[tuple[str, int], tuple[object, ...]]


def followers_at(events: list[Event], end: int) -> int:
    """Followers at ``end`` straight from the definition (see :mod:`pipeline.followers`)."""
    snapshots = [e for e in events if e.type == FOLLOWERS and e.ts_ms < end]
    if snapshots:
        latest = max(snapshots, key=lambda e: (e.ts_ms, e.event_id))
        base, since = latest.followers or 0, latest.ts_ms
    else:
        base, since = 0, -1
    delta = sum(1 if e.type == FOLLOW else -1 for e in events if e.type in (FOLLOW, UNFOLLOW) and since < e.ts_ms < end)
    return max(0, base + delta)


def reference_rows(events: Iterable[Event], config: WindowConfig) -> ReferenceRows:
    """Every final window row the pipeline must write for ``events`` (any order, duplicates allowed)."""
    unique: dict[str, Event] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    counted = [e for e in unique.values() if e.actor_id != e.account_id]

    by_account: dict[str, list[Event]] = defaultdict(list)
    for event in counted:
        by_account[event.account_id].append(event)

    responses: dict[tuple[str, int], int] = defaultdict(int)
    for reply in counted:
        if reply.type != REPLY or reply.in_reply_to is None:
            continue
        answered = unique.get(reply.in_reply_to)
        if (
            answered is not None
            and answered.type in (REPLY, MENTION)
            and answered.account_id == reply.actor_id
            and answered.actor_id != answered.account_id
            and answered.ts_ms >= reply.ts_ms - config.conversation_horizon_ms
        ):
            responses[(reply.actor_id, config.window_start(reply.ts_ms))] += 1

    keys: set[tuple[str, int]] = set(responses)
    for event in counted:
        keys.add((event.account_id, config.window_start(event.ts_ms)))

    rows: ReferenceRows = {}
    for account_id, start in keys:
        end = start + config.window_ms
        inside = [e for e in by_account.get(account_id, []) if start <= e.ts_ms < end]
        likes = sum(1 for e in inside if e.type == LIKE)
        replies = sum(1 for e in inside if e.type == REPLY)
        mentions = sum(1 for e in inside if e.type == MENTION)
        engagers = len({e.actor_id for e in inside if e.type in (LIKE, REPLY, MENTION)})
        follows = sum(1 for e in inside if e.type == FOLLOW)
        unfollows = sum(1 for e in inside if e.type == UNFOLLOW)
        followers = followers_at(by_account.get(account_id, []), end)
        score = config.weight_like * likes + config.weight_mention * mentions + config.weight_reply * replies
        rows[(account_id, start)] = (
            account_id,
            start,
            end,
            likes,
            replies,
            mentions,
            engagers,
            follows,
            unfollows,
            followers,
            responses.get((account_id, start), 0),
            score,
            engagers / followers if followers else None,
            1,
        )
    return rows
