-- Rollups of engagement_events, kept by materialized views, that the account report, the leaderboard and
-- the dashboards read instead of scanning raw events. Each is filled on every insert into engagement_events
-- (and once here from the events already stored), so it sees every copy of a retried or replayed event.
-- Duplicates cannot change what is read from them: the aggregated tables hold uniqExact states (a set union
-- absorbs a second copy; the counts, the ``rows`` columns, are only upper bounds), and
-- engagement_outbound is read only through min, uniqExact and DISTINCT.
-- Self-events (actor_id = account_id) are left out of all three, as they are out of every metric.
--
-- Readers combine whole buckets from a rollup with the raw events of the partial buckets at the edges of
-- their period (pipeline.queries), so the answers equal those of the raw-event statements, exactly.

-- Per (account, UTC hour, inbound type): the distinct inbound events and their distinct actors.
-- Engagers of any span of whole hours = uniqExactMerge(actors) over its rows.
CREATE TABLE IF NOT EXISTS engagement_account_hours
(
    account_id String,
    hour DateTime('UTC'),
    type String,
    events AggregateFunction(uniqExact, String),
    actors AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (account_id, hour, type)
{{TTL_EVENTS:hour}};

-- Per (actor, UTC minute): the distinct like/reply/mention events the actor made to other accounts, the
-- burst test of the report (more than a threshold in one aligned minute). ``rows`` counts the rows
-- inserted, copies included: an upper bound of the distinct events that is cheap to merge, so a reader
-- merges the states only of the minutes whose bound is above its threshold.
CREATE TABLE IF NOT EXISTS engagement_actor_minutes
(
    actor_id String,
    minute DateTime('UTC'),
    rows AggregateFunction(count),
    events AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (actor_id, minute)
{{TTL_EVENTS:minute}};

-- Per actor: the like/reply/mention rows to other accounts ever inserted, copies included. An upper bound
-- of anything the actor did in any minute: an actor at or below a burst threshold here cannot be a burst
-- actor, so the burst test reads the minutes of the few actors above it. (Kept forever: one row per actor;
-- a bound that only grows stays a bound.)
CREATE TABLE IF NOT EXISTS engagement_actor_totals
(
    actor_id String,
    rows AggregateFunction(count)
)
ENGINE = AggregatingMergeTree
ORDER BY actor_id;

-- Every reply and mention to another account, ordered by who wrote it: an account's outbound events and
-- responses are a range of this key instead of a scan of engagement_events (ordered by the addressee).
CREATE TABLE IF NOT EXISTS engagement_outbound
(
    event_id String,
    type String,
    ts_ms Int64,
    ts DateTime('UTC'),
    actor_id String,
    account_id String,
    in_reply_to Nullable(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (actor_id, ts_ms, event_id)
{{TTL_EVENTS:ts}};

CREATE MATERIALIZED VIEW IF NOT EXISTS engagement_account_hours_mv TO engagement_account_hours AS
SELECT account_id, toDateTime(intDiv(ts_ms, 3600000) * 3600, 'UTC') AS hour, type,
       uniqExactState(event_id) AS events, uniqExactState(actor_id) AS actors
FROM engagement_events
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY account_id, hour, type;

CREATE MATERIALIZED VIEW IF NOT EXISTS engagement_actor_minutes_mv TO engagement_actor_minutes AS
SELECT actor_id, toDateTime(intDiv(ts_ms, 60000) * 60, 'UTC') AS minute, countState() AS rows,
       uniqExactState(event_id) AS events
FROM engagement_events
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY actor_id, minute;

CREATE MATERIALIZED VIEW IF NOT EXISTS engagement_actor_totals_mv TO engagement_actor_totals AS
SELECT actor_id, countState() AS rows
FROM engagement_events
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY actor_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS engagement_outbound_mv TO engagement_outbound AS
SELECT event_id, type, ts_ms, toDateTime(intDiv(ts_ms, 1000), 'UTC') AS ts, actor_id, account_id, in_reply_to
FROM engagement_events
WHERE type IN ('reply', 'mention') AND actor_id != account_id;

-- The events stored before the views existed. Run after the views are created, so no insert falls between
-- the two; an event both copied here and seen by a view is a duplicate, which the readers absorb. A file
-- interrupted before it is recorded is applied again: the same.
INSERT INTO engagement_account_hours
SELECT account_id, toDateTime(intDiv(ts_ms, 3600000) * 3600, 'UTC') AS hour, type,
       uniqExactState(event_id) AS events, uniqExactState(actor_id) AS actors
FROM engagement_events
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY account_id, hour, type;

INSERT INTO engagement_actor_minutes
SELECT actor_id, toDateTime(intDiv(ts_ms, 60000) * 60, 'UTC') AS minute, countState() AS rows,
       uniqExactState(event_id) AS events
FROM engagement_events
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY actor_id, minute;

INSERT INTO engagement_actor_totals
SELECT actor_id, countState() AS rows
FROM engagement_events
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY actor_id;

INSERT INTO engagement_outbound
SELECT event_id, type, ts_ms, toDateTime(intDiv(ts_ms, 1000), 'UTC') AS ts, actor_id, account_id, in_reply_to
FROM engagement_events
WHERE type IN ('reply', 'mention') AND actor_id != account_id;
