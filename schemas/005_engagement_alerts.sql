-- Engagement drops found by the stream's detector (pipeline.drops): one row per state change of an
-- account, firing or resolved, at the final window that caused it. Deduplicated by
-- (account_id, window_start, state): a replay writes the same row again. An account is in a drop when its
-- latest row (by window_start) is 'firing'.
CREATE TABLE IF NOT EXISTS engagement_alerts
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
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (account_id, window_start, state)
