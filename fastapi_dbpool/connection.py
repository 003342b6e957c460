"""PooledConnection: psycopg's AsyncConnection, aware of the request transaction holding it.

While ``get_conn`` (``session.transaction``) holds a connection, the request owns its
transaction. psycopg starts that transaction lazily, with the first statement, so a handler
that opens a ``conn.transaction()`` block first would get a block of its own, committed when
the block ends. Here the first such block begins the request's transaction first, so that the
block is a savepoint inside it; and commit(), rollback() and set_autocommit(True), which would
end the request's transaction early, are refused with a message that says what to do.

Outside a request's transaction (``get_pool``, ``get_read_conn``, background work) it behaves
exactly as AsyncConnection.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import psycopg
from psycopg import AsyncConnection, AsyncTransaction
from psycopg.pq import TransactionStatus

_REFUSED = (
    "conn.{what}() inside get_conn's request transaction: the request commits when the endpoint "
    "returns and rolls back when it raises. Use conn.transaction() for a savepoint, or "
    "get_pool to manage transactions yourself"
)


class TransactionRefused(psycopg.ProgrammingError):
    """conn.commit(), rollback() or set_autocommit(True) inside a request's transaction."""


class Owner(Protocol):
    """The request transaction that holds a connection (session.Lease)."""

    async def begin(self) -> None:
        """Begin the request's transaction now, ahead of its first statement."""


class PooledConnection(AsyncConnection[Any]):
    """The connection class of every pool of this package."""

    owner: Owner | None = None  # set while a request's transaction holds the connection

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
        if owner is not None and self.pgconn.transaction_status == TransactionStatus.IDLE:
            await owner.begin()
        async with super().transaction(savepoint_name, force_rollback) as tx:
            yield tx
