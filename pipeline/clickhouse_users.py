"""The pipeline's least-privilege ClickHouse users, for both kinds of server (``engagement users``).

- ingest (ENGAGEMENT_CLICKHOUSE_INGEST_USER, default ``engagement_ingest``): what the worker connects as.
  It writes and reads the pipeline's tables. It also runs the migrations at worker start: on servers with SQL
  access control that needs CREATE/ALTER rights, so there ``engagement migrate`` runs as an administrator
  and the ingest user gets only ``SELECT, INSERT`` on each table.
- analyst (ENGAGEMENT_CLICKHOUSE_ANALYST_USER, default ``engagement_analyst``): ``engagement sql``,
  reports, leaderboards and Grafana. ``readonly = 2``: reads only, but may change query settings (the
  Grafana plugin sends some with every query; ``readonly = 1`` would refuse them).

Servers with SQL access control (ClickHouse 20.5 and later) get ``CREATE USER`` / ``GRANT`` statements
(:func:`users_sql`). Older servers (such as Debian's 18.16) define users in ``users.d`` XML
(:func:`users_xml`), where rights cannot be granted per table: each user is confined to the pipeline's
database with ``allow_databases``, and the ingest user can also create or drop tables there. Passwords are
stored as SHA-256 hashes, never in clear.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from xml.sax.saxutils import escape

from pipeline.settings import Secret, Settings, SettingsError

ACCESS_CONTROL_MIN_VERSION = (20, 5)
PIPELINE_TABLES = (
    "engagement_events",
    "engagement_windows",
    "engagement_dead_letters",
    "engagement_alerts",
    "engagement_account_hours",
    "engagement_actor_minutes",
    "engagement_actor_totals",
    "engagement_outbound",
    "engagement_schema_migrations",
)


def _hash(password: Secret, variable: str) -> str:
    if len(password.reveal()) < 12:
        raise SettingsError(f"{variable} must be set to a password of at least 12 characters")
    return hashlib.sha256(password.reveal().encode()).hexdigest()


def _users(settings: Settings) -> list[tuple[str, str, int]]:
    """(name, SHA-256 of the password, readonly level) of the ingest and analyst users."""
    return [
        (
            settings.clickhouse_ingest_user,
            _hash(settings.clickhouse_ingest_password, "ENGAGEMENT_CLICKHOUSE_INGEST_PASSWORD"),
            0,
        ),
        (
            settings.clickhouse_analyst_user,
            _hash(settings.clickhouse_analyst_password, "ENGAGEMENT_CLICKHOUSE_ANALYST_PASSWORD"),
            2,
        ),
    ]


def users_xml(settings: Settings, networks: Sequence[str] = ("::/0",)) -> str:
    """A ``users.d`` file defining both users for servers without SQL access control.

    ``networks``: the addresses each user may connect from (``<ip>`` entries); narrow them in production.
    """
    database = escape(settings.clickhouse_database)
    profiles, users = [], []
    for name, digest, readonly in _users(settings):
        user = escape(name)
        profiles.append(f"    <{user}><readonly>{readonly}</readonly></{user}>")
        ips = "".join(f"<ip>{escape(ip)}</ip>" for ip in networks)
        users.append(
            f"    <{user}>\n"
            f"      <password_sha256_hex>{digest}</password_sha256_hex>\n"
            f"      <networks>{ips}</networks>\n"
            f"      <profile>{user}</profile>\n"
            f"      <quota>default</quota>\n"
            f"      <allow_databases><database>{database}</database></allow_databases>\n"
            f"    </{user}>"
        )
    return (
        '<?xml version="1.0"?>\n<!-- the pipeline users, written by: engagement users xml (see SECURITY.md) -->\n'
        "<yandex>\n  <profiles>\n" + "\n".join(profiles) + "\n  </profiles>\n"
        "  <users>\n" + "\n".join(users) + "\n  </users>\n</yandex>\n"
    )


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def users_sql(settings: Settings) -> list[str]:
    """``CREATE USER`` / ``GRANT`` statements for servers with SQL access control (re-runnable)."""
    database = _identifier(settings.clickhouse_database)
    (ingest, ingest_hash, _), (analyst, analyst_hash, _) = _users(settings)
    statements = [
        f"CREATE USER IF NOT EXISTS {_identifier(ingest)} IDENTIFIED WITH sha256_hash BY '{ingest_hash}'",
        f"CREATE USER IF NOT EXISTS {_identifier(analyst)} IDENTIFIED WITH sha256_hash BY '{analyst_hash}' "
        "SETTINGS readonly = 2",
    ]
    statements += [f"GRANT SELECT, INSERT ON {database}.{table} TO {_identifier(ingest)}" for table in PIPELINE_TABLES]
    statements.append(f"GRANT SELECT ON {database}.* TO {_identifier(analyst)}")
    return statements


def supports_access_control(server: tuple[int, int]) -> bool:
    """Whether a server of this (major, minor) version has ``CREATE USER`` and ``GRANT``."""
    return server >= ACCESS_CONTROL_MIN_VERSION
