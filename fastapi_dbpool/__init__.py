"""Production-grade PostgreSQL connection pooling for FastAPI, on psycopg 3 and psycopg-pool."""

from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.dependencies import (
    ConnDep,
    DatabaseDep,
    PoolDep,
    ReadConnDep,
    StreamConnDep,
    autocommit,
    get_conn,
    get_conn_for,
    get_database,
    get_database_for,
    get_databases,
    get_pool,
    get_read_conn,
    get_stream_conn,
    transaction,
)
from fastapi_dbpool.errors import (
    CommitFailed,
    DatabaseUnavailable,
    PoolStartupError,
    QueryTimeout,
)
from fastapi_dbpool.lifespan import create_pool_lifespan, pool_lifespan
from fastapi_dbpool.pools import Databases
from fastapi_dbpool.router import pool_router
from fastapi_dbpool.settings import PoolSettings, SettingsError
from fastapi_dbpool.stats import AppPoolStats, Health, PoolCounters, PoolHealth, PoolStats

__version__ = "0.1.0"

__all__ = [
    "AppPoolStats",
    "CommitFailed",
    "ConnDep",
    "DatabaseDep",
    "DatabasePool",
    "DatabaseUnavailable",
    "Databases",
    "Health",
    "PoolCounters",
    "PoolDep",
    "PoolHealth",
    "PoolSettings",
    "PoolStartupError",
    "PoolStats",
    "QueryTimeout",
    "ReadConnDep",
    "SettingsError",
    "StreamConnDep",
    "__version__",
    "autocommit",
    "create_pool_lifespan",
    "get_conn",
    "get_conn_for",
    "get_database",
    "get_database_for",
    "get_databases",
    "get_pool",
    "get_read_conn",
    "get_stream_conn",
    "pool_lifespan",
    "pool_router",
    "transaction",
]
