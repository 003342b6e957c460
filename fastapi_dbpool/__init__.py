"""Production-grade PostgreSQL connection pooling for FastAPI, on psycopg 3 and psycopg-pool.

The first screen of the README is here: the lifespan, the connection dependencies with their
``Annotated`` aliases, the router and the settings. The rest lives in documented submodules:
``fastapi_dbpool.errors`` (the HTTP answers), ``fastapi_dbpool.session`` (``transaction`` and
``autocommit`` for lifespans and background work), ``fastapi_dbpool.database`` and
``fastapi_dbpool.pools`` (``DatabasePool``, ``Databases``), ``fastapi_dbpool.dependencies``
(``get_database``, ``get_database_for``), ``fastapi_dbpool.stats`` (the response models) and
``fastapi_dbpool.testing`` (the pytest plugin), ``fastapi_dbpool.starlette`` (the same
guarantees for a plain Starlette app, without FastAPI) and ``fastapi_dbpool.otel``
(OpenTelemetry's pool metrics, with the ``otel`` extra).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi_dbpool.dependencies import (
        ConnDep,
        PoolDep,
        ReadConnDep,
        StreamConnDep,
        get_conn,
        get_conn_for,
        get_conn_with,
        get_pool,
        get_read_conn,
        get_stream_conn,
    )
    from fastapi_dbpool.lifespan import create_pool_lifespan, pool_lifespan
    from fastapi_dbpool.router import pool_router
    from fastapi_dbpool.settings import PoolSettings, SettingsError
    from fastapi_dbpool.sync import SyncConnDep, get_sync_conn

# Imported on first use, so that a plain Starlette app (fastapi_dbpool.starlette) never
# imports FastAPI.
_EXPORTS = {
    "ConnDep": "dependencies",
    "PoolDep": "dependencies",
    "ReadConnDep": "dependencies",
    "StreamConnDep": "dependencies",
    "get_conn": "dependencies",
    "get_conn_for": "dependencies",
    "get_conn_with": "dependencies",
    "get_pool": "dependencies",
    "get_read_conn": "dependencies",
    "get_stream_conn": "dependencies",
    "create_pool_lifespan": "lifespan",
    "pool_lifespan": "lifespan",
    "pool_router": "router",
    "PoolSettings": "settings",
    "SettingsError": "settings",
    "SyncConnDep": "sync",
    "get_sync_conn": "sync",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastapi_dbpool' has no attribute {name!r}")
    value = getattr(import_module(f"fastapi_dbpool.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.2.0"

__all__ = [
    "ConnDep",
    "PoolDep",
    "PoolSettings",
    "ReadConnDep",
    "SettingsError",
    "StreamConnDep",
    "SyncConnDep",
    "__version__",
    "create_pool_lifespan",
    "get_conn",
    "get_conn_for",
    "get_conn_with",
    "get_pool",
    "get_read_conn",
    "get_stream_conn",
    "get_sync_conn",
    "pool_lifespan",
    "pool_router",
]
