"""get_pool, get_conn, get_read_conn, get_conn_for and get_stream_conn, with their aliases."""

import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import psycopg
from fastapi import Depends, HTTPException
from psycopg import AsyncConnection
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool
from starlette.requests import HTTPConnection

from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.errors import (
    CommitFailed,
    DatabaseUnavailable,
    QueryTimeout,
    unavailable_reason,
)

if TYPE_CHECKING:
    from fastapi_dbpool.pools import Databases

logger = logging.getLogger("fastapi_dbpool")

STATE_KEY = "dbpool"
POOLS_KEY = "dbpools"
_NO_POOL = (
    "no database pool on this app: create it with FastAPI(lifespan=pool_lifespan) "
    "or FastAPI(lifespan=create_pool_lifespan(settings))"
)


# The dependencies are coroutines on purpose: FastAPI runs a plain `def` dependency in a
# worker thread, which cost about 60 us per request here (measured in-process).


async def get_database(request: HTTPConnection) -> DatabasePool:
    """The default DatabasePool the app's lifespan opened."""
    return _database(request)


def _from_state(request: HTTPConnection, key: str) -> Any:
    """What the lifespan put under key: in the request's state, else the app's."""
    value = getattr(request.state, key, None)
    return value if value is not None else getattr(request.app.state, key, None)


def _database(request: HTTPConnection) -> DatabasePool:
    database = _from_state(request, STATE_KEY)
    if not isinstance(database, DatabasePool):
        raise RuntimeError(_NO_POOL)
    return database


async def get_databases(request: HTTPConnection) -> "Databases":
    """Every pool of the app, by name (the default one and those of DBPOOL_POOLS)."""
    return _databases(request)


def _databases(request: HTTPConnection) -> "Databases":
    databases = _from_state(request, POOLS_KEY)
    if databases is None:
        from fastapi_dbpool.pools import Databases

        # A DatabasePool put on the state by hand (tests, custom lifespans): a set of one.
        return Databases([_database(request)])
    return databases  # type: ignore[no-any-return]


async def get_pool(request: HTTPConnection) -> AsyncConnectionPool[AsyncConnection[Any]]:
    """The app's psycopg AsyncConnectionPool, for endpoints that manage connections themselves."""
    return _database(request).pool


_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


class _CannotServe(Exception):
    """A replica could not lend a connection in time: the read goes elsewhere."""


def transaction(
    database: DatabasePool, route: str = "", timeout: float | None = None
) -> AbstractAsyncContextManager[AsyncConnection[Any]]:
    """A pooled connection in a transaction: commit on success, roll back on error.

    Pool and connection errors come out as HTTP answers (503, 504, 500 for a failed commit);
    every other error passes unchanged, after the rollback.
    """
    return _session(database, route, timeout, autocommit=False, fallback=False)


def autocommit(
    database: DatabasePool, route: str = "", timeout: float | None = None, fallback: bool = False
) -> AbstractAsyncContextManager[AsyncConnection[Any]]:
    """A pooled connection in autocommit: no BEGIN/COMMIT round trips; each statement commits.

    The fast path for reads. Errors come out as in transaction(); the connection goes back to
    the pool in its usual (transactional) mode. With fallback, a checkout that fails raises
    _CannotServe (for the read router to try another pool) instead of answering 503.
    """
    return _session(database, route, timeout, autocommit=True, fallback=fallback)


@asynccontextmanager
async def _session(
    database: DatabasePool, route: str, timeout: float | None, autocommit: bool, fallback: bool
) -> AsyncIterator[AsyncConnection[Any]]:
    """One checkout, flat: the connection, the endpoint, then commit or roll back and return.

    One generator and psycopg-pool's getconn/putconn rather than nested context managers: this
    runs on every request."""
    try:
        conn, token = await database.acquire(route, timeout)
    except Exception as exc:
        reason = unavailable_reason(exc)
        if fallback and reason is not None:
            database.fallbacks += 1
            # Busy is not down: only a replica that cannot connect is skipped from now on.
            if reason not in ("pool_timeout", "queue_full") or database.connect_failing():
                database.mark_down()
            raise _CannotServe() from exc
        _reraise(database, exc, None)
    try:
        if autocommit:
            try:
                await conn.set_autocommit(True)
            except Exception as exc:
                _reraise(database, exc, conn)
        try:
            yield conn
        except BaseException as exc:
            await _rollback_quietly(conn)
            if isinstance(exc, Exception) and _translatable(exc, conn):
                _reraise(database, exc, conn)
            raise
        if not autocommit:
            await _commit(database, conn)
        elif conn.pgconn.transaction_status in _OPEN:
            # An explicit BEGIN on an autocommit connection, never committed: its writes would
            # vanish with a 200. Roll back and say so.
            logger.warning(
                "the endpoint left a transaction open on an autocommit (read) connection; "
                "rolled back, answering 500: use get_conn for transactions"
            )
            await _rollback_quietly(conn)
            raise CommitFailed()
    finally:
        try:
            if autocommit and not conn.broken and not conn.closed:
                await _restore_transactional(conn)
        finally:
            await database.release(conn, token)


