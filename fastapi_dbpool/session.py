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
from collections.abc import MutableMapping
from typing import Any, NoReturn

import psycopg
from anyio import CancelScope
from psycopg import AsyncConnection, AsyncTransaction
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from fastapi_dbpool._owner import core, release
from fastapi_dbpool._root import UsageError
from fastapi_dbpool.connection import PooledConnection, switch_autocommit
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.errors import (
    CommitFailed,
    CommitOutcomeUnknown,
    answer_for,
    caught_sql_error,
    commit_failure,
    reraise,
)
from fastapi_dbpool.options import NO_OPTIONS, SessionContext, TransactionOptions

__all__ = [
    "Autocommit",
    "Lease",
    "Leases",
    "Transaction",
    "autocommit",
    "transaction",
]

logger = logging.getLogger("fastapi_dbpool")

Conn = AsyncConnection[Any]
_IDLE = TransactionStatus.IDLE
_INERROR = TransactionStatus.INERROR
_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


class Lease:
    """One connection lent by one pool to one request, shared by the request's sessions."""

    __slots__ = (
        "conn",
        "database",
        "leases",
        "options",
        "outer",
        "token",
        "transactional",
        "users",
    )

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
        self.transactional = False  # a transaction() session of the request holds it
        self.options = False  # ... with options or a context of its own: nobody may join it
        self.outer: AsyncTransaction | None = None  # the request's, when begun explicitly

    async def begin(self) -> AsyncTransaction | None:
        """Begin the request's transaction now (a conn.transaction() block comes first): the
        transaction, or None if one is under way already."""
        if self.outer is not None or self.conn.pgconn.transaction_status != _IDLE:
            return None  # begun already (two blocks opened at once, or a statement ran first)
        tx = AsyncTransaction(self.conn)
        await tx.__aenter__()
        self.outer = tx
        return tx

    async def abort(self, tx: AsyncTransaction, exc: BaseException) -> bool:
        """A first block that was the request's transaction raised: roll the whole of it back
        (nothing preceded the block). True if psycopg swallows exc (``psycopg.Rollback``)."""
        if self.outer is tx:
            self.outer = None
        return bool(await tx.__aexit__(type(exc), exc, exc.__traceback__))

    def end_claim(self) -> None:
        """From now on, nothing of the request may run on the connection (_owner)."""
        release(getattr(self.conn, "claim", None))


Leases = MutableMapping[DatabasePool, Lease]


