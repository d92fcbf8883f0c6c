"""Typed settings, read from the environment (prefix ``ENGAGEMENT_``) when asked, never at import.

Every setting has a default that runs the embedded stack on one machine. Secrets are held as
:class:`Secret`, whose ``str``/``repr`` are masked, so printing a ``Settings`` never leaks them.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pipeline.log_redaction import redact

# Names that go into SQL, XML tags and ZooKeeper paths unescaped-safe (pipeline.clickhouse_users, cluster)
DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
DROP_WATCH_MAX = 50  # per-account gauges are capped: Prometheus cost grows with label values
PREFIX = "ENGAGEMENT_"
# ENGAGEMENT_* variables that are not settings: read by Compose (the worker image), Grafana's provisioning
# (the alert webhook) and the tests.
NOT_SETTINGS = frozenset(
    {
        "ENGAGEMENT_IMAGE",
        "ENGAGEMENT_ALERT_WEBHOOK_URL",
        "ENGAGEMENT_CHAOS_EVENTS",
        "ENGAGEMENT_CHAOS_SEED",
        "ENGAGEMENT_UPDATE_GOLDEN",
    }
)

log = logging.getLogger(__name__)
_warned: set[str] = set()  # unknown variables already warned about in this process


class SettingsError(ValueError):
    """A setting in the environment has a value that cannot be used; the message names it."""


class Secret:
    """A string that does not print itself. Call :meth:`reveal` where the real value is needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value; from now on it is also masked in every log record (:mod:`pipeline.log_redaction`)."""
        redact(self._value)
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


WarehouseKind = Literal["embedded", "server"]
ClusterEngines = Literal["replicated", "plain"]
KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
CompiledMode = Literal["auto", "off", "required"]
KAFKA_PROTOCOLS: tuple[str, ...] = get_args(KafkaProtocol)
SASL_MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)


@dataclass(frozen=True)
class Settings:
    """All knobs of the pipeline. Build with :meth:`from_env`; field names map to ``ENGAGEMENT_<NAME>``."""

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: int = 4
    replication_factor: int = 1
    app_id: str = "engagement"
    broker_session_timeout: float = 10.0
    commit_interval: float = 1.0
    fetch_max_wait_ms: int = 100  # the fetch long-poll: brokers that hold it delay messages this long

    # Windows
    window_seconds: int = 60
    allowed_lateness_seconds: int = 300
    # An event more than this far ahead of the worker's clock is dead-lettered (future_ts) instead of moving
    # its partition's event time ahead: an event more than the allowed lateness ahead makes every on-time
    # event after it late. At most ENGAGEMENT_ALLOWED_LATENESS_SECONDS, then. 0: no bound.
    max_future_seconds: int = 300
    conversation_horizon_seconds: int = 7 * 86400
    weight_like: int = 1
    weight_mention: int = 2
    weight_reply: int = 3

    # The account report (pipeline.report_model)
    burst_threshold: int = 30  # a burst actor makes more than this many engagements in one UTC minute

    # Engagement drops (pipeline.drops): per account, an exponentially weighted mean of its final windows'
    # scores; a drop is drop_windows consecutive final windows below (1 - drop_threshold) x that baseline.
    drop_half_life_windows: float = 24.0  # the baseline's half-life, in windows
    drop_warmup_windows: int = 12  # windows observed before the detector may fire
    drop_min_baseline: float = 5.0  # accounts whose baseline score is lower never page
    drop_threshold: float = 0.5  # a window is low below (1 - threshold) x baseline
    drop_windows: int = 3  # consecutive low windows that make a drop
    drop_watch: str = ""  # comma-separated account ids with per-account gauges (at most 50)

    # Batching
    # Events written per chunk. An insert has a fixed cost (~40 ms with its materialized views, bench/
    # RESULTS.md): chunks of 50,000 made a draining worker 25 % faster than chunks of 10,000.
    batch_max_events: int = 50000
    # Kafka messages taken per batch: single-event messages drained 18-30 % faster at 50,000 than at 10,000
    # (larger inserts), for ~80 MB more of peak memory (two batches are buffered).
    batch_max_messages: int = 50000
    batch_max_bytes: int = 32 << 20  # payload bytes taken per batch (bounds the memory held at once)
    # A batch closes this long after its first message: the floor of the latency (0.5 s gave a p99 of
    # 2.6 s at 40,000 events/s, 0.25 s 1.7-2.0 s), at the cost of more, smaller inserts when the load is light.
    batch_max_seconds: float = 0.25
    upsert_interval_seconds: float = 2.0  # open windows are upserted at most this often
    persist_interval_seconds: float = 5.0  # under load, states are persisted (and batches acked) this often
    # The garbage collector is paused through each chunk and its survivors frozen (pipeline.collector); a
    # full collection (a pause: ~engagement_gc_sweep_seconds) frees the cycles frozen meanwhile this often,
    # and once the input pauses if the last was gc_idle_sweep_seconds ago or more.
    gc_sweep_seconds: float = 300.0
    gc_idle_sweep_seconds: float = 60.0

    # The compiled hot path (pipeline.compiled): read when `pipeline` is first imported, before any other
    # setting; a setting too, so that it is checked and shown like the others.
    compiled: CompiledMode = "auto"

    # Warehouse
    warehouse: WarehouseKind = "embedded"
    data_dir: Path = Path("var")
    clickhouse_host: str = "127.0.0.1"
    clickhouse_port: int = 9000
    clickhouse_user: str = "default"
    clickhouse_password: Secret = field(default_factory=lambda: Secret(""))
    clickhouse_database: str = "engagement"
    insert_retry_max_seconds: float = 30.0
    events_ttl_days: int = 0  # 0 keeps raw events forever; applied where the server supports TTL
    dead_letters_ttl_days: int = 30
    # The embedded store's background merges run at this nice value (1-19; 0 leaves them alone), below
    # the worker's event loop and inserts (pipeline.warehouse.merge_priority). Linux only.
    embedded_merge_nice: int = 10
    # ClickHouse cluster mode (pipeline.warehouse.cluster): the cluster's name in the servers'
    # remote_servers; empty = one node (the default). "replicated": Replicated*MergeTree shards, DDL ON
    # CLUSTER (needs ZooKeeper/Keeper); "plain": MergeTree shards, DDL applied on every node in turn.
    clickhouse_cluster: str = ""
    clickhouse_cluster_engines: ClusterEngines = "replicated"

    # Web server (/metrics, /healthz, embedded /query)
    web_host: str = "127.0.0.1"
    web_port: int = 6066

    # Input limits
    max_message_bytes: int = 1024 * 1024
    dead_letter_payload_bytes: int = 4096
    # The dead-letter brake (pipeline.brake): stop when more than this share of the last N source messages
    # were invalid, rather than dead-letter a whole topic after a bad deploy upstream. 1 disables it.
    dead_letter_brake_share: float = 0.5
    dead_letter_brake_messages: int = 1000
    # After tripping, the worker (consuming and committing nothing more) serves /metrics this long before it
    # exits, so that Prometheus scrapes the trip: two scrapes at the usual 15 s interval.
    dead_letter_brake_linger_seconds: float = 30.0

    # Security (pipeline.kafka_security, pipeline.clickhouse_users, SECURITY.md). Kafka: every client (Faust,
    # kafka-python) gets these; file paths empty = unused.
    kafka_security_protocol: KafkaProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: Secret = field(default_factory=lambda: Secret(""))
    kafka_ssl_cafile: str = ""  # CA bundle that signed the brokers' certificates (default: the system's)
    kafka_ssl_certfile: str = ""  # client certificate (mutual TLS)
    kafka_ssl_keyfile: str = ""
    kafka_ssl_check_hostname: bool = True
    kafka_auth_timeout_seconds: float = 10.0  # the start-up credential check gives up after this long
    # ClickHouse over TLS (clickhouse-driver: secure port, usually 9440)
    clickhouse_secure: bool = False
    clickhouse_ca_file: str = ""
    clickhouse_verify: bool = True
    # The read-only connection of `engagement sql`, `report`, `leaderboard` (server). Empty user: the
    # ENGAGEMENT_CLICKHOUSE_USER, in a session the client makes read-only (readonly = 1).
    clickhouse_readonly_user: str = ""
    clickhouse_readonly_password: Secret = field(default_factory=lambda: Secret(""))
    # The least-privilege users that `engagement users` renders (XML) or creates (SQL access control)
    clickhouse_ingest_user: str = "engagement_ingest"
    clickhouse_ingest_password: Secret = field(default_factory=lambda: Secret(""))
    clickhouse_analyst_user: str = "engagement_analyst"
    clickhouse_analyst_password: Secret = field(default_factory=lambda: Secret(""))
    # The worker's /query and /admin/flush answer only on a loopback ENGAGEMENT_WEB_HOST unless this is 1
    web_allow_remote_query: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from ``ENGAGEMENT_<FIELD>``; ``overrides`` win over the environment.

        Raises :class:`SettingsError` naming the variable when a value does not parse. An ``ENGAGEMENT_``
        variable that is no setting (a typo?) is ignored with a warning, once per process, naming the
        closest setting.
        """
        env = os.environ if environ is None else environ
        _warn_unknown(env)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = PREFIX + f.name.upper()
            if f.name in overrides:
                values[f.name] = overrides[f.name]
            elif name in env:
                values[f.name] = _parse(name, env[name], f.type)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`SettingsError` on values that parse but make no sense together."""
        if self.window_seconds <= 0:
            raise SettingsError("ENGAGEMENT_WINDOW_SECONDS must be > 0")
        if self.allowed_lateness_seconds < 0:
            raise SettingsError("ENGAGEMENT_ALLOWED_LATENESS_SECONDS must be >= 0")
        if self.max_future_seconds < 0:
            raise SettingsError("ENGAGEMENT_MAX_FUTURE_SECONDS must be >= 0 (0: no bound)")
        if self.partitions <= 0:
            raise SettingsError("ENGAGEMENT_PARTITIONS must be > 0")
        if self.warehouse not in get_args(WarehouseKind):
            raise SettingsError("ENGAGEMENT_WAREHOUSE must be 'embedded' or 'server'")
        if self.compiled not in get_args(CompiledMode):
            raise SettingsError("ENGAGEMENT_COMPILED must be 'auto', 'off' or 'required'")
        if not DATABASE_NAME.fullmatch(self.clickhouse_database):
            raise SettingsError(
                "ENGAGEMENT_CLICKHOUSE_DATABASE must be a plain name ([A-Za-z_][A-Za-z0-9_]*): it goes into "
                "SQL, the users' XML and ZooKeeper paths"
            )
        for variable, user in (
            ("ENGAGEMENT_CLICKHOUSE_INGEST_USER", self.clickhouse_ingest_user),
            ("ENGAGEMENT_CLICKHOUSE_ANALYST_USER", self.clickhouse_analyst_user),
        ):
            if not USER_NAME.fullmatch(user):
                raise SettingsError(
                    f"{variable} must be a plain name ([A-Za-z_][A-Za-z0-9_.-]*): it becomes an XML tag and a "
                    "SQL identifier"
                )
        if not re.fullmatch(r"[\w.-]*", self.clickhouse_cluster):
            raise SettingsError(
                "ENGAGEMENT_CLICKHOUSE_CLUSTER must be a cluster name of remote_servers ([A-Za-z0-9_.-])"
            )
        if self.clickhouse_cluster and self.warehouse != "server":
            raise SettingsError("ENGAGEMENT_CLICKHOUSE_CLUSTER needs ENGAGEMENT_WAREHOUSE=server")
        if self.clickhouse_cluster_engines not in get_args(ClusterEngines):
            raise SettingsError("ENGAGEMENT_CLICKHOUSE_CLUSTER_ENGINES must be 'replicated' or 'plain'")
        if self.fetch_max_wait_ms <= 0:
            raise SettingsError("ENGAGEMENT_FETCH_MAX_WAIT_MS must be > 0")
        if not 0 <= self.embedded_merge_nice <= 19:
            raise SettingsError("ENGAGEMENT_EMBEDDED_MERGE_NICE must be between 0 (off) and 19")
        if self.persist_interval_seconds < 0:
            raise SettingsError("ENGAGEMENT_PERSIST_INTERVAL_SECONDS must be >= 0")
        if not self.gc_sweep_seconds > 0 or not self.gc_idle_sweep_seconds >= 0:
            raise SettingsError("ENGAGEMENT_GC_SWEEP_SECONDS must be > 0, ENGAGEMENT_GC_IDLE_SWEEP_SECONDS >= 0")
        if min(self.batch_max_events, self.batch_max_seconds, self.batch_max_messages, self.batch_max_bytes) <= 0:
            raise SettingsError("ENGAGEMENT_BATCH_MAX_EVENTS, _MESSAGES, _BYTES and _SECONDS must be > 0")
        if not 0 <= self.dead_letter_brake_share <= 1:
            raise SettingsError("ENGAGEMENT_DEAD_LETTER_BRAKE_SHARE must be between 0 and 1 (1 disables the brake)")
        if self.dead_letter_brake_messages <= 0:
            raise SettingsError("ENGAGEMENT_DEAD_LETTER_BRAKE_MESSAGES must be > 0")
        if not self.dead_letter_brake_linger_seconds >= 0:
            raise SettingsError("ENGAGEMENT_DEAD_LETTER_BRAKE_LINGER_SECONDS must be >= 0")
        if self.burst_threshold <= 0:
            raise SettingsError("ENGAGEMENT_BURST_THRESHOLD must be > 0")
        if self.drop_half_life_windows <= 0 or self.drop_warmup_windows < 1 or self.drop_windows < 1:
            raise SettingsError("ENGAGEMENT_DROP_HALF_LIFE_WINDOWS must be > 0, _WARMUP_WINDOWS and _WINDOWS >= 1")
        if not 0 < self.drop_threshold < 1 or self.drop_min_baseline < 0:
            raise SettingsError("ENGAGEMENT_DROP_THRESHOLD must be between 0 and 1, _MIN_BASELINE >= 0")
        if self.kafka_security_protocol not in KAFKA_PROTOCOLS:
            raise SettingsError(f"ENGAGEMENT_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(KAFKA_PROTOCOLS)}")
        if self.kafka_sasl_mechanism not in SASL_MECHANISMS:
            raise SettingsError(f"ENGAGEMENT_KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}")
        if self.kafka_security_protocol.startswith("SASL_") and not self.kafka_sasl_username:
            raise SettingsError("ENGAGEMENT_KAFKA_SASL_USERNAME is required with a SASL security protocol")
        if self.kafka_auth_timeout_seconds <= 0:
            raise SettingsError("ENGAGEMENT_KAFKA_AUTH_TIMEOUT_SECONDS must be > 0")
        if len(self.drop_watch_accounts) > DROP_WATCH_MAX:
            raise SettingsError(f"ENGAGEMENT_DROP_WATCH lists more than {DROP_WATCH_MAX} accounts")

    @property
    def drop_watch_accounts(self) -> frozenset[str]:
        """The accounts of ENGAGEMENT_DROP_WATCH (per-account drop gauges)."""
        return frozenset(a.strip() for a in self.drop_watch.split(",") if a.strip())

    def topic(self, name: str) -> str:
        """The full name of a pipeline topic (``likes``, ``follows``, ...), with the prefix."""
        return f"{self.topic_prefix}{name}"

    @property
    def chdb_path(self) -> Path:
        return self.data_dir / "chdb"

    def masked(self) -> dict[str, str]:
        """The effective settings as strings, secrets masked: safe to print or log."""
        return {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process (secrets revealed). All but
        ``compiled``: a process chooses its hot path from its own environment when it imports the package,
        and a child started with this mapping over the parent's environment inherits the parent's choice."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            if f.name == "compiled":
                continue
            value = getattr(self, f.name)
            out[PREFIX + f.name.upper()] = value.reveal() if isinstance(value, Secret) else str(value)
        return out


def _parse(name: str, raw: str, type_name: Any) -> Any:
    kind = str(type_name)
    if kind == "bool":
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{name}={raw!r} is not a valid bool (1/0, true/false)")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "Secret":
            return Secret(raw)
        return raw
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from exc


def _warn_unknown(env: Mapping[str, str]) -> None:
    """Log each ``ENGAGEMENT_`` variable of ``env`` that is no setting (once per process and name)."""
    known = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    for name in sorted(env):
        if not name.startswith(PREFIX) or name in known or name in NOT_SETTINGS or name in _warned:
            continue
        _warned.add(name)
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        log.warning("%s is not a setting and is ignored%s", name, hint)