def _translatable(exc: Exception, conn: AsyncConnection[Any]) -> bool:
    """Whether this session answers for exc: a lost connection only if it is this one (an
    endpoint with connections from several pools sees every session's errors)."""
    if isinstance(exc, HTTPException):
        return False
    lost = unavailable_reason(exc, conn) == "connection_lost"
    return not lost or conn.broken or conn.closed


async def _commit(database: DatabasePool, conn: AsyncConnection[Any]) -> None:
    status = conn.pgconn.transaction_status
    if status == TransactionStatus.INERROR:
        # COMMIT of an aborted transaction silently rolls back: never answer 200 then.
        logger.warning(
            "the endpoint returned after an SQL error it caught, so nothing could be "
            "committed; answering 500 (use a savepoint, conn.transaction(), to recover)"
        )
        await _rollback_quietly(conn)
        raise CommitFailed()
    if status == TransactionStatus.IDLE:
        return  # no statement ran: nothing to commit
    try:  # also when the connection is gone (503) or still busy (commit waits for its lock)
        await conn.commit()
    except psycopg.Error as exc:
        translated = _translate(database, exc, conn)
        if translated is exc:
            logger.warning(
                "commit failed (%s, SQLSTATE %s); answering 500", type(exc).__name__, exc.sqlstate
            )
            translated = CommitFailed()
        raise translated from exc


async def _restore_transactional(conn: AsyncConnection[Any]) -> None:
    """Back to the pool's usual mode; a connection that cannot be is closed, never lent again
    in autocommit."""
    try:
        await conn.set_autocommit(False)
    except Exception as exc:
        logger.warning("closing a connection left in autocommit: %s: %s", type(exc).__name__, exc)
        await conn.close()


async def _rollback_quietly(conn: AsyncConnection[Any]) -> None:
    """Roll back what the endpoint left open, as psycopg's connection context does."""
    if conn.closed or conn.pgconn.transaction_status == TransactionStatus.IDLE:
        return
    try:
        await conn.rollback()
    except Exception as exc:  # the error that got us here matters more
        logger.warning("rollback failed: %s: %s", type(exc).__name__, exc)


def _route(request: HTTPConnection) -> str:
    """METHOD /path/template of the request, for slow-holder warnings."""
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    return f"{request.scope.get('method', 'WS')} {path}"


def _reraise(database: DatabasePool, exc: Exception, conn: AsyncConnection[Any] | None) -> NoReturn:
    translated = _translate(database, exc, conn)
    if translated is exc:
        raise exc
    raise translated from exc


def _translate(
    database: DatabasePool, exc: Exception, conn: AsyncConnection[Any] | None
) -> Exception:
    """The HTTP answer for a pool or connection error; other errors pass unchanged."""
    if isinstance(exc, pg_errors.QueryCanceled):
        return QueryTimeout()
    reason = unavailable_reason(exc, conn)
    if reason is None:
        return exc
    database.count_unavailable(reason)
    logger.warning(
        "answering 503 (%s): %s", reason, database.redact(f"{type(exc).__name__}: {exc}")
    )
    return DatabaseUnavailable(reason, database.settings.retry_after)


async def _function_scoped(request: HTTPConnection) -> AsyncIterator[AsyncConnection[Any]]:
    async with transaction(_database(request), _route(request)) as conn:
        yield conn


