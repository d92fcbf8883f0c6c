-- Every valid event, as received, with where it came from. Deduplicated by (account_id, ts_ms, event_id):
-- query with FINAL (or GROUP BY event_id) to see each event exactly once.
CREATE TABLE IF NOT EXISTS engagement_events
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
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (account_id, ts_ms, event_id)
{{TTL_EVENTS}}
