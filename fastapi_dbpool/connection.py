"""PooledConnection: psycopg's AsyncConnection, aware of the request transaction holding it.

While ``get_conn`` (``session.transaction``) holds a connection, the request owns its
transaction. psycopg starts that transaction lazily, with the first statement, so a handler
that opens a ``conn.transaction()`` block first would get a block of its own, committed when
the block ends. Here such a block, when nothing ran before it, *is* the request's
transaction: its BEGIN is the request's, nothing is committed when it ends, and its rollback
(nothing preceded it) is the whole transaction's; later blocks are savepoints inside it.
commit(), rollback() and set_autocommit(True), which would end the request's transaction
early, are refused with a message that says what to do.

Outside a request's transaction (``get_pool``, ``get_read_conn``, background work) it behaves
as AsyncConnection, but for one rule that holds everywhere: nothing runs on it once its
borrower gave it back (``_owner``: every statement goes through ``wait``, which checks).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import AsyncConnection, AsyncTransaction
from psycopg.abc import PQGen
from psycopg.pq import TransactionStatus
from typing_extensions import Self  # typing has it from 3.11

from fastapi_dbpool._owner import Claim, check
from fastapi_dbpool._root import DBPoolError

__all__ = [
    "PooledConnection",
    "TransactionRefused",
]

RV = TypeVar("RV")

_REFUSED = (
    "conn.{what}() inside get_conn's request transaction: the request commits when the endpoint "
    "returns and rolls back when it raises. Use conn.transaction() for a savepoint, or "
    "get_pool to manage transactions yourself"
)


class TransactionRefused(DBPoolError, psycopg.ProgrammingError):
    """conn.commit(), rollback() or set_autocommit(True) inside a request's transaction."""


class Owner(Protocol):
    """The request transaction that holds a connection (session.Lease)."""

    async def begin(self) -> AsyncTransaction | None:
        """Begin the request's transaction now, ahead of its first statement; None if it is
        under way already."""

    async def abort(self, tx: AsyncTransaction, exc: BaseException) -> bool:
        """Roll back the request's transaction tx because a block raised exc; True if exc is
        swallowed (psycopg.Rollback)."""


async def switch_autocommit(conn: AsyncConnection[Any], value: bool) -> None:
    """The package's own autocommit switch at checkout and return, when nothing else can hold
    the connection: on an idle connection outside a pipeline, what psycopg's set_autocommit()
    does (its check passes, it sets the flag) without the lock and the wait loop around it
    (measured: 2 to 4 µs a switch, two switches per read request). Were the flag renamed in a
    later psycopg, the read-back would differ and psycopg's own setter would run."""
    if conn.pgconn.transaction_status == TransactionStatus.IDLE and conn._pipeline is None:
        conn._autocommit = value
        if conn.autocommit is value:
            return
    await AsyncConnection.set_autocommit(conn, value)


class PooledConnection(AsyncConnection[Any]):
    """The connection class of every pool of this package."""

    owner: Owner | None = None  # set while a request's transaction holds the connection
    claim: Claim | None = None  # the borrower's hold, set by the pool's getconn (_owner)

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        conn = await super().connect(conninfo, **kwargs)
        if not isinstance(conn, cls):
            # A wrapper of psycopg's connect() (OpenTelemetry's instrument()) made psycopg's
            # own class: without ours, every guarantee of this module would silently go.
            conn.__class__ = cls
        return conn

    async def wait(
        self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None
    ) -> RV:
        check(self)  # under the connection's lock: nothing after the borrower gave it back
        return await super().wait(gen, interval, timeout)

    async def commit(self) -> None:
        if self.owner is not None:
            raise TransactionRefused(_REFUSED.format(what="commit"))
        await super().commit()

    async def rollback(self) -> None:
        if self.owner is not None:
            raise TransactionRefused(_REFUSED.format(what="rollback"))
        await super().rollback()

    async def set_autocommit(self, value: bool) -> None:
        if value and self.owner is not None:
            raise TransactionRefused(_REFUSED.format(what="set_autocommit"))
        await super().set_autocommit(value)

    @asynccontextmanager
    async def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AsyncIterator[AsyncTransaction]:
        owner = self.owner
        if owner is None or self.pgconn.transaction_status != TransactionStatus.IDLE:
            async with super().transaction(savepoint_name, force_rollback) as tx:
                yield tx
            return
        outer = await owner.begin()
        if outer is None or savepoint_name is not None or force_rollback:
            async with super().transaction(savepoint_name, force_rollback) as tx:
                yield tx
            return
        # Nothing ran before this block: it is the request's transaction itself (no savepoint,
        # no extra round trip). Its rollback is the whole transaction's, which held only it.
        try:
            yield outer
        except BaseException as exc:
            if not await owner.abort(outer, exc):
                raise
