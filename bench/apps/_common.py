"""What every variant shares: the query, the body, the pool size, the connection parameters."""

import os
from typing import Any

from fastapi import HTTPException
from psycopg.conninfo import conninfo_to_dict

QUERY = "SELECT id, name, email FROM bench_users WHERE id = %s"
QUERY_DOLLAR = "SELECT id, name, email FROM bench_users WHERE id = $1"
QUERY_NAMED = "SELECT id, name, email FROM bench_users WHERE id = :id"

POOL_MIN = 2  # fastapi_dbpool's default min_size, used by every pooled variant
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "10"))


def url() -> str:
    return os.environ["DBPOOL_URL"]


def params(conninfo: str | None = None) -> dict[str, Any]:
    """host, port, user, password, database: for the drivers that take no libpq string."""
    info = conninfo_to_dict(conninfo or url())
    return {
        "host": info.get("host", "127.0.0.1"),
        "port": int(info.get("port", 5432)),
        "user": info.get("user"),
        "password": info.get("password"),
        "database": info.get("dbname"),
    }


def user(row: Any) -> dict[str, Any]:
    """The response body, built the same way for every driver's row."""
    if row is None:
        raise HTTPException(status_code=404, detail="no such user")
    return {"id": row[0], "name": row[1], "email": row[2]}
