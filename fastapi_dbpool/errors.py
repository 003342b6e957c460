"""The package's errors, and pool and connection errors turned into HTTP answers, in one place.

Every error the package raises is a ``DBPoolError``::

    DBPoolError
    ├── SettingsError (ValueError)            invalid settings, named by their variables
    ├── PoolStartupError (RuntimeError)       a pool could not open: the reason and the fix
    ├── UsageError (RuntimeError)             the app is wired in a way the package cannot serve
    ├── ConnectionSetupError (psycopg.OperationalError)
    │                                         a configure/reset hook or a password provider
    │                                         failed (or passed DBPOOL_HOOK_TIMEOUT)
    ├── TransactionRefused (psycopg.ProgrammingError)
    │                                         conn.commit()/rollback() inside a request's
    │                                         transaction
    ├── ConnectionReleased (psycopg.InterfaceError)
    │                                         a statement on a connection its request gave back
    └── DatabaseHTTPError (starlette HTTPException): the HTTP answers
        ├── DatabaseUnavailable               503 + Retry-After
        ├── QueryTimeout, LockTimeout, DeadlineExceeded   504
        └── CommitFailed, CommitOutcomeUnknown, ReadOnlyViolation, RequestCancelled   500

Each keeps the standard base a caller would catch without knowing this package (the class in
parentheses), so ``except psycopg.Error`` and ``except ValueError`` still see them.
"""

import logging
from collections.abc import Container
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests
from starlette.exceptions import HTTPException

from fastapi_dbpool._hooks import ConnectionSetupError
from fastapi_dbpool._owner import ConnectionReleased
from fastapi_dbpool._root import DBPoolError, UsageError
from fastapi_dbpool.connection import TransactionRefused
from fastapi_dbpool.settings import SettingsError

if TYPE_CHECKING:
    from fastapi_dbpool.settings import PoolSettings

logger = logging.getLogger("fastapi_dbpool")

__all__ = [
    "CommitFailed",
    "CommitOutcomeUnknown",
    "ConnectionReleased",
    "ConnectionSetupError",
    "DBPoolError",
    "DatabaseHTTPError",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "LockTimeout",
    "PoolStartupError",
    "QueryTimeout",
    "ReadOnlyViolation",
    "RequestCancelled",
    "SettingsError",
    "TransactionRefused",
    "UsageError",
]

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


class Connection(Protocol):
    """What the answers read of a connection: psycopg's, async or sync."""

    @property
    def broken(self) -> bool: ...

    @property
    def closed(self) -> bool: ...


class Accounts(Protocol):
    """What the answers read and count of a pool: DatabasePool, or the sync pool."""

    @property
    def settings(self) -> "PoolSettings": ...

    @property
    def cut(self) -> Container[Any]: ...

    def redact(self, text: str) -> str: ...

    def count_unavailable(self, reason: UnavailableReason) -> None: ...


class PoolStartupError(DBPoolError, RuntimeError):
    """The pool could not be opened at startup; the message says why, never the password."""


class DatabaseHTTPError(DBPoolError, HTTPException):
    """An HTTP answer of this package (503, 504 or 500); the request's transaction rolled back
    (or, for CommitOutcomeUnknown, may have committed)."""


class DatabaseUnavailable(DatabaseHTTPError):
    """503: the pool could not give a working connection; the client should retry later."""

    def __init__(self, reason: UnavailableReason, retry_after: int) -> None:
        super().__init__(
            status_code=503,
            detail=f"database unavailable: {_MESSAGES[reason]}",
            headers={"Retry-After": str(retry_after)},
        )
        self.reason = reason


class QueryTimeout(DatabaseHTTPError):
    """504: the server cancelled a statement (statement_timeout)."""

    def __init__(self) -> None:
        super().__init__(
            status_code=504,
            detail="database query timed out (statement_timeout); the transaction was rolled back",
        )


class DeadlineExceeded(DatabaseHTTPError):
    """504: the server did not answer within DBPOOL_DEADLINE; the connection was cut."""

    def __init__(self) -> None:
        super().__init__(
            status_code=504,
            detail="the database did not answer in time (DBPOOL_DEADLINE); the connection was "
            "dropped and nothing was committed",
        )


class ReadOnlyViolation(DatabaseHTTPError):
    """500: a route declared read only (get_conn_with(read_only=True)) tried to write."""

    def __init__(self) -> None:
        super().__init__(
            status_code=500,
            detail="this route's transaction is read only (get_conn_with(read_only=True)) and "
            "a statement tried to write; the transaction was rolled back",
        )


class LockTimeout(DatabaseHTTPError):
    """504: a lock was not granted within the route's lock_timeout."""

    def __init__(self) -> None:
        super().__init__(
            status_code=504,
            detail="a database lock was not granted within lock_timeout; the transaction was "
            "rolled back",
        )


class CommitFailed(DatabaseHTTPError):
    """500: the endpoint returned but its transaction could not be committed."""

    def __init__(self) -> None:
        super().__init__(
            status_code=500,
            detail="database commit failed; the transaction was rolled back",
        )


class CommitOutcomeUnknown(DatabaseHTTPError):
    """500: the connection was lost while COMMIT was under way, so the transaction may or may
    not have been committed. No Retry-After: a blind retry could apply the write twice."""

    def __init__(self) -> None:
        super().__init__(
            status_code=500,
            detail="database commit outcome unknown: the connection was lost after COMMIT was "
            "sent, so the transaction may have been committed; check before retrying",
        )


