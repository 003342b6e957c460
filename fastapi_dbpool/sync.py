"""get_sync_conn and SyncConnDep: a pooled psycopg.Connection for plain ``def`` endpoints.

FastAPI runs a ``def`` endpoint in a worker thread (anyio's threadpool, 40 tokens by default),
where get_conn's AsyncConnection is of no use. get_sync_conn gives it a sync connection, from a
psycopg ConnectionPool that mirrors the app's default pool (fastapi_dbpool._sync_pool), with
get_conn's guarantees: one transaction per request, committed before the response is sent,
rolled back when the endpoint raises; 503 with Retry-After when no connection comes within
DBPOOL_TIMEOUT; 500 when the commit fails. The pool opens on the first request that asks for
it (an app that never does pays nothing) and closes with the app's other pools.

check_routes, run by the lifespan at startup, refuses a ``def`` endpoint that takes get_conn's
AsyncConnection (its queries would be coroutines that never run) and names the fix.
"""

import inspect
import logging
from typing import Annotated, Any

import psycopg
from anyio import CancelScope
from fastapi import Depends
from psycopg import Transaction
from psycopg.pq import TransactionStatus
from psycopg_pool import PoolClosed
from starlette.requests import HTTPConnection

from fastapi_dbpool import dependencies
from fastapi_dbpool._owner import core, release
from fastapi_dbpool._root import UsageError
from fastapi_dbpool._state import POOLS_KEY, _from_state, database_of
from fastapi_dbpool._sync_pool import SyncConnection, SyncPool, async_setup_refused
from fastapi_dbpool.dependencies import _before_response
from fastapi_dbpool.errors import (
    CommitFailed,
    answer_for,
    caught_sql_error,
    commit_failure,
    reraise,
)
from fastapi_dbpool.pools import Databases
from fastapi_dbpool.settings import PoolSettings

__all__ = [
    "SyncConnDep",
    "get_sync_conn",
]

logger = logging.getLogger("fastapi_dbpool")

_INERROR = TransactionStatus.INERROR
_CANCEL_TIMEOUT = 2.0  # seconds to wait for the server to acknowledge a cancel request
_IDLE = TransactionStatus.IDLE

_NO_LIFESPAN = (
    "get_sync_conn needs the app's pools: create the app with FastAPI(lifespan=pool_lifespan) "
    "or FastAPI(lifespan=create_pool_lifespan(settings))"
)


def sync_pool_of(request: HTTPConnection) -> SyncPool:
    """The app's sync pool, opened now if no request used it before."""
    databases = _from_state(request, POOLS_KEY)
    if not isinstance(databases, Databases):
        raise UsageError(_NO_LIFESPAN)
    name = databases.default.settings.name
    pool = databases.sync.get(name)
    if pool is None and databases.default.pool.closed:
        raise PoolClosed(f"the pool {name!r} is closed")  # shutting down: 503, no new pool
    if pool is None:  # no await between the look-up and the store: one pool per app
        pool = databases.sync[name] = SyncPool(databases.default)
        pool.open()
    return pool


async def get_sync_conn(request: HTTPConnection) -> SyncConnection:
    """A pooled psycopg.Connection in a transaction, for ``def`` endpoints: get_conn's rules.

    Committed when the endpoint returns, before the response is sent; rolled back when it
    raises. The connection comes from a sync pool with the default pool's settings (its
    application_name ends in ":sync"), waited for in the event loop, not in a thread: a
    burst larger than the threadpool cannot deadlock it. No connection within DBPOOL_TIMEOUT
    answers 503 with Retry-After. ``conn.commit()`` and ``conn.rollback()`` are refused.
    """
    try:
        pool = sync_pool_of(request)
    except PoolClosed as exc:  # a request that arrives while the app shuts down: 503
        reraise(database_of(request), exc, None)
    session = _SyncTransaction(pool)
    return await _before_response(request).enter_async_context(session)


class _SyncTransaction:
    """The request's transaction on a sync connection; its blocking calls run in threads."""

    __slots__ = ("conn", "pool")

    def __init__(self, pool: SyncPool) -> None:
        self.pool = pool
        self.conn: SyncConnection | None = None

    async def __aenter__(self) -> SyncConnection:
        try:
            conn = await self.pool.acquire()
        except Exception as exc:  # no connection in time, queue full, pool closed: 503
            reraise(self.pool, exc, None)
        conn.owned = True
        self.conn = conn
        if self.pool.settings.read_only_gets:  # connections read only by default: READ WRITE
            conn.read_only = False  # no round trip: it goes into the BEGIN
        return conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        conn, pool = self.conn, self.pool
        assert conn is not None, "exit without enter"
        # Nothing of the request runs on the connection from now on: a def endpoint still
        # running in its thread (its request was cancelled) gets ConnectionReleased.
        release(conn.claim)
        conn.claim = None
        with CancelScope(shield=True), core():  # a cancelled request still rolls back
            try:
                if conn.lock.locked():  # the endpoint's thread is inside a statement: stop it
                    await pool.run(_cancel_statement, conn)
                failure = await pool.run(_finish, pool, conn, exc)
            finally:
                pool.release_slot()
        if exc is not None:
            answer_for(pool, exc, conn)  # 503/504 for pool and connection errors
            return
        if failure is not None:
            _answer_commit_failure(pool, conn, failure)


