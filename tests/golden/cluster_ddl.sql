CREATE DATABASE IF NOT EXISTS `engagement` ON CLUSTER 'engagement_cluster';

CREATE TABLE IF NOT EXISTS `engagement`.engagement_schema_migrations ON CLUSTER 'engagement_cluster' (version UInt32, name String, checksum String, applied_at DateTime('UTC') DEFAULT now()) ENGINE = ReplicatedMergeTree('/clickhouse/tables/cluster/engagement/engagement_schema_migrations', '{shard}-{replica}') ORDER BY version;

CREATE TABLE IF NOT EXISTS `engagement`.engagement_events_local ON CLUSTER 'engagement_cluster'
(
    event_id String,
    type String,
    ts_ms Int64,
    ts DateTime('UTC') DEFAULT toDateTime(intDiv(ts_ms, 1000), 'UTC'),
    actor_id String,
    account_id String,
    post_id Nullable(String),
    in_reply_to Nullable(String),
    followers Nullable(Int64),
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    ingested_ms Int64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/engagement/engagement_events', '{replica}')
PARTITION BY toYYYYMM(ts)
ORDER BY (account_id, ts_ms, event_id);

CREATE TABLE IF NOT EXISTS `engagement`.engagement_events ON CLUSTER 'engagement_cluster' AS `engagement`.engagement_events_local
ENGINE = Distributed('engagement_cluster', 'engagement', 'engagement_events_local', cityHash64(account_id));

CREATE TABLE IF NOT EXISTS `engagement`.engagement_windows_local ON CLUSTER 'engagement_cluster'
(
    account_id String,
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    likes UInt32,
    replies UInt32,
    mentions UInt32,
    engagers UInt32,
    follows UInt32,
    unfollows UInt32,
    followers UInt64,
    responses UInt32,
    score UInt64,
    engagement_rate Nullable(Float64),
    final UInt8,
    version UInt64,
    written_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/engagement/engagement_windows', '{replica}', version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (account_id, window_start);

CREATE TABLE IF NOT EXISTS `engagement`.engagement_windows ON CLUSTER 'engagement_cluster' AS `engagement`.engagement_windows_local
ENGINE = Distributed('engagement_cluster', 'engagement', 'engagement_windows_local', cityHash64(account_id));

CREATE TABLE IF NOT EXISTS `engagement`.engagement_dead_letters_local ON CLUSTER 'engagement_cluster'
(
    dead_letter_id String,
    reason String,
    detail String,
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    element_index Int32,
    payload String CODEC(ZSTD(1)),
    payload_bytes UInt32,
    truncated UInt8,
    failed_at DateTime('UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/engagement/engagement_dead_letters', '{replica}')
PARTITION BY toYYYYMM(failed_at)
ORDER BY (dead_letter_id)
TTL failed_at + INTERVAL 30 DAY;

CREATE TABLE IF NOT EXISTS `engagement`.engagement_dead_letters ON CLUSTER 'engagement_cluster' AS `engagement`.engagement_dead_letters_local
ENGINE = Distributed('engagement_cluster', 'engagement', 'engagement_dead_letters_local', cityHash64(dead_letter_id));

CREATE TABLE IF NOT EXISTS `engagement`.engagement_account_hours_local ON CLUSTER 'engagement_cluster'
(
    account_id String,
    hour DateTime('UTC'),
    type String,
    events AggregateFunction(uniqExact, String),
    actors AggregateFunction(uniqExact, String)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/engagement/engagement_account_hours', '{replica}')
PARTITION BY toYYYYMM(hour)
ORDER BY (account_id, hour, type);

CREATE TABLE IF NOT EXISTS `engagement`.engagement_account_hours ON CLUSTER 'engagement_cluster' AS `engagement`.engagement_account_hours_local
ENGINE = Distributed('engagement_cluster', 'engagement', 'engagement_account_hours_local', cityHash64(account_id));

CREATE TABLE IF NOT EXISTS `engagement`.engagement_actor_minutes_local ON CLUSTER 'engagement_cluster'
(
    actor_id String,
    minute DateTime('UTC'),
    rows AggregateFunction(count),
    events AggregateFunction(uniqExact, String)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/engagement/engagement_actor_minutes', '{replica}')
PARTITION BY toYYYYMM(minute)
ORDER BY (actor_id, minute);

CREATE TABLE IF NOT EXISTS `engagement`.engagement_actor_minutes ON CLUSTER 'engagement_cluster' AS `engagement`.engagement_actor_minutes_local
ENGINE = Distributed('engagement_cluster', 'engagement', 'engagement_actor_minutes_local', cityHash64(actor_id));

CREATE TABLE IF NOT EXISTS `engagement`.engagement_actor_totals_local ON CLUSTER 'engagement_cluster'
(
    actor_id String,
    rows AggregateFunction(count)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/engagement/engagement_actor_totals', '{replica}')
ORDER BY actor_id;

CREATE TABLE IF NOT EXISTS `engagement`.engagement_actor_totals ON CLUSTER 'engagement_cluster' AS `engagement`.engagement_actor_totals_local
ENGINE = Distributed('engagement_cluster', 'engagement', 'engagement_actor_totals_local', cityHash64(actor_id));

CREATE TABLE IF NOT EXISTS `engagement`.engagement_outbound_local ON CLUSTER 'engagement_cluster'
(
    event_id String,
    type String,
    ts_ms Int64,
    ts DateTime('UTC'),
    actor_id String,
    account_id String,
    in_reply_to Nullable(String)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/engagement/engagement_outbound', '{replica}')
PARTITION BY toYYYYMM(ts)
ORDER BY (actor_id, ts_ms, event_id);

CREATE TABLE IF NOT EXISTS `engagement`.engagement_outbound ON CLUSTER 'engagement_cluster' AS `engagement`.engagement_outbound_local
ENGINE = Distributed('engagement_cluster', 'engagement', 'engagement_outbound_local', cityHash64(account_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS `engagement`.engagement_account_hours_mv ON CLUSTER 'engagement_cluster' TO `engagement`.engagement_account_hours_local AS
SELECT account_id, toDateTime(intDiv(ts_ms, 3600000) * 3600, 'UTC') AS hour, type,
       uniqExactState(event_id) AS events, uniqExactState(actor_id) AS actors
FROM `engagement`.engagement_events_local
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY account_id, hour, type;

CREATE MATERIALIZED VIEW IF NOT EXISTS `engagement`.engagement_actor_minutes_mv ON CLUSTER 'engagement_cluster' TO `engagement`.engagement_actor_minutes_local AS
SELECT actor_id, toDateTime(intDiv(ts_ms, 60000) * 60, 'UTC') AS minute, countState() AS rows,
       uniqExactState(event_id) AS events
FROM `engagement`.engagement_events_local
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY actor_id, minute;

CREATE MATERIALIZED VIEW IF NOT EXISTS `engagement`.engagement_actor_totals_mv ON CLUSTER 'engagement_cluster' TO `engagement`.engagement_actor_totals_local AS
SELECT actor_id, countState() AS rows
FROM `engagement`.engagement_events_local
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY actor_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS `engagement`.engagement_outbound_mv ON CLUSTER 'engagement_cluster' TO `engagement`.engagement_outbound_local AS
SELECT event_id, type, ts_ms, toDateTime(intDiv(ts_ms, 1000), 'UTC') AS ts, actor_id, account_id, in_reply_to
FROM `engagement`.engagement_events_local
WHERE type IN ('reply', 'mention') AND actor_id != account_id;

-- once, from one node:
INSERT INTO `engagement`.engagement_account_hours
SELECT account_id, toDateTime(intDiv(ts_ms, 3600000) * 3600, 'UTC') AS hour, type,
       uniqExactState(event_id) AS events, uniqExactState(actor_id) AS actors
FROM `engagement`.engagement_events
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY account_id, hour, type;

-- once, from one node:
INSERT INTO `engagement`.engagement_actor_minutes
SELECT actor_id, toDateTime(intDiv(ts_ms, 60000) * 60, 'UTC') AS minute, countState() AS rows,
       uniqExactState(event_id) AS events
FROM `engagement`.engagement_events
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY actor_id, minute;

-- once, from one node:
INSERT INTO `engagement`.engagement_actor_totals
SELECT actor_id, countState() AS rows
FROM `engagement`.engagement_events
WHERE type IN ('like', 'reply', 'mention') AND actor_id != account_id
GROUP BY actor_id;

-- once, from one node:
INSERT INTO `engagement`.engagement_outbound
SELECT event_id, type, ts_ms, toDateTime(intDiv(ts_ms, 1000), 'UTC') AS ts, actor_id, account_id, in_reply_to
FROM `engagement`.engagement_events
WHERE type IN ('reply', 'mention') AND actor_id != account_id;

CREATE TABLE IF NOT EXISTS `engagement`.engagement_alerts_local ON CLUSTER 'engagement_cluster'
(
    alert_id String,
    account_id String,
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    state String,
    reason String,
    observed Float64,
    baseline Float64,
    drop_pct Float64,
    windows_below UInt32,
    detected_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/engagement/engagement_alerts', '{replica}')
PARTITION BY toYYYYMM(window_start)
ORDER BY (account_id, window_start, state);

CREATE TABLE IF NOT EXISTS `engagement`.engagement_alerts ON CLUSTER 'engagement_cluster' AS `engagement`.engagement_alerts_local
ENGINE = Distributed('engagement_cluster', 'engagement', 'engagement_alerts_local', cityHash64(account_id));
