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
stored as SHA-256 hashes, never in clear. On a cluster (``ENGAGEMENT_CLICKHOUSE_CLUSTER``) the ingest user
is also granted the ``*_local`` tables and ``system.clusters``, and the statements carry ``ON CLUSTER``
(replicated mode) or are run on every node (plain mode, by ``engagement users create``).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from xml.sax.saxutils import escape

from pipeline.settings import Secret, Settings, SettingsError
from pipeline.warehouse.cluster import LOCAL_SUFFIX, SHARDING_KEYS, ClusterLayout
from pipeline.warehouse.migrate import MIGRATIONS_TABLE
from pipeline.warehouse.params import identifier

ACCESS_CONTROL_MIN_VERSION = (20, 5)
# Every table the pipeline creates (schemas/, tested against their CREATE TABLEs): the distributed ones of
# a cluster, plus the migrations table (one per node or replicated, never Distributed)
PIPELINE_TABLES = (*SHARDING_KEYS, MIGRATIONS_TABLE)


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

    ``networks``: the addresses or networks (CIDR) each user may connect from (``<ip>`` entries); narrow
    them in production. A value that is not an IP address or network raises :class:`SettingsError`. The user
    and database names are the validated plain names of :class:`~pipeline.settings.Settings`.
    """
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise SettingsError(f"{network!r} is not an IP address or network (such as 10.0.0.0/8 or ::1)") from None
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


def granted_tables(settings: Settings) -> list[str]:
    """The tables the ingest user reads and writes: :data:`PIPELINE_TABLES`, and on a cluster also the
    local table under each Distributed one (an insert or read through a Distributed table reaches the
    ``*_local`` tables as the calling user)."""
    tables = list(PIPELINE_TABLES)
    if ClusterLayout.of(settings) is not None:
        tables += [table + LOCAL_SUFFIX for table in SHARDING_KEYS]
    return tables


def users_sql(settings: Settings) -> list[str]:
    """``CREATE USER`` / ``ALTER USER`` / ``GRANT`` statements for servers with SQL access control.

    Re-runnable: each ``CREATE USER IF NOT EXISTS`` is followed by an ``ALTER USER`` that sets the
    password (and the analyst's ``readonly = 2``) again, so re-running changes a password. On a replicated
    cluster every statement carries ``ON CLUSTER``; on a plain one, run them on every node
    (``engagement users create`` does).
    """
    layout = ClusterLayout.of(settings)
    on_cluster = layout.on_cluster if layout else ""
    database = identifier(settings.clickhouse_database)
    (ingest, ingest_hash, _), (analyst, analyst_hash, _) = _users(settings)
    statements: list[str] = []
    for name, digest, extra in ((ingest, ingest_hash, ""), (analyst, analyst_hash, " SETTINGS readonly = 2")):
        user = identifier(name)
        password = f"IDENTIFIED WITH sha256_hash BY '{digest}'"
        statements.append(f"CREATE USER IF NOT EXISTS {user}{on_cluster} {password}{extra}")
        statements.append(f"ALTER USER {user}{on_cluster} {password}{extra}")
    statements += [
        f"GRANT{on_cluster} SELECT, INSERT ON {database}.{table} TO {identifier(ingest)}"
        for table in granted_tables(settings)
    ]
    if layout is not None:  # migrate at worker start lists a plain cluster's nodes
        statements.append(f"GRANT{on_cluster} SELECT ON system.clusters TO {identifier(ingest)}")
    statements.append(f"GRANT{on_cluster} SELECT ON {database}.* TO {identifier(analyst)}")
    return statements


def supports_access_control(server: tuple[int, int]) -> bool:
    """Whether a server of this (major, minor) version has ``CREATE USER`` and ``GRANT``."""
    return server >= ACCESS_CONTROL_MIN_VERSION
