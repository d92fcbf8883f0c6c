"""Every SQL statement the commands run (DDL lives in ``schemas/``). Parameters are ``%(name)s``-bound.

All statements run unchanged on ClickHouse 18.16 and on chDB 26.x.
"""

from __future__ import annotations

# Per account over [since, until): followers at the newest window, distinct inbound engagers.
_ACCOUNT_TOTALS = """
SELECT account_id, followers, engagers,
       if(followers = 0, NULL, round(engagers / followers, 4)) AS engagement_rate
FROM
(
    SELECT account_id, argMax(followers, window_start) AS followers
    FROM engagement_windows FINAL
    WHERE window_start >= toDateTime(%(since)s, 'UTC') AND window_start < toDateTime(%(until)s, 'UTC')
    GROUP BY account_id
) AS audience
ANY LEFT JOIN
(
    SELECT account_id, uniqExact(actor_id) AS engagers
    FROM engagement_events FINAL
    WHERE ts >= toDateTime(%(since)s, 'UTC') AND ts < toDateTime(%(until)s, 'UTC')
      AND type IN ('like', 'reply', 'mention') AND actor_id != account_id
    GROUP BY account_id
) AS engaged USING account_id
"""

TOP_BY_FOLLOWERS = (
    _ACCOUNT_TOTALS
    + """
ORDER BY followers DESC, account_id
LIMIT %(limit)s
"""
)

TOP_BY_ENGAGEMENT_RATE = (
    _ACCOUNT_TOTALS
    + """
WHERE followers >= %(min_followers)s
ORDER BY engagement_rate DESC, account_id
LIMIT %(limit)s
"""
)

EVENT_TIME_RANGE = """
SELECT toUInt32(min(ts)) AS first_ts, toUInt32(max(ts)) + 1 AS last_ts, count() AS events
FROM engagement_events
"""

# The final window rows, deduplicated, with times as epoch seconds (for comparisons and exports).
# FINAL is read in a subquery and sorted outside it: on a cluster, ClickHouse 18.16 fails to sort rows read
# with FINAL straight from a Distributed table ("Cannot find column ts_ms in source stream").
FINAL_WINDOWS = """
SELECT *
FROM
(
    SELECT account_id, toUInt32(window_start) AS window_start, toUInt32(window_end) AS window_end,
           likes, replies, mentions, engagers, follows, unfollows, followers, responses, score,
           engagement_rate, final
    FROM engagement_windows FINAL
)
ORDER BY account_id, window_start
"""

COUNT_TABLE_ROWS = """
SELECT
    (SELECT count() FROM engagement_events FINAL) AS events,
    (SELECT count() FROM engagement_windows FINAL) AS windows,
    (SELECT count() FROM engagement_windows FINAL WHERE final = 1) AS final_windows,
    (SELECT count() FROM engagement_dead_letters FINAL) AS dead_letters
"""

# One account's engagement-drop alerts (pipeline.drops), oldest first.
# (FINAL in a subquery, sorted outside it: see FINAL_WINDOWS.)
ACCOUNT_ALERTS = """
SELECT *
FROM
(
    SELECT toString(window_start) AS window_start, state, reason, round(observed, 1) AS observed,
           round(baseline, 1) AS baseline, round(drop_pct, 1) AS drop_pct
    FROM engagement_alerts FINAL
    WHERE account_id = %(account)s
)
ORDER BY window_start, state
"""

DEAD_LETTERS_BY_REASON = """
SELECT reason, count() AS dead_letters
FROM engagement_dead_letters FINAL
GROUP BY reason
ORDER BY dead_letters DESC, reason
"""


