"""ClickHouse behind one small interface: a server (clickhouse-driver) or embedded chDB."""

from __future__ import annotations

from pipeline.settings import Settings
from pipeline.warehouse.base import QueryError, QueryResult, Warehouse, WarehouseError, WarehouseUnavailable

__all__ = [
    "QueryError",
    "QueryResult",
    "Warehouse",
    "WarehouseError",
    "WarehouseUnavailable",
    "open_warehouse",
]


def open_warehouse(settings: Settings, read_only: bool = False) -> Warehouse:
    """The warehouse ``settings`` name: ``server`` (clickhouse-driver) or ``embedded`` (chDB under data_dir).

    Opening the embedded store takes its directory for this process (chDB allows one at a time).
    ``read_only`` (server): connect as the read-only user, or make the session read-only (see
    :func:`pipeline.warehouse.server.connection_options`); chDB has no users: callers check statements with
    :func:`pipeline.readonly_sql.check_read_only`.
    """
    if settings.warehouse == "server":
        from pipeline.warehouse.server import ServerWarehouse

        return ServerWarehouse(settings, read_only=read_only)
    from pipeline.warehouse.embedded import EmbeddedWarehouse

    return EmbeddedWarehouse(settings.chdb_path, settings.clickhouse_database)