async def _function_scoped_autocommit(
    request: HTTPConnection,
) -> AsyncIterator[AsyncConnection[Any]]:
    databases = _databases(request)
    route = _route(request)
    for replica in databases.read_order():
        stack = AsyncExitStack()
        try:
            conn = await stack.enter_async_context(
                autocommit(replica, route, timeout=replica.settings.fallback_timeout, fallback=True)
            )
        except _CannotServe:
            continue  # the next replica, then the default pool
        async with stack:
            yield conn
        return
    async with autocommit(databases.default, route) as conn:
        yield conn


async def get_conn(
    conn: Annotated[AsyncConnection[Any], Depends(_function_scoped, scope="function")],
) -> AsyncConnection[Any]:
    """A pooled connection in a transaction, committed before the response is sent.

    The transaction commits when the endpoint returns and rolls back when it raises; the
    connection is back in the pool before the response body is written, so a failed commit
    answers 500 and slow clients hold no connection. Pool timeouts, a full queue and lost
    connections answer 503 with Retry-After.
    """
    return conn


async def get_read_conn(
    conn: Annotated[AsyncConnection[Any], Depends(_function_scoped_autocommit, scope="function")],
) -> AsyncConnection[Any]:
    """A pooled connection in autocommit, for reads: one round trip per query, no BEGIN/COMMIT.

    From a replica when the app has some (DBPOOL_<NAME>_REPLICA=true), the least busy first;
    from the default pool when none has one within its DBPOOL_<NAME>_FALLBACK_TIMEOUT. Each
    statement commits on its own, so use get_conn for anything that writes more than one
    statement. Returned to the pool before the response is sent, like get_conn.
    """
    return conn


ConnDependency = Callable[..., Coroutine[Any, Any, AsyncConnection[Any]]]


def get_conn_for(name: str, *, read: bool = False) -> ConnDependency:
    """The dependency for a connection from the pool called name, e.g. "analytics".

    ``Depends(get_conn_for("analytics"))`` behaves as get_conn (a transaction, committed before
    the response), or as get_read_conn's autocommit with read=True, on that pool. One
    dependency per name and mode: FastAPI shares it within a request.
    """
    return _conn_dependency(name, bool(read))


@functools.cache
def _conn_dependency(name: str, read: bool) -> ConnDependency:
    enter = autocommit if read else transaction

    async def scoped(request: HTTPConnection) -> AsyncIterator[AsyncConnection[Any]]:
        database = _named_pool(request, name)
        async with enter(database, _route(request)) as conn:
            yield conn

    async def dependency(
        conn: Annotated[AsyncConnection[Any], Depends(scoped, scope="function")],
    ) -> AsyncConnection[Any]:
        return conn

    dependency.__name__ = dependency.__qualname__ = f"get_conn_for_{name}"
    return dependency


@functools.cache
def get_database_for(
    name: str,
) -> Callable[[HTTPConnection], Coroutine[Any, Any, DatabasePool]]:
    """The dependency for the DatabasePool called name (one per name, like get_conn_for)."""

    async def dependency(request: HTTPConnection) -> DatabasePool:
        return _named_pool(request, name)

    return dependency


def _named_pool(request: HTTPConnection, name: str) -> DatabasePool:
    try:
        return _databases(request).get(name)
    except LookupError as exc:
        raise RuntimeError(str(exc)) from None


async def get_stream_conn(request: HTTPConnection) -> AsyncIterator[AsyncConnection[Any]]:
    """A pooled connection held until the response has been sent, for streaming responses.

    The transaction commits after the last chunk is sent (an error then can only be logged),
    and the connection is taken for the whole response: use it only where the body itself
    reads from the database.
    """
    async with transaction(_database(request), _route(request)) as conn:
        yield conn


PoolDep = Annotated[AsyncConnectionPool[AsyncConnection[Any]], Depends(get_pool)]
# The aliases point straight at the function-scoped generators: same semantics as get_conn and
# get_read_conn (exit before the response), one dependency to resolve per request instead of two.
ConnDep = Annotated[AsyncConnection[Any], Depends(_function_scoped, scope="function")]
ReadConnDep = Annotated[
    AsyncConnection[Any], Depends(_function_scoped_autocommit, scope="function")
]
StreamConnDep = Annotated[AsyncConnection[Any], Depends(get_stream_conn)]
DatabaseDep = Annotated[DatabasePool, Depends(get_database)]
