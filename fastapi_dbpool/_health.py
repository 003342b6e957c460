"""Whether a pool can serve: the health check's ping and its reasons, and a replica's
down/up state (a replica that cannot serve is skipped by reads until a ping answers)."""

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Literal, Protocol

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from fastapi_dbpool._healing import Healer
from fastapi_dbpool.errors import unavailable_reason
from fastapi_dbpool.settings import PoolSettings

Conn = AsyncConnection[Any]


class Watched(Protocol):
    """What the health check reads of a pool (a DatabasePool), and the replica state it
    keeps there (down, and the error counts it last saw)."""

    down: bool
    connect_errors_seen: int
    health_errors_seen: int

    @property
    def settings(self) -> PoolSettings: ...
    @property
    def pool(self) -> AsyncConnectionPool[Any]: ...
    @property
    def healer(self) -> Healer: ...
    def target(self) -> str: ...
    def redact(self, text: str) -> str: ...
    async def acquire(self, route: object = "", timeout: float | None = None) -> tuple[Conn, int]:
        ...
    async def release(self, conn: Conn, token: int) -> None: ...
    async def restore(self, conn: Conn) -> None: ...
    def adopt(self, task: "asyncio.Future[Any]") -> None: ...
    def spawn(self, work: Coroutine[Any, Any, None]) -> "asyncio.Task[None]": ...

logger = logging.getLogger("fastapi_dbpool")

HealthReason = Literal[
    "timeout",  # the check did not answer within DBPOOL_HEALTH_TIMEOUT
    "pool_timeout",  # every connection was busy for the whole DBPOOL_HEALTH_TIMEOUT
    "queue_full",  # DBPOOL_MAX_WAITING requests were already waiting
    "pool_closed",  # the pool is closed (shutting down)
    "unreachable",  # the server could not be reached, or the connection was lost
    "cannot_connect",  # new connections fail (server down, password refused, ...)
    "not_serving",  # a replica that reads skip until a ping answers
    "draining",  # /health/ready only: the app is shutting down (DBPOOL_DRAIN_SECONDS)
]
HEALTH_REASONS: tuple[HealthReason, ...] = (
    "timeout",
    "pool_timeout",
    "queue_full",
    "pool_closed",
    "unreachable",
    "cannot_connect",
    "not_serving",
    "draining",
)

_UP_INTERVAL = 0.5  # seconds between pings of a replica that is down


async def ping(database: Watched) -> HealthReason | None:
    """One round trip within DBPOOL_HEALTH_TIMEOUT; None if it worked, else why not.

    The answer never waits past the timeout: a check still running then (a frozen network
    path, a query whose cancellation does not come back) is cancelled in the background."""
    timeout = database.settings.health_timeout
    check = asyncio.ensure_future(_select_one(database, timeout))
    try:
        done, _ = await asyncio.wait({check}, timeout=timeout)
    except BaseException:
        check.cancel()
        database.adopt(check)
        raise
    if not done:
        check.cancel()
        database.adopt(check)  # let it end in the background, its connection with it
        return "timeout"
    if check.cancelled():
        return "timeout"
    exc = check.exception()
    if exc is None:
        return None
    reason = unavailable_reason(exc)
    if reason == "pool_timeout" and _connects_failed(database):
        return "cannot_connect"  # no connection to wait for: the pool cannot open one
    if reason in ("pool_timeout", "queue_full", "pool_closed"):
        return reason
    if reason == "connection_lost" or isinstance(exc, psycopg.Error):
        database.healer.lost_connection()
        return "unreachable"
    logger.warning(
        "health check of pool %r failed: %s",
        database.settings.name,
        database.redact(f"{type(exc).__name__}: {exc}"),
    )
    return "unreachable"


async def _select_one(database: Watched, timeout: float) -> None:
    """SELECT 1 in autocommit, no BEGIN/COMMIT around it; nothing more when the pool's
    checkout check has just made a round trip on this connection."""
    # The wait for a connection ends first, so a busy pool answers pool_timeout, not timeout.
    conn, token = await database.acquire("GET /health/db", timeout * 0.9)
    try:
        if database.healer.just_checked is conn:
            database.healer.just_checked = None
            return
        await conn.set_autocommit(True)
        await conn.execute("SELECT 1")
    finally:
        try:
            if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
                await database.restore(conn)
        finally:
            await database.release(conn, token)


def mark_down(database: Watched) -> None:
    """This replica could not serve: reads skip it until a background ping works again."""
    if database.down or database.pool.closed:
        return
    database.down = True
    logger.warning(
        "pool %r cannot serve (%s): reads go to the other pools until it answers again",
        database.settings.name,
        database.target(),
    )
    database.spawn(_until_up(database))


async def _until_up(database: Watched) -> None:
    while not database.pool.closed:
        await asyncio.sleep(_UP_INTERVAL)
        if await ping(database) is None:
            database.down = False
            logger.warning("pool %r serves again (%s)", database.settings.name, database.target())
            return


def _connects_failed(database: Watched) -> bool:
    """Whether connection attempts failed since the last health check asked."""
    errors = int(database.pool.get_stats().get("connections_errors", 0))
    failed = errors > database.health_errors_seen
    database.health_errors_seen = errors
    return failed


def connect_failing(database: Watched) -> bool:
    """Whether the pool's connection attempts failed since the last time this was asked."""
    errors = int(database.pool.get_stats().get("connections_errors", 0))
    failing = errors > database.connect_errors_seen
    database.connect_errors_seen = errors
    return failing
