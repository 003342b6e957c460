"""The per-request session: one connection per pool and request, one transaction, one answer.

``transaction()`` is what ``get_conn`` runs: a connection in a transaction that commits when
the block ends and rolls back when it raises, whatever the block does with it (a
``conn.transaction()`` block as its first statement is a savepoint of the request's
transaction, not a commit of its own). ``autocommit()`` is the read path: no BEGIN/COMMIT.

Within one request (``leases``), every session on the same pool shares one connection, so a
request never waits on the pool for a second connection while it holds the first. Pool and
connection errors come out as HTTP answers (503, 504, 500 for a failed commit); every other
error passes unchanged, after the rollback. This module knows nothing of replicas.
"""

import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn

import psycopg
from fastapi import HTTPException
from psycopg import AsyncConnection, AsyncTransaction
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.errors import (
    CommitFailed,
    DatabaseUnavailable,
    QueryTimeout,
    unavailable_reason,
)

logger = logging.getLogger("fastapi_dbpool")

Conn = AsyncConnection[Any]
_IDLE = TransactionStatus.IDLE
_INERROR = TransactionStatus.INERROR
_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


class Lease:
    """One connection lent by one pool to one request, shared by the request's sessions."""

    __slots__ = ("conn", "database", "leases", "token", "transaction", "users")

    def __init__(
        self,
        database: DatabasePool,
        conn: Conn,
        token: int,
        leases: "Leases | None",
    ) -> None:
        self.database = database
        self.conn = conn
        self.token = token
        self.leases = leases
        self.users = 0
        self.transaction: AsyncTransaction | None = None  # the request's, once one began


Leases = MutableMapping[DatabasePool, Lease]


async def lend(
    database: DatabasePool,
    route: object = "",
    timeout: float | None = None,
    leases: Leases | None = None,
) -> Lease:
    """The request's connection of this pool: the one it holds already, else a new checkout.

    Raises the pool's own errors (PoolTimeout, TooManyRequests, PoolClosed): callers decide
    whether that is a 503 or a reason to try another pool."""
    if leases is not None:
        lease = leases.get(database)
        if lease is not None:
            return lease
    conn, token = await database.acquire(route, timeout)
    lease = Lease(database, conn, token, leases)
    if leases is not None:
        leases[database] = lease
    return lease


async def lend_or_answer(
    database: DatabasePool,
    route: object = "",
    timeout: float | None = None,
    leases: Leases | None = None,
) -> Lease:
    """lend(), with a pool that cannot lend in time answered 503."""
    try:
        return await lend(database, route, timeout, leases)
    except Exception as exc:
        _reraise(database, exc, None)


def transaction(
    database: DatabasePool,
    route: object = "",
    timeout: float | None = None,
    *,
    leases: Leases | None = None,
) -> AbstractAsyncContextManager[Conn]:
    """A pooled connection in a transaction: commit when the block ends, roll back if it raises.

    For lifespans and background work too: ``async with transaction(app.state.dbpool) as
    conn``. Explicit ``conn.commit()``/``rollback()`` inside are refused by psycopg (the
    block owns the transaction); ``conn.transaction()`` inside is a savepoint.
    """
    return _transaction(database, route, timeout, leases, None)


def autocommit(
    database: DatabasePool,
    route: object = "",
    timeout: float | None = None,
    *,
    leases: Leases | None = None,
    lease: Lease | None = None,
) -> AbstractAsyncContextManager[Conn]:
    """A pooled connection in autocommit, for reads: each statement commits on its own.

    Inside a request that already holds a transaction on this pool, the same connection, in
    that transaction (reads see the request's own writes). lease: one lend() already got.
    """
    return _autocommit(database, route, timeout, leases, lease)


@asynccontextmanager
async def _transaction(
    database: DatabasePool,
    route: object,
    timeout: float | None,
    leases: Leases | None,
    lease: Lease | None,
) -> AsyncIterator[Conn]:
    if lease is None:
        lease = await lend_or_answer(database, route, timeout, leases)
    lease.users += 1
    conn = lease.conn
    try:
        if lease.transaction is not None:  # another session of this request runs it
            yield conn
            return
        tx = AsyncTransaction(conn)
        try:
            await tx.__aenter__()  # BEGIN now: a conn.transaction() block is a savepoint
        except Exception as exc:
            _reraise(database, exc, conn)
        lease.transaction = tx
        try:
            yield conn
        except BaseException as exc:
            lease.transaction = None
            await _rollback(tx, exc)
            _answer_for(database, exc, conn)
            raise
        lease.transaction = None
        await _commit(database, conn, tx)
    finally:
        await _leave(lease)