# -- The account report -----------------------------------------------------------------------------------
# Issue 5: the definitions are pipeline.report_model's; pipeline.report runs these statements and assembles
# the AccountReport. Every statement takes the same parameters (extra ones are ignored):
#   account          A
#   as_of            T, epoch ms, exclusive
#   start            T - days, epoch ms: the period P = [start, as_of)
#   burst_threshold  a burst actor made more than this many engagements to others in one UTC minute of P
#   weight_like, weight_mention, weight_reply   the weights of the top engagers' score
#   whole_minutes_from, whole_minutes_until, whole_hours_from, whole_hours_until   epoch ms: the whole UTC
#                    minutes (hours) inside P are [from, until) (see :func:`rollup_params`; empty when P
#                    lies inside one minute/hour); the rest of P is the partial buckets at its edges
# Fixed-length windows are written ``%(as_of)s - N * 86400000`` (N days before T); they and the top 10
# are report_model's WEEK_MS, CIRCLE_DAYS and TOP_ENGAGERS, written out. Self-events (actor_id =
# account_id) count for nothing anywhere (report_model's readings): every read has ``actor_id !=
# account_id`` (follower snapshots have no actor, ''). "Inbound" is always
# ``account_id = A AND type IN ('like', 'reply', 'mention') AND actor_id != account_id``. NULL is
# "undefined" (a division by zero), never 0. Counts are exact (count, uniqExact; no uniq, no quantile).
#
# Each event counts once: statements read ``engagement_events FINAL``, which is cheap on A's own events
# (``account_id = A``: a range of the primary key), or aggregate what duplicates cannot change
# (``uniqExact(event_id)``, ``min``, ``uniqExact(account_id)``, sets for ``IN``). Reads across accounts go
# to the rollups of schemas/004_rollups.sql (kept by materialized views; duplicates absorbed the same
# way): A's outbound events and responses are a key range of ``engagement_outbound`` (ordered by actor),
# and the burst test reads ``engagement_actor_minutes`` for the whole minutes inside P and
# ``engagement_events`` for the partial minutes at P's edges, merging uniqExact states per (actor, minute)
# so the answer is the raw events' to the last event. The daily engagers read ``engagement_account_hours``
# the same way. All of it assumes an event_id names one event.
#
# ClickHouse 18.16 has no window functions and no WITH subqueries, and its WITH expressions do not reach
# into subqueries; chDB 26 wants an alias on every joined subquery. So: nested subqueries, aliased joins
# ``ANY LEFT JOIN ... USING`` (a missing right row reads as 0s: a ``1 AS has_x`` column tells them apart),
# ``IN (subquery)``, and arrays: an exact median is the middle of ``arraySort(groupArray(...))``, followers
# at many ends come from one account's follower events gathered into arrays.
# -----------------------------------------------------------------------------------------------------------

# The default T: the newest event time in the store + 1 ms, and whether there is any event.
REPORT_DEFAULT_AS_OF = """
SELECT max(ts_ms) + 1 AS as_of, count() AS events
FROM engagement_events
"""

