"""Apply the numbered DDL files of ``schemas/`` in order, recording each in a migrations table.

Contract: :func:`migrate` is idempotent (re-running applies nothing new) and ordered (``NNN_name.sql`` by
number). A file is recorded only after all its statements succeeded; every statement is written to be
re-runnable (``IF NOT EXISTS``), so a file interrupted half-way is simply applied again.
Newer-only extras are template slots (``{{TTL_EVENTS}}``...) rendered empty on servers that lack them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.settings import Settings
from pipeline.warehouse.base import QueryError, Warehouse

SCHEMAS_DIR = Path(__file__).resolve().parent.parent.parent / "schemas"
MIGRATIONS_TABLE = "engagement_schema_migrations"
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

TTL_MIN_VERSION = (19, 6)
CODEC_MIN_VERSION = (20, 1)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def discover(directory: Path = SCHEMAS_DIR) -> list[Migration]:
    """The migrations in ``directory``, ordered by number; a duplicated number is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version:03d}: {found[version].path.name}, {path.name}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


def render(text: str, settings: Settings, server: tuple[int, int]) -> str:
    """Fill the template slots for this server version and these settings.

    ``{{TTL_EVENTS}}`` (raw events' retention, on ``ts``) and ``{{TTL_DEAD_LETTERS}}`` (on ``failed_at``)
    take another time column as ``{{TTL_EVENTS:hour}}``; ``{{CODEC_ZSTD}}`` is a column codec.
    """
    ttl_ok = server >= TTL_MIN_VERSION

    def ttl(days: int, column: str) -> str:
        return f"TTL {column} + INTERVAL {days} DAY" if ttl_ok and days > 0 else ""

    def slot(match: re.Match[str]) -> str:
        name, column = match.group(1), match.group(2)
        if name == "TTL_EVENTS":
            return ttl(settings.events_ttl_days, column or "ts")
        if name == "TTL_DEAD_LETTERS":
            return ttl(settings.dead_letters_ttl_days, column or "failed_at")
        if name == "CODEC_ZSTD":
            return "CODEC(ZSTD(1))" if server >= CODEC_MIN_VERSION else ""
        raise ValueError(f"unknown template slot {match.group(0)}")

    return re.sub(r"\{\{(\w+)(?::(\w+))?\}\}", slot, text)


def statements(text: str) -> list[str]:
    """Split a file into statements at ``;`` ending a line; ``--`` comment lines are dropped."""
    out: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            out.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    tail = "\n".join(current).strip()
    if tail:
        out.append(tail)
    return [s for s in out if s.strip()]


def applied_versions(warehouse: Warehouse) -> set[int]:
    result = warehouse.query(f"SELECT version FROM {MIGRATIONS_TABLE}")
    return {int(row[0]) for row in result.rows}


def migrate(warehouse: Warehouse, settings: Settings, directory: Path = SCHEMAS_DIR) -> list[Migration]:
    """Create the database and apply every pending migration; returns those applied now.

    When the migrations table is readable and nothing is pending, nothing is executed: a user without DDL
    rights (the ingest user on servers with SQL access control) can run it at worker start once an
    administrator applied the migrations.
    """
    database = warehouse.database
    try:
        done = applied_versions(warehouse)
    except QueryError:  # no database or no migrations table yet
        done = None
    pending = [m for m in discover(directory) if done is None or m.version not in done]
    if not pending:
        return []
    warehouse.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    warehouse.execute(
        f"CREATE TABLE IF NOT EXISTS `{database}`.{MIGRATIONS_TABLE} "
        "(version UInt32, name String, checksum String, applied_at DateTime('UTC') DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY version"
    )
    done = applied_versions(warehouse)
    server = warehouse.server_version()
    applied: list[Migration] = []
    for migration in pending:
        if migration.version in done:
            continue
        for statement in statements(render(migration.text, settings, server)):
            warehouse.execute(statement)
        warehouse.insert(
            f"`{database}`.{MIGRATIONS_TABLE}",
            {"version": [migration.version], "name": [migration.name], "checksum": [migration.checksum]},
        )
        applied.append(migration)
    return applied
