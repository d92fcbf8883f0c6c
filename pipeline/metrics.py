"""Every Prometheus metric of the pipeline, declared once, with its meaning.

No per-account labels (cardinality): labels are topics, event types, reasons and tables only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_CONSUMED = Counter(
    "engagement_events_consumed_total",
    "Valid events decoded from a source topic, by topic and event type (before deduplication).",
    ["topic", "type"],
    registry=REGISTRY,
)
MESSAGES_CONSUMED = Counter(
    "engagement_messages_consumed_total",
    "Kafka messages read from source topics (a message may carry a JSON array of events).",
    ["topic"],
    registry=REGISTRY,
)
OFFSETS_WITHOUT_RECORDS = Counter(
    "engagement_offsets_without_records_total",
    "Offsets of a source or re-key topic that hold no record for the workers, passed over, by topic: "
    "transaction markers, records of aborted transactions, records removed by compaction.",
    ["topic"],
    registry=REGISTRY,
)
RECORDS_EXPIRED = Counter(
    "engagement_records_expired_total",
    "Records of a source or re-key topic the broker deleted (retention) before the consumer group read "
    "them, by topic: lost input, never processed.",
    ["topic"],
    registry=REGISTRY,
)
MESSAGES_TAKEN = Counter(
    "engagement_messages_taken_total",
    "Kafka messages (source and re-key topics) taken into a batch, counted when the batch starts; the"
    " consumed counters move once it is processed.",
    registry=REGISTRY,
)
EVENT_OUTCOMES = Counter(
    "engagement_event_outcomes_total",
    "What the aggregator did with each valid event: counted, duplicate, self, late, pending, unmatched, replayed.",
    ["outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "engagement_dead_letters_total",
    "Inputs sent to the dead-letter topic, by reason code: a worker's own rejections as it makes them,"
    " those of `engagement ingest` (and unreadable dead letters) as a worker reads the dead-letter topic.",
    ["reason"],
    registry=REGISTRY,
)
ROWS_WRITTEN = Counter(
    "engagement_rows_written_total",
    "Rows written to ClickHouse, by table.",
    ["table"],
    registry=REGISTRY,
)
WINDOWS_FINALIZED = Counter(
    "engagement_windows_finalized_total",
    "Windows written with final = 1.",
    registry=REGISTRY,
)
INSERT_SECONDS = Histogram(
    "engagement_clickhouse_insert_seconds",
    "Duration of one successful ClickHouse insert, by table.",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
INSERT_FAILURES = Counter(
    "engagement_clickhouse_insert_failures_total",
    "ClickHouse inserts that failed and will be retried, by table.",
    ["table"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "engagement_consumer_lag_messages",
    "Messages not yet processed on the partitions this worker owns, by topic.",
    ["topic"],
    registry=REGISTRY,
)
HOT_PATH_COMPILED = Gauge(
    "engagement_hot_path_compiled",
    "1 when this worker runs the hot path compiled by mypyc (pipeline/compiled.py), 0 when it runs the source"
    " (same results, slower: the build is missing, stale or turned off; the worker logs why at start).",
    registry=REGISTRY,
)
NEWEST_EVENT_SECONDS = Gauge(
    "engagement_newest_event_timestamp_seconds",
    "Event time of the newest event seen (Unix seconds).",
    registry=REGISTRY,
)
FRONTIER_SECONDS = Gauge(
    "engagement_event_time_frontier_seconds",
    "The lowest event-time frontier over owned partitions (windows end + lateness before it are final).",
    registry=REGISTRY,
)
ACCOUNT_STATE_LARGEST_BYTES = Gauge(
    "engagement_account_state_largest_bytes",
    "Size of the largest account state in this worker's last changelog write (bytes). A state over 512 KiB is"
    " stored in chunks (Kafka refuses a record over max.message.bytes), but rewritten whole at every change.",
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "engagement_batch_seconds",
    "Wall time to process one batch, from decode to durable write.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
DELIVERY_WAIT_SECONDS = Counter(
    "engagement_delivery_wait_seconds",
    "Time the worker's batches waited for a chunk's delivery (its ClickHouse inserts and Kafka sends) before"
    " going on: part of the time in batches (engagement_batch_seconds_sum). A large share of it: ClickHouse"
    " or Kafka sets the worker's rate; a small share while the batches take all the time: the worker's own"
    " CPU does (more workers, or partitions, help).",
    registry=REGISTRY,
)
STATE_PERSIST_SECONDS = Histogram(
    "engagement_state_persist_seconds",
    "Time the worker's batches waited while account states were serialized for the changelog: a slice of"
    " them under load (kind=slice), or all touched states (kind=all: when idle, on a rebalance, or with the"
    " live cache full).",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
GC_SWEEP_SECONDS = Histogram(
    "engagement_gc_sweep_seconds",
    "Pause of each sweep of the garbage collector (pipeline.collector): what is alive is frozen after every"
    " chunk, and a full collection runs every ENGAGEMENT_GC_SWEEP_SECONDS after a chunk, or once the input"
    " pauses if the last sweep was ENGAGEMENT_GC_IDLE_SWEEP_SECONDS ago or more.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
GC_SWEEP_COLLECTED = Counter(
    "engagement_gc_sweep_collected_total",
    "Unreachable objects the garbage collector's sweeps found (gc.collect's count): the reference cycles that"
    " freezing after each chunk kept until the sweep, and those still young. Memory held until a sweep.",
    registry=REGISTRY,
)
DEAD_LETTER_BRAKE_SHARE = Gauge(
    "engagement_dead_letter_brake_invalid_share",
    "Share of invalid messages among the last ENGAGEMENT_DEAD_LETTER_BRAKE_MESSAGES source messages, updated "
    "per batch; above ENGAGEMENT_DEAD_LETTER_BRAKE_SHARE the worker stops (0 while the brake is disabled).",
    registry=REGISTRY,
)
DEAD_LETTER_BRAKE_TRIPS = Counter(
    "engagement_dead_letter_brake_trips_total",
    "Times the dead-letter brake stopped this worker (it exits right after: the log line and exit code 65 last).",
    registry=REGISTRY,
)
ALERTS_FIRED = Counter(
    "engagement_alerts_fired_total",
    "Engagement-drop alerts that started firing, by reason: drop (score below the threshold) or silence "
    "(no events at all in the windows that fired).",
    ["reason"],
    registry=REGISTRY,
)
ALERTS_RESOLVED = Counter(
    "engagement_alerts_resolved_total",
    "Engagement-drop alerts resolved (a final window back above the threshold).",
    registry=REGISTRY,
)
ACCOUNTS_IN_DROP = Gauge(
    "engagement_accounts_in_drop",
    "Accounts owned by this worker whose latest alert is firing (sum over workers for the whole pipeline).",
    registry=REGISTRY,
)
# Per-account gauges only for the accounts of ENGAGEMENT_DROP_WATCH (at most DROP_WATCH_MAX of them).
WATCHED_SCORE = Gauge(
    "engagement_watched_account_score",
    "Weighted score of the newest final window of a watched account (ENGAGEMENT_DROP_WATCH).",
    ["account"],
    registry=REGISTRY,
)
WATCHED_BASELINE = Gauge(
    "engagement_watched_account_baseline",
    "Drop detector's baseline score of a watched account (ENGAGEMENT_DROP_WATCH).",
    ["account"],
    registry=REGISTRY,
)
WATCHED_IN_DROP = Gauge(
    "engagement_watched_account_in_drop",
    "1 while a watched account (ENGAGEMENT_DROP_WATCH) is in an engagement drop, else 0.",
    ["account"],
    registry=REGISTRY,
)
