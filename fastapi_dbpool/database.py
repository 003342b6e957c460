"""DatabasePool: one AsyncConnectionPool with its settings, checks and counters."""

import asyncio
import logging
import os
import select
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from time import monotonic
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import ConnStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from fastapi_dbpool._redact import describe_conninfo, mask_conninfo, redact
from fastapi_dbpool.errors import (
    UNAVAILABLE_REASONS,
    PoolStartupError,
    UnavailableReason,
    unavailable_reason,
)
from fastapi_dbpool.settings import PoolSettings
from fastapi_dbpool.timings import Recorder

logger = logging.getLogger("fastapi_dbpool")

Conn = AsyncConnection[Any]

# Checks of the whole pool after a lost connection, at most this often (seconds).
_CHECK_INTERVAL = 1.0
_BUDGET_QUERY = """
    SELECT current_setting('max_connections')::int,
           current_setting('superuser_reserved_connections')::int
           + coalesce(current_setting('reserved_connections', true), '0')::int
"""
# While the database is unreachable, the healer asks the pool to reconnect this often.
_HEAL_INTERVAL = 1.0


class DatabasePool:
    """An AsyncConnectionPool built from PoolSettings, with startup, health and 503 bookkeeping.

    The lifespan creates one per app and stores it on ``app.state.dbpool``; endpoints reach
    it through ``get_pool`` (the psycopg pool) or the connection dependencies.
    """

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.unavailable: Counter[UnavailableReason] = Counter(
            dict.fromkeys(UNAVAILABLE_REASONS, 0)
        )
        self._secrets = settings.secrets()
        self._idle_since: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()
        self._last_check = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._healer: asyncio.Task[None] | None = None
        self.down = False  # a replica that could not serve: reads skip it until a ping works
        self.fallbacks = 0  # reads this replica could not take, sent elsewhere
        self._connect_errors_seen = 0
        self.recorder = (
            Recorder(settings.name, settings.leak_threshold) if settings.metrics else None
        )
        self.pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            settings.conninfo(),
            kwargs=settings.connect_kwargs(),
            min_size=settings.min_size,
            max_size=settings.max_size,
            max_waiting=settings.max_waiting,
            timeout=settings.timeout,
            max_idle=settings.max_idle,
            max_lifetime=settings.max_lifetime,
            reconnect_timeout=settings.reconnect_timeout,
            num_workers=settings.num_workers,
            name=settings.name,
            open=False,
            # No reset callback: with one, psycopg-pool returns every connection through a
            # worker task (about 10 us more per checkout, measured); checkout() marks it idle.
            configure=self._mark_idle,
            check=None if settings.check == "never" else self._check,
            reconnect_failed=self._reconnect_failed,
        )

    def __repr__(self) -> str:
        return f"<DatabasePool {self.settings.name!r} {self.target()} {self.state}>"

    @property
    def state(self) -> str:
        """'closed', or 'open' while the pool serves."""
        return "closed" if self.pool.closed else "open"

    def target(self) -> str:
        """Where the pool connects, for operators' logs: user@host:port/dbname, no password."""
        return describe_conninfo(self.settings.conninfo())

    def redact(self, text: str) -> str:
        """text with every form of this pool's password masked."""
        return redact(mask_conninfo(text), self._secrets)

    async def open(self) -> None:
        """Open the pool; fail fast with a clear reason unless settings.fail_fast is off."""
        if self.recorder is not None:
            self._start(self.recorder.watch())
        if self.settings.log_stats_interval is not None:
            self._start(self._log_summaries(self.settings.log_stats_interval))
        try:
            await self._open()
        except BaseException:
            self._cancel_tasks()
            raise

    async def _open(self) -> None:
        try:
            await self._probe()
        except PoolStartupError as exc:
            if self.settings.fail_fast and self.settings.is_required:
                raise
            why = "DBPOOL_FAIL_FAST=false" if self.settings.is_required else "not required"
            logger.warning("%s; starting degraded (%s)", exc, why)
            await self.pool.open(wait=False)
            if self.settings.replica:
                self.mark_down()
            return
        await self.pool.open(wait=False)
        try:
            await self.pool.wait(timeout=self.settings.open_timeout)
        except PoolTimeout:
            if self.settings.fail_fast and self.settings.is_required:
                await self.pool.close()
                raise PoolStartupError(
                    f"could not open DBPOOL_MIN_SIZE ({self.settings.min_size}) connections to "
                    f"{self.target()} within DBPOOL_OPEN_TIMEOUT ({self.settings.open_timeout} s): "
                    "raise DBPOOL_OPEN_TIMEOUT or lower DBPOOL_MIN_SIZE"
                ) from None
            await self.pool.open(wait=False)
            logger.warning("pool %r did not fill in time; starting degraded", self.settings.name)
            return
        logger.info(
            "pool %r opened to %s (min_size=%d, max_size=%d)",
            self.settings.name,
            self.target(),
            self.settings.min_size,
            self.settings.max_size,
        )
        await self._log_budget()

    async def _log_budget(self) -> None:
        """One line: this pool's share of the connections the server allows; a warning if
        every worker's pool together could exceed it."""
        try:
            async with self.pool.connection(timeout=self.settings.health_timeout) as conn:
                cur = await conn.execute(_BUDGET_QUERY)
                row = await cur.fetchone()
        except Exception as exc:  # a budget line is advice: never fail startup over it
            logger.debug("could not read max_connections: %s", self.redact(str(exc)))
            return
        if row is None:
            return
        max_connections, reserved = row
        allowed = max_connections - reserved
        workers_env = os.environ.get("WEB_CONCURRENCY", "")
        workers = int(workers_env) if workers_env.isdigit() and int(workers_env) > 0 else 1
        workers_note = (
            "WEB_CONCURRENCY" if workers_env.isdigit() else "1 assumed: set WEB_CONCURRENCY"
        )
        total = workers * self.settings.max_size
        line = (
            f"pool {self.settings.name!r}: DBPOOL_MAX_SIZE {self.settings.max_size} x "
            f"{workers} worker(s) ({workers_note}) = {total} of the {allowed} connections the "
            f"server allows (max_connections {max_connections} - {reserved} reserved)"
        )
        if self.settings.pgbouncer:
            logger.info("%s; behind PgBouncer the server sees PgBouncer's pool instead", line)
        elif total > allowed:
            logger.warning(
                "%s: too many; lower DBPOOL_MAX_SIZE or the worker count, or put PgBouncer "
                "in front (docs/deployment.md)",
                line,
            )
        else:
            logger.info(line)

    async def close(self) -> None:
        """Close the pool and every idle connection; connections in use close on return."""
        self._cancel_tasks()
        await self.pool.close(timeout=self.settings.close_timeout)
        logger.info("pool %r closed", self.settings.name)

    async def ping(self) -> str | None:
        """Run a trivial query within health_timeout; None if it worked, else why not."""
        timeout = self.settings.health_timeout
        try:
            await asyncio.wait_for(self._select_one(timeout), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            return "timeout"
        except Exception as exc:
            reason = unavailable_reason(exc)
            if reason == "connection_lost" or isinstance(exc, psycopg.Error):
                self.lost_connection()
                return "unreachable"
            return "timeout" if reason is None else reason
        return None

    async def _select_one(self, timeout: float) -> None:
        async with self.checkout("GET /health/db", timeout) as conn:
            await conn.execute("SELECT 1")

    @asynccontextmanager
    async def checkout(self, route: str = "", timeout: float | None = None) -> AsyncIterator[Conn]:
        """pool.connection(), timed: the wait for the connection and how long route holds it.

        Like pool.connection(), the block's transaction commits when it ends and rolls back
        when it raises."""
        conn, token = await self.acquire(route, timeout)
        try:
            async with conn:
                yield conn
        finally:
            await self.release(conn, token)

    async def acquire(self, route: str = "", timeout: float | None = None) -> tuple[Conn, int]:
        """A connection from the pool (getconn), timed; give it back with release()."""
        recorder = self.recorder
        if recorder is None:
            return await self.pool.getconn(timeout), 0
        started = recorder.wait_started()
        try:
            conn = await self.pool.getconn(timeout)
        except BaseException:
            recorder.not_acquired(started)
            raise
        return conn, recorder.acquired(started, route)

    async def release(self, conn: Conn, token: int) -> None:
        """Give back a connection acquire() lent (putconn), and record how long it was held."""
        try:
            self._idle_since[conn] = monotonic()
            if token and self.recorder is not None:
                self.recorder.released(token)
        finally:  # bookkeeping must never keep a connection from its pool
            await self.pool.putconn(conn)

    def busy(self) -> int:
        """Connections in use plus requests waiting: how loaded the pool is, for routing."""
        if self.recorder is not None:
            return self.recorder.in_use + self.recorder.waiting
        stats = self.pool.get_stats()
        return connections_in_use(stats) + stats.get("requests_waiting", 0)

    def connect_failing(self) -> bool:
        """Whether connection attempts failed since the last time this was asked."""
        errors = int(self.pool.get_stats().get("connections_errors", 0))
        failing = errors > self._connect_errors_seen
        self._connect_errors_seen = errors
        return failing

    def mark_down(self) -> None:
        """This replica could not serve: reads skip it until a background ping works again."""
        if self.down or self.pool.closed:
            return
        self.down = True
        logger.warning(
            "pool %r cannot serve (%s): reads go to the other pools until it answers again",
            self.settings.name,
            self.target(),
        )
        self._start(self._until_up())

    async def _until_up(self) -> None:
        while not self.pool.closed:
            await asyncio.sleep(_HEAL_INTERVAL / 2)
            if await self.ping() is None:
                self.down = False
                logger.warning("pool %r serves again (%s)", self.settings.name, self.target())
                return

    def count_unavailable(self, reason: UnavailableReason) -> None:
        """Count one 503 answer, and check the idle connections if the cause was a lost one."""
        self.unavailable[reason] += 1
        if reason == "connection_lost":
            self.lost_connection()

    def lost_connection(self) -> None:
        """A connection died: check the idle ones in the background, so the next request
        gets a live one (at most once a second)."""
        now = monotonic()
        if now - self._last_check < _CHECK_INTERVAL or self.pool.closed:
            return
        self._last_check = now
        self._start(self._check_pool())

    def summary(self) -> str:
        """One line: the pool's state now, for logs (no secrets, key=value)."""
        stats = self.pool.get_stats()
        size, free = stats.get("pool_size", 0), stats.get("pool_available", 0)
        parts = [
            f"pool={self.settings.name}",
            f"total={size}",
            f"free={free}",
            f"in_use={connections_in_use(stats)}",
            f"waiting={stats.get('requests_waiting', 0)}",
            f"unavailable={sum(self.unavailable.values())}",
        ]
        if self.recorder is not None:
            parts.append(f"wait_p95_ms={self.recorder.wait.window().p95}")
            parts.append(f"hold_p95_ms={self.recorder.hold.window().p95}")
        return " ".join(parts)

    async def _log_summaries(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            logger.info("%s", self.summary())

    def _start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run work in the background until it ends or the pool closes."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _check_pool(self) -> None:
        try:
            await self.pool.check()
        except Exception as exc:  # the pool may be closing; nothing to heal then
            logger.debug("pool check failed: %s", self.redact(str(exc)))

    async def _probe(self) -> None:
        try:
            conn = await AsyncConnection.connect(
                self.settings.conninfo(), **self.settings.connect_kwargs()
            )
        except psycopg.Error as exc:
            raise PoolStartupError(self._explain_connect_error(exc)) from None
        await conn.close()

    def _explain_connect_error(self, exc: psycopg.Error) -> str:
        message = self.redact(str(exc).strip())
        lowered = message.lower()
        if "password authentication failed" in lowered or "no password supplied" in lowered:
            hint = "check the password in DBPOOL_URL (or DATABASE_URL, DBPOOL_PASSWORD)"
        elif "database" in lowered and "does not exist" in lowered:
            hint = "create the database, or fix its name in DBPOOL_URL (or DATABASE_URL)"
        elif "role" in lowered and "does not exist" in lowered:
            hint = "create the role, or fix the user name in DBPOOL_URL (or DATABASE_URL)"
        else:
            hint = (
                "check that PostgreSQL is running and reachable at the host and port of "
                "DBPOOL_URL (or DATABASE_URL)"
            )
        return f"cannot connect to {self.target()}: {message} ({hint})"

    async def _mark_idle(self, conn: Conn) -> None:
        self._idle_since[conn] = monotonic()

    async def _check(self, conn: Conn) -> None:
        idle = monotonic() - self._idle_since.get(conn, 0.0)
        if _closed_by_server(conn):
            # The server ended it while it sat idle (a restart, a stopped replica): discard it
            # without a round trip; the pool hands out another one.
            self.lost_connection()
            raise psycopg.OperationalError("the server closed the connection while it was idle")
        if self.settings.check == "always" or idle >= self.settings.check_idle_after:
            try:
                await AsyncConnectionPool.check_connection(conn)
            except Exception:
                # Its idle siblings likely died with it (a restart, a network cut): check them
                # in the background rather than let each request find one.
                self.lost_connection()
                raise

    async def _reconnect_failed(self, pool: AsyncConnectionPool[Conn]) -> None:
        # psycopg gives up on a connection after reconnect_timeout and never replaces it by
        # itself (psycopg #370, #1315): the healer tops the pool up again, however long the
        # outage lasts.
        if self._healer is None or self._healer.done():
            logger.error(
                "pool %r: cannot connect to %s (gave up after DBPOOL_RECONNECT_TIMEOUT, %s s); "
                "reconnecting every %s s until it answers",
                self.settings.name,
                self.target(),
                self.settings.reconnect_timeout,
                _HEAL_INTERVAL,
            )
            self._healer = self._start(self._heal())

    async def _heal(self) -> None:
        """Until the pool holds min_size connections again, ask it to grow every interval."""
        started = monotonic()
        while not self.pool.closed:
            await asyncio.sleep(_HEAL_INTERVAL)
            if self.pool.get_stats().get("pool_size", 0) >= self.settings.min_size:
                logger.warning(
                    "pool %r reconnected to %s after %.1f s",
                    self.settings.name,
                    self.target(),
                    monotonic() - started,
                )
                return
            await self._check_pool()


def connections_in_use(stats: Mapping[str, int]) -> int:
    """Connections lent out now, from psycopg-pool's get_stats() (which omits zero keys)."""
    return max(0, stats.get("pool_size", 0) - stats.get("pool_available", 0))


def _closed_by_server(conn: Conn) -> bool:
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
