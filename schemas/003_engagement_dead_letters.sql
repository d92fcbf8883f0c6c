-- Inputs that were not valid events, with the reason and where they came from. Payloads are truncated;
-- they may hold personal data. Deduplicated by dead_letter_id (source topic/partition/offset/element).
CREATE TABLE IF NOT EXISTS engagement_dead_letters
(
    dead_letter_id String,
    reason String,
    detail String,
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    element_index Int32,
    payload String {{CODEC_ZSTD}},
    payload_bytes UInt32,
    truncated UInt8,
    failed_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(failed_at)
ORDER BY (dead_letter_id)
{{TTL_DEAD_LETTERS}}