@asynccontextmanager
async def _autocommit(
    database: DatabasePool,
    route: object,
    timeout: float | None,
    leases: Leases | None,
    lease: Lease | None,
) -> AsyncIterator[Conn]:
    if lease is None:
        lease = await lend_or_answer(database, route, timeout, leases)
    lease.users += 1
    conn = lease.conn
    try:
        owns = lease.transaction is None and lease.users == 1
        if owns and not conn.autocommit:
            try:
                await conn.set_autocommit(True)
            except Exception as exc:
                _reraise(database, exc, conn)
        try:
            yield conn
        except BaseException as exc:
            if lease.transaction is None:
                await _rollback_quietly(conn)
            _answer_for(database, exc, conn)
            raise
        if lease.transaction is None and conn.pgconn.transaction_status in _OPEN:
            # An explicit BEGIN on an autocommit connection, never committed: its writes would
            # vanish with a 200. Roll back and say so.
            logger.warning(
                "the endpoint left a transaction open on an autocommit (read) connection; "
                "rolled back, answering 500: use get_conn for transactions"
            )
            await _rollback_quietly(conn)
            raise CommitFailed()
    finally:
        await _leave(lease)


async def _leave(lease: Lease) -> None:
    """One session of the request is done; the last one gives the connection back."""
    lease.users -= 1
    if lease.users:
        return
    if lease.leases is not None:
        lease.leases.pop(lease.database, None)
    conn = lease.conn
    try:
        if not conn.closed and not conn.broken:
            if conn.pgconn.transaction_status != _IDLE:
                await _rollback_quietly(conn)
            await lease.database.restore(conn)
    finally:  # whatever happened, the connection goes back to its pool
        await lease.database.release(conn, lease.token)


async def _commit(database: DatabasePool, conn: Conn, tx: AsyncTransaction) -> None:
    if conn.pgconn.transaction_status == _INERROR:
        # COMMIT of an aborted transaction silently rolls back: never answer 200 then.
        logger.warning(
            "the endpoint returned after an SQL error it caught, so nothing could be "
            "committed; answering 500 (use a savepoint, conn.transaction(), to recover)"
        )
        failed = CommitFailed()
        await _rollback(tx, failed)
        raise failed
    if conn.broken or conn.closed:
        # Lost under an endpoint that swallowed the error: psycopg's block would end quietly,
        # but nothing was committed. Answer 503, never 200.
        lost = psycopg.OperationalError("the connection was lost before the commit")
        await _rollback(tx, lost)
        _reraise(database, lost, conn)
    try:  # also when the connection is still busy (commit waits for its lock)
        await tx.__aexit__(None, None, None)
    except psycopg.Error as exc:
        translated = _translate(database, exc, conn)
        if translated is exc:
            logger.warning(
                "commit failed (%s, SQLSTATE %s); answering 500", type(exc).__name__, exc.sqlstate
            )
            translated = CommitFailed()
        raise translated from exc


async def _rollback(tx: AsyncTransaction, exc: BaseException) -> None:
    """Leave the request's transaction block with exc: psycopg rolls it back."""
    try:
        await tx.__aexit__(type(exc), exc, exc.__traceback__)
    except Exception as error:  # the error that got us here matters more
        logger.warning("rollback failed: %s: %s", type(error).__name__, error)


async def _rollback_quietly(conn: Conn) -> None:
    """Roll back what the endpoint left open, as psycopg's connection context does."""
    if conn.closed or conn.pgconn.transaction_status == _IDLE:
        return
    try:
        await conn.rollback()
    except Exception as exc:  # the error that got us here matters more
        logger.warning("rollback failed: %s: %s", type(exc).__name__, exc)


_FORBIDDEN = "forbidden within a Transaction context"


def _answer_for(database: DatabasePool, exc: BaseException, conn: Conn) -> None:
    """Raise the HTTP answer for exc if it is a pool or connection error of this session."""
    if not isinstance(exc, Exception) or isinstance(exc, HTTPException):
        return
    if isinstance(exc, psycopg.ProgrammingError) and _FORBIDDEN in str(exc):
        logger.warning(
            "the endpoint called conn.commit() or conn.rollback() on a get_conn connection: "
            "the request's transaction commits when the endpoint returns and rolls back when "
            "it raises; use conn.transaction() for a savepoint, or get_pool to manage "
            "transactions yourself (answering 500, rolled back)"
        )
        return
    # A lost connection is answered only by the session it belongs to (an endpoint with
    # connections from several pools sees every session's errors).
    if unavailable_reason(exc, conn) == "connection_lost" and not (conn.broken or conn.closed):
        return
    translated = _translate(database, exc, conn)
    if translated is not exc:
        raise translated from exc


def _reraise(database: DatabasePool, exc: Exception, conn: Conn | None) -> NoReturn:
    translated = _translate(database, exc, conn)
    if translated is exc:
        raise exc
    raise translated from exc


def _translate(database: DatabasePool, exc: Exception, conn: Conn | None) -> Exception:
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