class RequestCancelled(DatabaseHTTPError):
    """500: the request was cancelled (its client hung up mid-stream, a timeout middleware)
    while a query ran, and psycopg closed the connection it could not cancel cleanly; nothing
    was committed. Not a database failure: not counted among the 503 causes."""

    def __init__(self) -> None:
        super().__init__(
            status_code=500,
            detail="the request was cancelled while a database query ran; its connection was "
            "closed and nothing was committed",
        )


def interrupted(conn: Connection | None) -> bool:
    """Whether psycopg closed conn itself because a query of it was interrupted: the task
    running it was cancelled (a client that hung up mid-stream, a timeout middleware) and
    the cancellation could not finish. psycopg then frees the libpq connection (pgconn_ptr
    None) without close(); a server or network that fails leaves it in place, status BAD."""
    pgconn = getattr(conn, "pgconn", None)
    return bool(conn is not None and conn.broken and pgconn is not None and not pgconn.pgconn_ptr)


def caught_sql_error() -> "CommitFailed":
    """The answer for an endpoint that returned after an SQL error it caught: COMMIT of an
    aborted transaction silently rolls back, so never 200."""
    logger.warning(
        "the endpoint returned after an SQL error it caught, so nothing could be "
        "committed; answering 500 (use a savepoint, conn.transaction(), to recover)"
    )
    return CommitFailed()


def commit_failure(database: Accounts, exc: psycopg.Error, conn: Connection) -> Exception:
    """The answer for a COMMIT that raised exc: outcome unknown (500, no Retry-After) when the
    connection was lost with no answer, a pool or connection answer (503/504), else 500."""
    gone = isinstance(exc, psycopg.OperationalError) and (conn.broken or conn.closed)
    if gone and not exc.sqlstate:
        # COMMIT was sent and no answer came: the server may have committed. (An answer with a
        # SQLSTATE, such as 57P01 when the backend was terminated, says it did not.)
        logger.warning(
            "connection lost during COMMIT: outcome unknown, answering 500 without "
            "Retry-After (%s)",
            database.redact(f"{type(exc).__name__}: {exc}"),
        )
        return CommitOutcomeUnknown()
    translated = translate(database, exc, conn)
    if translated is exc:
        logger.warning(
            "commit failed (%s, SQLSTATE %s); answering 500", type(exc).__name__, exc.sqlstate
        )
        return CommitFailed()
    return translated


def unavailable_reason(
    exc: BaseException, conn: Connection | None = None
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


# psycopg's own refusal of commit() inside a conn.transaction() block.
_FORBIDDEN_IN_BLOCK = "forbidden within a Transaction context"


def answer_for(database: Accounts, exc: BaseException, conn: Connection) -> None:
    """Raise the HTTP answer for exc if it is a pool or connection error of this session."""
    if not isinstance(exc, Exception) or isinstance(exc, HTTPException):
        return
    if isinstance(exc, TransactionRefused) or (
        isinstance(exc, psycopg.ProgrammingError) and _FORBIDDEN_IN_BLOCK in str(exc)
    ):
        logger.warning(
            "the endpoint called conn.commit() or conn.rollback() on a get_conn connection: "
            "the request's transaction commits when the endpoint returns and rolls back when "
            "it raises; use conn.transaction() for a savepoint, or take the pool to manage "
            "transactions yourself (answering 500, rolled back)"
        )
        return
    # A lost connection is answered only by the session it belongs to (an endpoint with
    # connections from several pools sees every session's errors).
    if unavailable_reason(exc, conn) == "connection_lost" and not (conn.broken or conn.closed):
        return
    translated = translate(database, exc, conn)
    if translated is not exc:
        raise translated from exc


def reraise(database: Accounts, exc: Exception, conn: Connection | None) -> NoReturn:
    translated = translate(database, exc, conn)
    if translated is exc:
        raise exc
    raise translated from exc


def translate(database: Accounts, exc: Exception, conn: Connection | None) -> Exception:
    """The HTTP answer for a pool or connection error; other errors pass unchanged."""
    if isinstance(exc, pg_errors.QueryCanceled):
        return QueryTimeout()
    if isinstance(exc, pg_errors.LockNotAvailable):
        return LockTimeout()
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return ReadOnlyViolation()
    if conn is not None and conn in database.cut:
        logger.warning(
            "answering 504: pool %r cut a connection past its deadline (%s s)",
            database.settings.name,
            database.settings.effective_deadline,
        )
        return DeadlineExceeded()
    reason = unavailable_reason(exc, conn)
    if reason is None:
        return exc
    if reason == "connection_lost" and interrupted(conn):
        logger.info(
            "pool %r: the request was cancelled while a query ran (a client that hung up, a "
            "timeout), so psycopg closed its connection; nothing was committed (not a "
            "database failure, not counted as connection_lost)",
            database.settings.name,
        )
        return RequestCancelled()
    database.count_unavailable(reason)
    logger.warning(
        "answering 503 (%s): %s", reason, database.redact(f"{type(exc).__name__}: {exc}")
    )
    return DatabaseUnavailable(reason, database.settings.retry_after)