# One row per UTC day that P touches, in day order: day (YYYY-MM-DD); engagers (distinct inbound actors in
# the part of the day inside P); followers at the day's end, or at T for the last day (so the last row's
# followers are the followers at T); engagement_rate.
# Followers at an end E: the latest snapshot with ts < E (snapshots sorted by (ts_ms, event_id), the last
# of those before E), plus follows minus unfollows after it and before E (all those before E when there is
# no snapshot), never below 0. Self-follows do not count. Engagers: the whole hours of the day inside P from
# engagement_account_hours, the partial hours at P's edges from engagement_events, merged per day.
REPORT_DAILY = """
SELECT day, engagers, followers, if(followers = 0, NULL, engagers / followers) AS engagement_rate
FROM
(
    SELECT
        day_index,
        toString(toDate(toDateTime(day_index * 86400, 'UTC'))) AS day,
        least((day_index + 1) * 86400000, %(as_of)s) AS end_ms,
        arrayCount(ms -> ms < end_ms, snapshot_ts) AS snapshots_before_end,
        snapshot_ts[snapshots_before_end] AS snapshot_ms,
        arrayCount(ms -> (snapshots_before_end = 0 OR ms > snapshot_ms) AND ms < end_ms, follow_ts)
            - arrayCount(ms -> (snapshots_before_end = 0 OR ms > snapshot_ms) AND ms < end_ms, unfollow_ts)
            AS change,
        toUInt64(greatest(0, if(snapshots_before_end = 0, 0, snapshot_value[snapshots_before_end]) + change))
            AS followers
    FROM
    (
        SELECT
            arraySort(groupArrayIf((ts_ms, event_id, ifNull(followers, 0)), type = 'followers')) AS snapshots,
            arrayMap(s -> s.1, snapshots) AS snapshot_ts,
            arrayMap(s -> s.3, snapshots) AS snapshot_value,
            groupArrayIf(ts_ms, type = 'follow') AS follow_ts,
            groupArrayIf(ts_ms, type = 'unfollow') AS unfollow_ts,
            arrayMap(
                k -> toInt64(intDiv(%(start)s, 86400000) + k),
                range(toUInt64(intDiv(%(as_of)s - 1, 86400000) - intDiv(%(start)s, 86400000) + 1))
            ) AS day_indexes
        FROM engagement_events FINAL
        WHERE account_id = %(account)s AND type IN ('followers', 'follow', 'unfollow') AND actor_id != account_id
          AND ts_ms < %(as_of)s
    )
    ARRAY JOIN day_indexes AS day_index
) AS days
ANY LEFT JOIN
(
    SELECT day_index, uniqExactMerge(actors) AS engagers
    FROM
    (
        SELECT toInt64(intDiv(toUInt32(hour), 86400)) AS day_index, actors
        FROM engagement_account_hours
        WHERE account_id = %(account)s
          AND hour >= toDateTime(intDiv(%(whole_hours_from)s, 1000), 'UTC')
          AND hour < toDateTime(intDiv(%(whole_hours_until)s, 1000), 'UTC')
        UNION ALL
        SELECT toInt64(intDiv(ts_ms, 86400000)) AS day_index, uniqExactState(actor_id) AS actors
        FROM engagement_events
        WHERE account_id = %(account)s AND type IN ('like', 'reply', 'mention') AND actor_id != account_id
          AND ts_ms >= %(start)s AND ts_ms < %(as_of)s
          AND (ts_ms < %(whole_hours_from)s OR ts_ms >= %(whole_hours_until)s)
        GROUP BY day_index
    ) AS hours
    GROUP BY day_index
) AS engaged USING day_index
ORDER BY day_index
"""

