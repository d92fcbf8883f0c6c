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


def open_warehouse(settings: Settings) -> Warehouse:
    """The warehouse ``settings`` name: ``server`` (clickhouse-driver) or ``embedded`` (chDB under data_dir).

    Opening the embedded store takes its directory for this process (chDB allows one at a time).
    """
    if settings.warehouse == "server":
        from pipeline.warehouse.server import ServerWarehouse

        return ServerWarehouse(settings)
    from pipeline.warehouse.embedded import EmbeddedWarehouse

    return EmbeddedWarehouse(settings.chdb_path, settings.clickhouse_database)
