"""Pool and connection errors turned into HTTP answers, in one place."""

from typing import Literal

import psycopg
from fastapi import HTTPException
from psycopg import errors as pg_errors
from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests

UnavailableReason = Literal["pool_timeout", "queue_full", "pool_closed", "connection_lost"]

UNAVAILABLE_REASONS: tuple[UnavailableReason, ...] = (
    "pool_timeout",
    "queue_full",
    "pool_closed",
    "connection_lost",
)

_MESSAGES: dict[UnavailableReason, str] = {
    "pool_timeout": "no database connection became available in time",
    "queue_full": "too many requests are waiting for a database connection",
    "pool_closed": "the database pool is closed",
    "connection_lost": "the connection to the database was lost",
}


class PoolStartupError(RuntimeError):
    """The pool could not be opened at startup; the message says why, never the password."""


class DatabaseUnavailable(HTTPException):
    """503: the pool could not give a working connection; the client should retry later."""

    def __init__(self, reason: UnavailableReason, retry_after: int) -> None:
        super().__init__(
            status_code=503,
            detail=f"database unavailable: {_MESSAGES[reason]}",
            headers={"Retry-After": str(retry_after)},
        )
        self.reason = reason


class QueryTimeout(HTTPException):
    """504: the server cancelled a statement (statement_timeout)."""

    def __init__(self) -> None:
        super().__init__(
            status_code=504,
            detail="database query timed out (statement_timeout); the transaction was rolled back",
        )


class CommitFailed(HTTPException):
    """500: the endpoint returned but its transaction could not be committed."""

    def __init__(self) -> None:
        super().__init__(
            status_code=500,
            detail="database commit failed; the transaction was rolled back",
        )


def unavailable_reason(
    exc: BaseException, conn: psycopg.AsyncConnection[object] | None = None
) -> UnavailableReason | None:
    """Why exc means the database cannot serve now, or None if it means something else."""
    if isinstance(exc, TooManyRequests):
        return "queue_full"
    if isinstance(exc, PoolTimeout):
        return "pool_timeout"
    if isinstance(exc, PoolClosed):
        return "pool_closed"
    if isinstance(exc, pg_errors.QueryCanceled):
        return None
    if isinstance(exc, (pg_errors.AdminShutdown, pg_errors.CannotConnectNow)):
        return "connection_lost"
    if isinstance(exc, psycopg.OperationalError) and (conn is None or conn.broken or conn.closed):
        return "connection_lost"
    return None