# The inbound metrics, from one row per actor who engaged A in [min(start, T - 28d), T):
# engagers, likes, replies, mentions (in P); returning_engager_rate (of the engagers of [T-14d, T-7d), the
# share who engaged again in [T-7d, T)); loyal_core (actors in at least 3 of the 4 weeks
# [T-28d+7k d, T-21d+7k d)); the top engagers: top_actors and top_scores, the 10 highest weighted inbound
# scores in P, highest first, ties by actor_id ascending (byte order of UTF-8, which is code point order);
# inbound_score and top10_share (the top 10's score over all of it); bot_share (the share of A's inbound events in
# P made by burst actors) and human_engagers (engagers in P who are not burst actors).
# A burst actor made more than burst_threshold like/reply/mention events to other accounts (any account)
# in one aligned UTC minute, intDiv(ts_ms, 60000), counting the events inside P. Only A's engagers in P
# can weigh on A's bot share, so the burst test (across all accounts) is limited to them: their whole
# minutes inside P from engagement_actor_minutes, and the events of the partial minutes at P's edges from
# engagement_events, as uniqExact states merged per (actor, minute). Merging a state costs far more than
# reading a row, so the minutes are first narrowed by row counts (copies included: upper bounds of the
# distinct events): to the engagers whose total in engagement_actor_totals is above the threshold, then
# to their minutes whose count is (on 10M events, an account with 150,000 engagers: 1.1 s -> see
# bench/RESULTS.md).
REPORT_INBOUND = """
SELECT
    countIf(period_events > 0) AS engagers,
    sum(period_likes) AS likes,
    sum(period_replies) AS replies,
    sum(period_mentions) AS mentions,
    countIf(two_weeks_ago) AS engagers_two_weeks_ago,
    if(engagers_two_weeks_ago = 0, NULL, countIf(two_weeks_ago AND last_week) / engagers_two_weeks_ago)
        AS returning_engager_rate,
    countIf(weeks_engaged >= 3) AS loyal_core,
    sum(score) AS inbound_score,
    arraySlice(arraySort(x -> (-x.2, x.1), groupArrayIf((actor_id, score), period_events > 0)), 1, 10) AS top10,
    arrayMap(x -> x.1, top10) AS top_actors,
    arrayMap(x -> x.2, top10) AS top_scores,
    arraySum(top_scores) AS top10_score,
    if(inbound_score = 0, NULL, top10_score / inbound_score) AS top10_share,
    sum(period_events) AS inbound_events,
    if(inbound_events = 0, NULL, sumIf(period_events, burst) / inbound_events) AS bot_share,
    countIf(period_events > 0 AND NOT burst) AS human_engagers
FROM
(
    SELECT
        actor_id,
        countIf(ts_ms >= %(start)s) AS period_events,
        countIf(ts_ms >= %(start)s AND type = 'like') AS period_likes,
        countIf(ts_ms >= %(start)s AND type = 'reply') AS period_replies,
        countIf(ts_ms >= %(start)s AND type = 'mention') AS period_mentions,
        period_likes * %(weight_like)s + period_mentions * %(weight_mention)s + period_replies * %(weight_reply)s
            AS score,
        countIf(ts_ms >= %(as_of)s - 14 * 86400000 AND ts_ms < %(as_of)s - 7 * 86400000) > 0 AS two_weeks_ago,
        countIf(ts_ms >= %(as_of)s - 7 * 86400000) > 0 AS last_week,
        uniqExactIf(intDiv(ts_ms - (%(as_of)s - 28 * 86400000), 7 * 86400000), ts_ms >= %(as_of)s - 28 * 86400000)
            AS weeks_engaged,
        actor_id IN
        (
            SELECT actor_id
            FROM
            (
                SELECT actor_id, minute, events
                FROM engagement_actor_minutes
                PREWHERE (actor_id, minute) IN
                (
                    SELECT actor_id, minute
                    FROM engagement_actor_minutes
                    WHERE actor_id IN
                    (
                        SELECT actor_id
                        FROM engagement_actor_totals
                        WHERE actor_id IN
                        (
                            SELECT actor_id FROM engagement_events
                            WHERE account_id = %(account)s AND type IN ('like', 'reply', 'mention')
                              AND actor_id != account_id AND ts_ms >= %(start)s AND ts_ms < %(as_of)s
                        )
                        GROUP BY actor_id
                        HAVING countMerge(rows) > %(burst_threshold)s
                    )
                      AND minute >= toDateTime(intDiv(%(whole_minutes_from)s, 1000), 'UTC')
                      AND minute < toDateTime(intDiv(%(whole_minutes_until)s, 1000), 'UTC')
                    GROUP BY actor_id, minute
                    HAVING countMerge(rows) > %(burst_threshold)s
                )
                UNION ALL
                SELECT actor_id, toDateTime(intDiv(ts_ms, 60000) * 60, 'UTC') AS minute,
                       uniqExactState(event_id) AS events
                FROM engagement_events
                PREWHERE ts_ms >= %(start)s AND ts_ms < %(as_of)s
                  AND (ts_ms < %(whole_minutes_from)s OR ts_ms >= %(whole_minutes_until)s)
                WHERE actor_id IN
                (
                    SELECT actor_id FROM engagement_events
                    WHERE account_id = %(account)s AND type IN ('like', 'reply', 'mention')
                      AND actor_id != account_id AND ts_ms >= %(start)s AND ts_ms < %(as_of)s
                )
                  AND type IN ('like', 'reply', 'mention') AND actor_id != account_id
                  AND ts >= toDateTime(intDiv(%(start)s, 1000), 'UTC')
                  AND ts <= toDateTime(intDiv(%(as_of)s, 1000), 'UTC')
                GROUP BY actor_id, minute
            ) AS minutes
            GROUP BY actor_id, minute
            HAVING uniqExactMerge(events) > %(burst_threshold)s
        ) AS burst
    FROM engagement_events FINAL
    WHERE account_id = %(account)s AND type IN ('like', 'reply', 'mention') AND actor_id != account_id
      AND ts_ms >= least(%(start)s, %(as_of)s - 28 * 86400000) AND ts_ms < %(as_of)s
    GROUP BY actor_id
)
"""

