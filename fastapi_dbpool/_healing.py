"""Healer: keeps a pool's connections alive through hang-ups and outages.

Three pool callbacks: a check at checkout (a socket poll, then a round trip only for
connections idle longer than DBPOOL_CHECK_IDLE_AFTER), a background check of the idle
connections after one was found lost, and a reconnect loop when psycopg-pool gives up.
"""

import asyncio
import logging
import select
from collections.abc import Coroutine
from time import monotonic
from typing import Any, Protocol

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import ConnStatus
from psycopg_pool import AsyncConnectionPool

from fastapi_dbpool.settings import PoolSettings

logger = logging.getLogger("fastapi_dbpool")

Conn = AsyncConnection[Any]

# Checks of the whole pool after a lost connection, at most this often (seconds).
CHECK_INTERVAL = 1.0
# While the database is unreachable, the healer asks the pool to reconnect this often.
HEAL_INTERVAL = 1.0


class Healed(Protocol):
    """What the healer reads of its pool (a DatabasePool)."""

    @property
    def settings(self) -> PoolSettings: ...
    @property
    def pool(self) -> AsyncConnectionPool[Any]: ...
    def target(self) -> str: ...
    def redact(self, text: str) -> str: ...
    def idle_for(self, conn: Conn) -> float: ...
    def spawn(self, work: Coroutine[Any, Any, None]) -> "asyncio.Task[None]": ...


class Healer:
    """The checks and reconnects of one DatabasePool."""

    def __init__(self, database: Healed) -> None:
        self._database = database
        self._last_check = 0.0
        self._task: asyncio.Task[None] | None = None
        self.just_checked: Conn | None = None  # the last connection a round trip proved alive

    async def check(self, conn: Conn) -> None:
        """psycopg-pool's check callback: raise to have the connection discarded."""
        database = self._database
        self.just_checked = None  # set again below only by this checkout's own round trip
        if closed_by_server(conn):
            # The server ended it while it sat idle (a restart, a stopped replica): discard it
            # without a round trip; the pool hands out another one.
            self.lost_connection()
            raise psycopg.OperationalError("the server closed the connection while it was idle")
        settings = database.settings
        if settings.check == "always" or database.idle_for(conn) >= settings.check_idle_after:
            try:
                await AsyncConnectionPool.check_connection(conn)
                self.just_checked = conn
            except Exception:
                # Its idle siblings likely died with it (a restart, a network cut): check them
                # in the background rather than let each request find one.
                self.lost_connection()
                raise

    def lost_connection(self) -> None:
        """A connection died: check the idle ones in the background, so the next request
        gets a live one (at most once a second)."""
        now = monotonic()
        if now - self._last_check < CHECK_INTERVAL or self._database.pool.closed:
            return
        self._last_check = now
        self._database.spawn(self.check_pool())

    async def check_pool(self) -> None:
        database = self._database
        try:
            await database.pool.check()
        except Exception as exc:  # the pool may be closing; nothing to heal then
            logger.debug("pool check failed: %s", database.redact(str(exc)))

    async def reconnect_failed(self, pool: AsyncConnectionPool[Conn]) -> None:
        """psycopg gives up on a connection after reconnect_timeout and never replaces it by
        itself (psycopg #370, #1315): top the pool up again, however long the outage lasts."""
        if self._task is not None and not self._task.done():
            return
        database = self._database
        settings = database.settings
        logger.error(
            "pool %r: cannot connect to %s (gave up after %s, %s s); "
            "reconnecting every %s s until it answers",
            settings.name,
            database.target(),
            settings.env_var("reconnect_timeout"),
            settings.reconnect_timeout,
            HEAL_INTERVAL,
        )
        self._task = database.spawn(self._heal())

    async def _heal(self) -> None:
        """Until the pool holds min_size connections again, ask it to grow every interval."""
        database = self._database
        started = monotonic()
        opened = _opened(database)
        while not database.pool.closed:
            await asyncio.sleep(HEAL_INTERVAL)
            # pool_size counts attempts still in progress: only a connection opened since the
            # outage began says the database answers again.
            if _opened(database) > opened:
                logger.warning(
                    "pool %r reconnected to %s after %.1f s",
                    database.settings.name,
                    database.target(),
                    monotonic() - started,
                )
                return
            await self.check_pool()


def _opened(database: Healed) -> int:
    """Connections the pool opened successfully so far (attempts less failures)."""
    stats = database.pool.get_stats()
    return int(stats.get("connections_num", 0)) - int(stats.get("connections_errors", 0))


def closed_by_server(conn: psycopg.BaseConnection[Any]) -> bool:
    """True if an idle connection's socket shows the server hung up (no round trip: a poll).

    An idle connection has nothing to read unless the server sent something on its own: a
    notification, or a termination message (FATAL) followed by the end of the stream."""
    pgconn = conn.pgconn
    try:
        fd = pgconn.socket
        for _ in range(3):  # the message, then the end of the stream, each one read
            if not _readable(fd):
                return pgconn.status == ConnStatus.BAD
            pgconn.consume_input()
            while notify := pgconn.notifies():  # hand them on, as psycopg does
                if pgconn.notify_handler:
                    pgconn.notify_handler(notify)
    except (OSError, ValueError, psycopg.OperationalError):
        return True
    return pgconn.status == ConnStatus.BAD


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # pragma: no cover - Windows
