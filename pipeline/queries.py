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
FINAL_WINDOWS = """
SELECT account_id, toUInt32(window_start) AS window_start, toUInt32(window_end) AS window_end,
       likes, replies, mentions, engagers, follows, unfollows, followers, responses, score,
       engagement_rate, final
FROM engagement_windows FINAL
ORDER BY account_id, window_start
"""

COUNT_TABLE_ROWS = """
SELECT
    (SELECT count() FROM engagement_events FINAL) AS events,
    (SELECT count() FROM engagement_windows FINAL) AS windows,
    (SELECT count() FROM engagement_windows FINAL WHERE final = 1) AS final_windows,
    (SELECT count() FROM engagement_dead_letters FINAL) AS dead_letters
"""

DEAD_LETTERS_BY_REASON = """
SELECT reason, count() AS dead_letters
FROM engagement_dead_letters FINAL
GROUP BY reason
ORDER BY dead_letters DESC, reason
"""