# Responsiveness: each inbound reply/mention of A in P (a conversation) with its first response, the
# earliest reply by A to another account whose in_reply_to is the conversation's event_id and whose ts < T
# (it may precede the conversation: a negative delay). inbound_conversations; answered_24h (first response
# 0 to 86,400,000 ms after, bounds included); response_rate; median_response_seconds over the conversations
# with any response, whatever the delay: the delays in seconds (ms / 1000) sorted, the middle one or the
# mean of the two middle ones (Python's statistics.median of the same values, to the last bit); and the
# conversations per response-delay bucket (report_model's DELAY_BUCKETS, bounds inclusive, written out).
REPORT_RESPONSES = """
SELECT
    inbound_conversations,
    answered_24h,
    delay_before, delay_within_5m, delay_within_1h, delay_within_4h, delay_within_24h, delay_over_24h,
    delay_unanswered,
    if(inbound_conversations = 0, NULL, answered_24h / inbound_conversations) AS response_rate,
    if(
        empty(delays),
        NULL,
        (delays[intDiv(length(delays) + 1, 2)] / 1000 + delays[intDiv(length(delays), 2) + 1] / 1000) / 2
    ) AS median_response_seconds
FROM
(
    SELECT
        count() AS inbound_conversations,
        countIf(has_response = 1 AND delay_ms >= 0 AND delay_ms <= 86400000) AS answered_24h,
        countIf(has_response = 1 AND delay_ms < 0) AS delay_before,
        countIf(has_response = 1 AND delay_ms >= 0 AND delay_ms <= 300000) AS delay_within_5m,
        countIf(has_response = 1 AND delay_ms > 300000 AND delay_ms <= 3600000) AS delay_within_1h,
        countIf(has_response = 1 AND delay_ms > 3600000 AND delay_ms <= 14400000) AS delay_within_4h,
        countIf(has_response = 1 AND delay_ms > 14400000 AND delay_ms <= 86400000) AS delay_within_24h,
        countIf(has_response = 1 AND delay_ms > 86400000) AS delay_over_24h,
        countIf(has_response = 0) AS delay_unanswered,
        arraySort(groupArrayIf(delay_ms, has_response = 1)) AS delays
    FROM
    (
        SELECT has_response, first_response_ms - ts_ms AS delay_ms
        FROM
        (
            SELECT event_id AS conversation_id, ts_ms
            FROM engagement_events FINAL
            WHERE account_id = %(account)s AND type IN ('reply', 'mention') AND actor_id != account_id
              AND ts_ms >= %(start)s AND ts_ms < %(as_of)s
        ) AS conversations
        ANY LEFT JOIN
        (
            SELECT assumeNotNull(in_reply_to) AS conversation_id, min(ts_ms) AS first_response_ms, 1 AS has_response
            FROM engagement_outbound
            WHERE actor_id = %(account)s AND type = 'reply' AND in_reply_to IS NOT NULL AND ts_ms < %(as_of)s
            GROUP BY conversation_id
        ) AS responses USING conversation_id
    )
)
"""

# Broadcast vs dialogue, from A's own replies and mentions to other accounts in [min(start, T-90d), T):
# outbound (those in P); responses_sent (those of A's replies in P whose in_reply_to is an inbound
# reply/mention of A, of any time); dialogue_share; reciprocal_circle (the accounts U that A replied to or
# mentioned in [T-90d, T) and that engaged A in [T-90d, T)).
REPORT_OUTBOUND = """
SELECT
    uniqExactIf(event_id, ts_ms >= %(start)s) AS outbound,
    uniqExactIf(
        event_id,
        ts_ms >= %(start)s AND type = 'reply' AND in_reply_to IS NOT NULL
        AND assumeNotNull(in_reply_to) IN
        (
            SELECT event_id FROM engagement_events
            WHERE account_id = %(account)s AND type IN ('reply', 'mention') AND actor_id != account_id
        )
    ) AS responses_sent,
    if(outbound = 0, NULL, responses_sent / outbound) AS dialogue_share,
    uniqExactIf(
        account_id,
        ts_ms >= %(as_of)s - 90 * 86400000
        AND account_id IN
        (
            SELECT actor_id FROM engagement_events
            WHERE account_id = %(account)s AND type IN ('like', 'reply', 'mention') AND actor_id != account_id
              AND ts_ms >= %(as_of)s - 90 * 86400000 AND ts_ms < %(as_of)s
        )
    ) AS reciprocal_circle
FROM engagement_outbound
WHERE actor_id = %(account)s
  AND ts_ms >= least(%(start)s, %(as_of)s - 90 * 86400000) AND ts_ms < %(as_of)s
"""