async def lend(
    database: DatabasePool,
    route: object = "",
    timeout: float | None = None,  # noqa: ASYNC109 - psycopg-pool's getconn timeout
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


def transaction(
    database: DatabasePool,
    route: object = "",
    timeout: float | None = None,
    *,
    leases: Leases | None = None,
    options: TransactionOptions | None = None,
    context: SessionContext | None = None,
) -> "Transaction":
    """A pooled connection in a transaction: commit when the block ends, roll back if it raises.

    For lifespans and background work too: ``async with transaction(app.state.dbpool) as
    conn``. ``conn.transaction()`` inside is a savepoint of it, even as the first statement;
    ``conn.commit()`` and ``conn.rollback()`` inside are refused. options: isolation, read
    only, timeouts for this transaction only (see fastapi_dbpool.options).
    """
    session = Transaction(database, route, timeout, leases)
    session.options = options
    session.context = context
    return session


def autocommit(
    database: DatabasePool,
    route: object = "",
    timeout: float | None = None,
    *,
    leases: Leases | None = None,
    lease: Lease | None = None,
) -> "Autocommit":
    """A pooled connection in autocommit, for reads: each statement commits on its own.

    Inside a request that already holds a transaction on this pool, the same connection, in
    that transaction (reads see the request's own writes). lease: one lend() already got.
    """
    return Autocommit(database, route, timeout, leases, lease)


class _Session:
    """One use of a lease: entered as an async context manager, its exit shielded from
    cancellation (a cancelled request still rolls back and gives its connection back)."""

    __slots__ = ("database", "lease", "leases", "route", "timeout")

    def __init__(
        self,
        database: DatabasePool,
        route: object,
        timeout: float | None,
        leases: Leases | None,
        lease: Lease | None = None,
    ) -> None:
        self.database = database
        self.route = route
        self.timeout = timeout
        self.leases = leases
        self.lease = lease

    async def _join(self) -> Lease:
        lease = self.lease
        if lease is None:
            try:
                lease = await lend(self.database, self.route, self.timeout, self.leases)
            except Exception as exc:  # a pool that cannot lend in time: 503
                reraise(self.database, exc, None)
            self.lease = lease
        lease.users += 1
        return lease

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        lease = self.lease
        assert lease is not None, "exit without enter"
        with CancelScope(shield=True), core():
            if lease.users == 1:  # the request is done with it: nothing of it runs any more
                lease.end_claim()
            try:
                await self._end(lease, exc)
            finally:
                await _leave(lease)

    async def _end(self, lease: Lease, exc: BaseException | None) -> None:
        raise NotImplementedError

    async def _give_up(self, lease: Lease, exc: BaseException) -> NoReturn:
        """__aenter__ failed after joining: leave the lease, answer for exc (503 and such)."""
        with CancelScope(shield=True), core():
            if lease.users == 1:
                lease.end_claim()
            await _leave(lease)
        if isinstance(exc, Exception):
            reraise(self.database, exc, lease.conn)
        raise exc


_JOINED_WITH_OPTIONS = (
    "this request already runs a transaction on this pool (another get_conn dependency came "
    "first), so get_conn_with's options cannot apply: give the route one transaction "
    "dependency per pool"
)
_JOINING_OPTIONS = (
    "this request already runs a transaction with options (get_conn_with, or a context) on "
    "this pool, which another transaction dependency may not join: it would run under options "
    "it did not ask for. Give the route one transaction dependency per pool"
)


class Transaction(_Session):
    """The session of transaction(): it owns the request's transaction unless another
    session of the request already does."""

    __slots__ = ("context", "joined", "options", "reads_after")

    joined: bool
    reads_after: bool
    options: TransactionOptions | None
    context: SessionContext | None

    async def __aenter__(self) -> Conn:
        lease = await self._join()
        conn = lease.conn
        self.joined = lease.transactional  # another session of this request runs it
        if self.joined:
            if self.options or self.context:
                await self._give_up(lease, UsageError(_JOINED_WITH_OPTIONS))
            if lease.options:
                await self._give_up(lease, UsageError(_JOINING_OPTIONS))
            return conn
        # A read session of this request lent it first (a Starlette read block around this
        # one): back to autocommit when this transaction ends, for the reads that follow.
        self.reads_after = reads_after = conn.autocommit
        try:
            if reads_after:
                await switch_autocommit(conn, False)
            if self.database.settings.read_only_gets and not (
                self.options and self.options.read_only is not None
            ):  # the pool's connections are read only by default: BEGIN READ WRITE
                await conn.set_read_only(False)
            if self.options or self.context:  # before BEGIN: psycopg puts them in it
                await (self.options or NO_OPTIONS).apply(conn, self.context)
                if self.context is not None:
                    await _refuse_bypass(self.database, conn, self.context)
            if isinstance(conn, PooledConnection):
                conn.owner = lease  # BEGIN comes with the first statement, or the first block
            else:
                await lease.begin()  # a plain AsyncConnection cannot defer it: BEGIN now
        except BaseException as exc:
            await self._give_up(lease, exc)
        lease.transactional = True
        lease.options = bool(self.options or self.context)
        return conn

    async def _end(self, lease: Lease, exc: BaseException | None) -> None:
        if self.joined:
            return
        _disown(lease)
        try:
            if exc is not None:
                await _rollback(lease, exc)
                answer_for(self.database, exc, lease.conn)
                return
            await _commit(self.database, lease)
        finally:
            if self.reads_after and lease.users > 1:
                await _back_to_autocommit(lease.conn)


class Autocommit(_Session):
    """The session of autocommit(): reads, on the request's connection of the pool."""

    __slots__ = ()

    async def __aenter__(self) -> Conn:
        lease = await self._join()
        conn = lease.conn
        if lease.users == 1 and not lease.transactional and not conn.autocommit:
            try:
                await switch_autocommit(conn, True)
            except BaseException as exc:
                await self._give_up(lease, exc)
        return conn

    async def _end(self, lease: Lease, exc: BaseException | None) -> None:
        conn = lease.conn
        if exc is not None:
            if not lease.transactional:
                await _rollback_quietly(conn)
            answer_for(self.database, exc, conn)
            return
        if not lease.transactional and conn.pgconn.transaction_status in _OPEN:
            # An explicit BEGIN on an autocommit connection, never committed: its writes would
            # vanish with a 200. Roll back and say so.
            logger.warning(
                "the endpoint left a transaction open on an autocommit (read) connection; "
                "rolled back, answering 500: use get_conn for transactions"
            )
            await _rollback_quietly(conn)
            raise CommitFailed()


async def _refuse_bypass(database: DatabasePool, conn: Conn, context: SessionContext) -> None:
    """Row-level policies do nothing for a superuser or a BYPASSRLS role: refuse to serve a
    request context as one. Called once the context is applied, it asks for current_user,
    the role that takes effect (whether the context set it as role=... or as the 'role'
    setting); remembered per pool by what decides that role (SessionContext.role_key)."""
    key = context.role_key()
    known = database.bypasses_rls.get(key)
    if known is None:
        cur = conn.cursor(row_factory=tuple_row)  # whatever DBPOOL_ROW_FACTORY says
        await cur.execute(
            "SELECT current_user, rolsuper OR rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        )
        row = await cur.fetchone()
        name = str(row[0]) if row else "?"
        known = database.bypasses_rls[key] = (name, bool(row and row[1]))
    name, bypasses = known
    if bypasses:
        raise UsageError(
            f"pool {database.settings.name!r} applies a row-level security context as role "
            f"{name!r}, which bypasses row-level security (superuser or BYPASSRLS): every "
            "policy would let everything through. Connect as a role without BYPASSRLS, or set "
            "SessionContext(role=...) to one"
        )


async def _back_to_autocommit(conn: Conn) -> None:
    if conn.closed or conn.broken:
        return
    await _rollback_quietly(conn)  # a failed commit leaves nothing open: this is a no-op then
    await conn.set_autocommit(True)


def _disown(lease: Lease) -> None:
    lease.transactional = False
    lease.options = False
    conn = lease.conn
    if isinstance(conn, PooledConnection):
        conn.owner = None


async def _leave(lease: Lease) -> None:
    """One session of the request is done; the last one gives the connection back."""
    lease.users -= 1
    if lease.users:
        return
    leases = lease.leases
    if leases is not None and leases.get(lease.database) is lease:
        del leases[lease.database]
    conn = lease.conn
    database = lease.database
    try:
        if not conn.closed and not conn.broken:
            if conn.pgconn.transaction_status != _IDLE:
                await _rollback_quietly(conn)
            await database.restore(conn)
    except Exception as exc:  # never spoil the answer: a connection that cannot be reset goes
        logger.warning(
            "closing a connection that could not be reset: %s",
            database.redact(f"{type(exc).__name__}: {exc}"),
        )
        await conn.close()
    finally:  # whatever happened, the connection goes back to its pool
        await database.release(conn, lease.token)


async def _commit(database: DatabasePool, lease: Lease) -> None:
    conn = lease.conn
    if conn.broken or conn.closed:
        # Lost under an endpoint that swallowed the error: nothing was committed. 503, not 200.
        lost = psycopg.OperationalError("the connection was lost before the commit")
        await _rollback(lease, lost)
        reraise(database, lost, conn)
    status = conn.pgconn.transaction_status
    if status == _INERROR:
        failed = caught_sql_error()
        await _rollback(lease, failed)
        raise failed
    tx, lease.outer = lease.outer, None
    try:  # also when the connection is still busy (commit waits for its lock)
        if tx is not None:
            await tx.__aexit__(None, None, None)
        elif status != _IDLE:  # IDLE: no statement ran, nothing to commit
            await conn.commit()
    except psycopg.Error as exc:
        answer = commit_failure(database, exc, conn)
        if isinstance(answer, CommitOutcomeUnknown):
            database.healer.lost_connection()
        raise answer from exc


async def _rollback(lease: Lease, exc: BaseException) -> None:
    """End the request's transaction because of exc: roll it back."""
    tx, lease.outer = lease.outer, None
    if tx is None:
        await _rollback_quietly(lease.conn)
        return
    try:
        await tx.__aexit__(type(exc), exc, exc.__traceback__)
    except Exception as error:  # the error that got us here matters more
        logger.warning("rollback failed: %s: %s", type(error).__name__, error)


async def _rollback_quietly(conn: Conn) -> None:
    """Roll back what the endpoint left open, as psycopg's connection context does."""
    if conn.closed or conn.broken or conn.pgconn.transaction_status == _IDLE:
        return
    try:
        await conn.rollback()
    except Exception as exc:  # the error that got us here matters more
        logger.warning("rollback failed: %s: %s", type(exc).__name__, exc)