def _finish(
    pool: SyncPool, conn: SyncConnection, exc: BaseException | None
) -> "psycopg.Error | CommitFailed | None":
    """End the request's transaction and give the connection back (in a worker thread).

    Returns why the commit failed, if it did, for the event loop to answer."""
    conn.owned = False
    outer, conn.outer = conn.outer, None
    try:
        if exc is not None:
            _rollback(conn, outer, exc)
            return None
        return _commit(conn, outer)
    finally:
        pool.give_back(conn)


def _cancel_statement(conn: SyncConnection) -> None:
    try:
        conn.cancel_safe(timeout=_CANCEL_TIMEOUT)
    except Exception as exc:  # the rollback that follows waits for the statement instead
        logger.warning("could not cancel a cancelled request's statement: %s", exc)


class _LostBeforeCommit(psycopg.OperationalError):
    """Nothing was committed: the connection was gone when the endpoint returned."""


def _commit(
    conn: SyncConnection, outer: Transaction | None
) -> "psycopg.Error | CommitFailed | None":
    if conn.broken or conn.closed:
        # Lost under an endpoint that swallowed the error: nothing was committed. 503, not 200.
        return _LostBeforeCommit("the connection was lost before the commit")
    status = conn.pgconn.transaction_status
    if status == _INERROR:
        failed = caught_sql_error()
        _rollback(conn, outer, failed)
        return failed
    try:
        if outer is not None:
            outer.__exit__(None, None, None)
        elif status != _IDLE:  # IDLE: no statement ran, nothing to commit
            conn.commit()
    except psycopg.Error as exc:
        return exc
    return None


def _rollback(conn: SyncConnection, outer: Transaction | None, exc: BaseException) -> None:
    try:
        if outer is not None:
            outer.__exit__(type(exc), exc, exc.__traceback__)
        elif not (conn.closed or conn.broken) and conn.pgconn.transaction_status != _IDLE:
            conn.rollback()
    except Exception as error:  # the error that got us here matters more
        logger.warning("rollback failed: %s: %s", type(error).__name__, error)


def _answer_commit_failure(
    pool: SyncPool, conn: SyncConnection, failure: "psycopg.Error | CommitFailed"
) -> None:
    """Raise the answer for a failed commit: 503 (lost before), 500 (refused or unknown)."""
    if isinstance(failure, CommitFailed):
        raise failure
    if isinstance(failure, _LostBeforeCommit):
        reraise(pool, failure, conn)  # 503, as get_conn
    raise commit_failure(pool, failure, conn) from failure


# The dependencies of fastapi_dbpool.dependencies that hand out async connections or pools.
_ASYNC_PREFIXES = ("get_conn", "get_read_conn", "get_stream_conn", "get_pool")


def check_routes(app: object) -> None:
    """Refuse, at startup, a ``def`` endpoint that takes an async connection (get_conn & co):
    FastAPI runs it in a thread, where every query would be a coroutine that never runs."""
    overrides = getattr(app, "dependency_overrides", {}) or {}
    for route in getattr(app, "routes", ()):
        dependant = getattr(route, "dependant", None)
        endpoint = getattr(route, "endpoint", None)
        if dependant is None or not _is_plain_def(endpoint):
            continue
        for sub in dependant.dependencies:
            call = sub.call
            if sub.name is None or call in overrides or not _hands_out_async(call):
                continue
            methods = ",".join(sorted(getattr(route, "methods", None) or ()))
            raise UsageError(
                f"route {methods} {getattr(route, 'path', '?')}: the def endpoint "
                f"{getattr(endpoint, '__qualname__', endpoint)!r} takes {sub.name!r} from "
                f"{call.__name__}, an async connection, but FastAPI runs a def endpoint in a "
                "worker thread where its queries would never run. Take SyncConnDep "
                "(fastapi_dbpool.get_sync_conn) instead, or make the endpoint async def"
            )


def check_sync_setup(app: object, settings: PoolSettings) -> None:
    """Refuse, at startup, routes on get_sync_conn when the pool is set up by coroutines
    (hooks, an async password provider) that its sync pool could not run."""
    refused = async_setup_refused(settings)
    if refused is None:
        return
    for route in getattr(app, "routes", ()):
        if _depends_on_sync(getattr(route, "dependant", None)):
            path = getattr(route, "path", "?")
            raise UsageError(f"route {path} takes SyncConnDep, but {refused}")


def _depends_on_sync(dependant: Any) -> bool:
    return dependant is not None and any(
        sub.call is get_sync_conn or _depends_on_sync(sub)
        for sub in getattr(dependant, "dependencies", ())
    )


def _is_plain_def(endpoint: Any) -> bool:
    function = inspect.unwrap(endpoint) if callable(endpoint) else None
    return (inspect.isfunction(function) or inspect.ismethod(function)) and not (
        inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
    )


def _hands_out_async(call: Any) -> bool:
    return getattr(call, "__module__", None) == dependencies.__name__ and str(
        getattr(call, "__name__", "")
    ).startswith(_ASYNC_PREFIXES)


SyncConnDep = Annotated[psycopg.Connection[Any], Depends(get_sync_conn)]
