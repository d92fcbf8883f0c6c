-- One row per (account_id, window_start): upserted while the window is open (final = 0), then written
-- once more with final = 1. The highest version wins: query with FINAL or argMax(..., version).
CREATE TABLE IF NOT EXISTS engagement_windows
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
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (account_id, window_start)
