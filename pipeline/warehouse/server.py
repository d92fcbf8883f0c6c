"""The ClickHouse server backend (native protocol, clickhouse-driver)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from pipeline.settings import Settings
from pipeline.warehouse.base import INSERT_SETTINGS, Params, QueryError, QueryResult, WarehouseUnavailable
from pipeline.warehouse.params import bind, identifier

# On a cluster (pipeline.warehouse.cluster), every query of the session runs with these: an insert into a
# Distributed table returns once every shard has its rows (not when they are queued on the node we talk
# to), and IN/JOIN subqueries over Distributed tables are run once over the whole cluster (GLOBAL), so
# every statement of pipeline.queries gives the single node's answer.
CLUSTER_SESSION_SETTINGS = {"insert_distributed_sync": 1, "distributed_product_mode": "global"}

# ClickHouse error codes that mean "the server is there but cannot serve this now". Not 164 (READONLY): a
# user without write rights is a configuration error that no retry mends (QueryError names it at once).
_TRANSIENT_CODES = frozenset({159, 160, 202, 203, 209, 210, 241, 242, 252, 319, 425})


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    return value


def connection_options(settings: Settings, read_only: bool = False) -> dict[str, Any]:
    """clickhouse-driver's ``Client`` keyword arguments (but the database) for these settings.

    ``read_only``: the read-only user (ENGAGEMENT_CLICKHOUSE_READONLY_USER/_PASSWORD) when one is set;
    otherwise ENGAGEMENT_CLICKHOUSE_USER in a session made read-only by the client (``readonly = 1``), which
    the server enforces. TLS: ENGAGEMENT_CLICKHOUSE_SECURE, _CA_FILE, _VERIFY.
    """
    options: dict[str, Any] = {
        "host": settings.clickhouse_host,
        "port": settings.clickhouse_port,
        "user": settings.clickhouse_user,
        "password": settings.clickhouse_password.reveal(),
        "secure": settings.clickhouse_secure,
        "verify": settings.clickhouse_verify,
    }
    if settings.clickhouse_ca_file:
        options["ca_certs"] = settings.clickhouse_ca_file
    if read_only:
        if settings.clickhouse_readonly_user:
            options["user"] = settings.clickhouse_readonly_user
            options["password"] = settings.clickhouse_readonly_password.reveal()
        else:
            options["settings"] = {"readonly": 1}
    return options


class ServerWarehouse:
    """A ClickHouse server reached with clickhouse-driver. Connects lazily; reconnects after failures.

    Error messages never contain the password (ClickHouse's own do not; ours are scrubbed too).
    """

    kind = "server"

    def __init__(
        self, settings: Settings, database: str | None = None, connect_timeout: float = 5.0, read_only: bool = False
    ) -> None:
        self.database = settings.clickhouse_database if database is None else database
        options = connection_options(settings, read_only)
        session = {**(CLUSTER_SESSION_SETTINGS if settings.clickhouse_cluster else {}), **options.pop("settings", {})}
        self._connect = {
            **options,
            "settings": session,
            "connect_timeout": connect_timeout,
            "send_receive_timeout": 300,
        }
        self._client = Client(database=self.database or "default", **self._connect)
        self._known_insert_settings: dict[str, Any] | None = None  # see _insert_settings

    def _scrub(self, message: str) -> str:
        password = str(self._connect.get("password") or "")
        return message.replace(password, "********") if password else message

    def _run(
        self,
        sql: str,
        data: Any = None,
        columnar: bool = False,
        with_types: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> Any:
        try:
            if data is None:
                return self._client.execute(sql, with_column_types=with_types)
            return self._client.execute(sql, data, columnar=columnar, settings=settings)
        except ch_errors.ServerException as exc:
            if exc.code in _TRANSIENT_CODES:
                self._client.disconnect()
                raise WarehouseUnavailable(self._scrub(str(exc))) from exc
            message = exc.message.strip().splitlines()[0] if exc.message else str(exc)
            raise QueryError(self._scrub(message), exc.code) from exc
        except (OSError, ch_errors.NetworkError, ch_errors.SocketTimeoutError, EOFError) as exc:
            self._client.disconnect()
            raise WarehouseUnavailable(self._scrub(f"ClickHouse server unreachable: {exc}")) from exc
        except ch_errors.Error as exc:
            self._client.disconnect()
            raise WarehouseUnavailable(self._scrub(str(exc))) from exc

    def execute(self, sql: str, params: Params = None) -> None:
        if sql.lstrip().upper().startswith("CREATE DATABASE"):
            # The session's own database may not exist yet: create it from the default one.
            self._on_default_database(bind(sql, params))
            return
        self._run(bind(sql, params))

    def _on_default_database(self, sql: str) -> Any:
        own = self._client
        self._client = Client(database="default", **self._connect)
        try:
            return self._run(sql, with_types=True)
        finally:
            self._client.disconnect()
            self._client = own

    def query(self, sql: str, params: Params = None) -> QueryResult:
        rows, columns = self._run(bind(sql, params), with_types=True)
        return QueryResult([c[0] for c in columns], [tuple(_plain(v) for v in row) for row in rows])

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        names = ", ".join(identifier(name) for name in columns)
        data = [v if type(v) is list else list(v) for v in columns.values()]  # a RowBlock's are lists already
        self._run(f"INSERT INTO {table} ({names}) VALUES", data, columnar=True, settings=self._insert_settings())

    def _insert_settings(self) -> dict[str, Any]:
        """Settings of every insert: those of :data:`~pipeline.warehouse.base.INSERT_SETTINGS` this server
        has (asked once; 18.16 has none of them)."""
        if self._known_insert_settings is None:
            names = ", ".join(f"'{name}'" for name in INSERT_SETTINGS)
            known = {str(row[0]) for row in self._run(f"SELECT name FROM system.settings WHERE name IN ({names})")}
            self._known_insert_settings = {k: v for k, v in INSERT_SETTINGS.items() if k in known}
        return self._known_insert_settings

    def server_version(self) -> tuple[int, int]:
        try:
            row = self._run("SELECT version()")[0][0]
        except QueryError:  # the session's database does not exist yet
            row = self._on_default_database("SELECT version()")[0][0][0]
        major, minor = str(row).split(".")[:2]
        return int(major), int(minor)

    def close(self) -> None:
        self._client.disconnect()