# -- The leaderboard --------------------------------------------------------------------------------------
# Issue 5: `engagement leaderboard`. For EVERY account in one statement: followers at T, engagers in P,
# engagement_rate, inbound_conversations, answered_24h, response_rate and reciprocal_circle, each by the
# definition (and the readings) of the account report above, ranked. Parameters: as_of (T, epoch ms,
# exclusive), start (T - days), limit, and the whole hours of P (rollup_params). The candidates are every
# account_id of an event before T (self-events and follower snapshots included), as in report_model's
# readings.
#
# Five reads, joined by account_id (18.16 joins two tables per SELECT, so the joins nest), none with FINAL
# over the whole table (duplicates are absorbed by sets, uniqExact states, min and GROUP BY instead):
#   accounts   every account_id of an event before T (the candidates);
#   followers  the follower events before T (PREWHERE on type): snapshots and follows as sets of
#              (ts_ms, event_id[, value]) tuples, so a copy counts once;
#   engaged    engagers in P: engagement_account_hours for the whole hours of P, raw events for the
#              partial hours at its edges, uniqExact states merged per account;
#   responses  conversations in P (engagement_outbound holds every reply/mention to another account,
#              deduplicated by GROUP BY event_id) with their first response by the account they address:
#              responses are grouped by (in_reply_to, actor_id), so only the addressed account's replies
#              count;
#   circle     one pass over the (A, U) pairs of A's replies/mentions to U (engagement_outbound) and U's
#              engagements of A, both in [T-90d, T): a pair with both directions is in A's circle.
#              (3x faster than joining the two DISTINCT sides, measured on 10M events.)
# Aliases never reuse a column name (ClickHouse resolves an alias in WHERE before the column).
# The ranking: the chosen metric highest first, NULL (undefined) after every number, ties by account_id
# (byte order); LEADERBOARD_BY holds one fixed statement per metric, so no input is ever formatted in.
_LEADERBOARD = """
SELECT
    account_id,
    followers,
    engagers,
    if(followers = 0, NULL, engagers / followers) AS engagement_rate,
    inbound_conversations,
    answered_24h,
    if(inbound_conversations = 0, NULL, answered_24h / inbound_conversations) AS response_rate,
    reciprocal_circle
FROM
(
    SELECT account_id, followers, engagers, inbound_conversations, answered_24h
    FROM
    (
        SELECT account_id, followers, engagers
        FROM
        (
            SELECT account_id, followers
            FROM
            (
                SELECT account_id FROM engagement_events WHERE ts_ms < %(as_of)s GROUP BY account_id
            ) AS accounts
            ANY LEFT JOIN
            (
                SELECT
                    account_id,
                    length(snapshot_ts) AS snapshot_count,
                    snapshot_ts[snapshot_count] AS snapshot_ms,
                    arrayCount(f -> snapshot_count = 0 OR f.1 > snapshot_ms, follows)
                        - arrayCount(f -> snapshot_count = 0 OR f.1 > snapshot_ms, unfollows) AS change,
                    toUInt64(greatest(0, if(snapshot_count = 0, 0, snapshot_value[snapshot_count]) + change))
                        AS followers
                FROM
                (
                    SELECT
                        account_id,
                        arraySort(groupUniqArrayIf((ts_ms, event_id, ifNull(followers, 0)), type = 'followers'))
                            AS snapshots,
                        arrayMap(s -> s.1, snapshots) AS snapshot_ts,
                        arrayMap(s -> s.3, snapshots) AS snapshot_value,
                        groupUniqArrayIf((ts_ms, event_id), type = 'follow') AS follows,
                        groupUniqArrayIf((ts_ms, event_id), type = 'unfollow') AS unfollows
                    FROM engagement_events
                    PREWHERE type IN ('followers', 'follow', 'unfollow')
                    WHERE actor_id != account_id AND ts_ms < %(as_of)s
                    GROUP BY account_id
                )
            ) AS follower_counts USING account_id
        ) AS audience
        ANY LEFT JOIN
        (
            SELECT account_id, uniqExactMerge(actors) AS engagers
            FROM
            (
                SELECT account_id, actors
                FROM engagement_account_hours
                WHERE hour >= toDateTime(intDiv(%(whole_hours_from)s, 1000), 'UTC')
                  AND hour < toDateTime(intDiv(%(whole_hours_until)s, 1000), 'UTC')
                UNION ALL
                SELECT account_id, uniqExactState(actor_id) AS actors
                FROM engagement_events
                PREWHERE ts_ms >= %(start)s AND ts_ms < %(as_of)s
                  AND (ts_ms < %(whole_hours_from)s OR ts_ms >= %(whole_hours_until)s)
                WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
                  AND ts >= toDateTime(intDiv(%(start)s, 1000), 'UTC')
                  AND ts <= toDateTime(intDiv(%(as_of)s, 1000), 'UTC')
                GROUP BY account_id
            ) AS hours
            GROUP BY account_id
        ) AS engaged USING account_id
    ) AS measured
    ANY LEFT JOIN
    (
        SELECT
            owner AS account_id,
            count() AS inbound_conversations,
            countIf(
                has_response = 1 AND first_response_ms - conversation_ms >= 0
                AND first_response_ms - conversation_ms <= 86400000
            ) AS answered_24h
        FROM
        (
            SELECT event_id AS conversation_id, any(account_id) AS owner, any(ts_ms) AS conversation_ms
            FROM engagement_outbound
            WHERE ts_ms >= %(start)s AND ts_ms < %(as_of)s
            GROUP BY conversation_id
        ) AS conversations
        ANY LEFT JOIN
        (
            SELECT assumeNotNull(in_reply_to) AS conversation_id, actor_id AS owner,
                   min(ts_ms) AS first_response_ms, 1 AS has_response
            FROM engagement_outbound
            WHERE type = 'reply' AND in_reply_to IS NOT NULL AND ts_ms < %(as_of)s
            GROUP BY conversation_id, owner
        ) AS responses USING (conversation_id, owner)
        GROUP BY owner
    ) AS responsiveness USING account_id
) AS answered
ANY LEFT JOIN
(
    SELECT a AS account_id, count() AS reciprocal_circle
    FROM
    (
        SELECT a, u
        FROM
        (
            SELECT actor_id AS a, account_id AS u, 1 AS direction
            FROM engagement_outbound
            WHERE ts_ms >= %(as_of)s - 90 * 86400000 AND ts_ms < %(as_of)s
            UNION ALL
            SELECT account_id AS a, actor_id AS u, 2 AS direction
            FROM engagement_events
            WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
              AND ts_ms >= %(as_of)s - 90 * 86400000 AND ts_ms < %(as_of)s
        ) AS directed
        GROUP BY a, u
        HAVING min(direction) = 1 AND max(direction) = 2
    ) AS pairs
    GROUP BY a
) AS circle USING account_id
"""

LEADERBOARD_BY = {
    metric: _LEADERBOARD
    + f"ORDER BY isNull({metric}), {metric} DESC, account_id\nLIMIT %(limit)s\n"  # metric: a fixed name, here
    for metric in ("engagement_rate", "engagers", "response_rate", "reciprocal_circle", "followers")
}


def rollup_params(start: int, as_of: int) -> dict[str, int]:
    """The bounds of the whole UTC minutes and hours inside [start, as_of) (epoch ms), for the statements
    that read rollups: ``whole_X_from`` is ``start`` rounded up to a bucket, ``whole_X_until`` is ``as_of``
    rounded down (``until <= from`` when no whole bucket fits: the statements then read raw events only).
    """
    minute, hour = 60_000, 3_600_000
    return {
        "whole_minutes_from": -(-start // minute) * minute,
        "whole_minutes_until": as_of // minute * minute,
        "whole_hours_from": -(-start // hour) * hour,
        "whole_hours_until": as_of // hour * hour,
    }
