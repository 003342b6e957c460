"""DatabasePool: one AsyncConnectionPool's lifecycle, from its settings to its close.

It builds the pool, opens it (startup checks in ``startup``), lends and takes back
connections (timed by ``timings``, restored to how the pool configured them), and runs the
pool's background work (``healing``, ``health``, ``summary``) until it closes.
"""

import asyncio
import logging
import threading
import weakref
from collections import Counter, deque
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from time import monotonic
from typing import Any

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from fastapi_dbpool import _deadline, _hooks, _startup
from fastapi_dbpool._healing import Healer
from fastapi_dbpool._owner import claim, core, in_core, release
from fastapi_dbpool._redact import describe_conninfo, mask_conninfo, redact
from fastapi_dbpool._restore import Baseline
from fastapi_dbpool._summary import log_summaries
from fastapi_dbpool._timings import Recorder
from fastapi_dbpool.connection import PooledConnection
from fastapi_dbpool.errors import UNAVAILABLE_REASONS, UnavailableReason
from fastapi_dbpool.options import RoleKey
from fastapi_dbpool.settings import PoolSettings

__all__ = [
    "DatabasePool",
]

logger = logging.getLogger("fastapi_dbpool")

Conn = AsyncConnection[Any]

# Seconds close() waits for the server to acknowledge cancel requests.
_CANCEL_TIMEOUT = 2.0


class DatabasePool:
    """An AsyncConnectionPool built from PoolSettings, opened, lent out and closed.

    The lifespan creates one per pool of the app and stores the default one on
    ``app.state.dbpool``; endpoints reach it through the dependencies (``get_conn``,
    ``get_pool`` for the psycopg pool itself).
    """

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.unavailable: Counter[UnavailableReason] = Counter(
            dict.fromkeys(UNAVAILABLE_REASONS, 0)
        )
        self.down = False  # a replica that could not serve: reads skip it until a ping works
        self.fallbacks = 0  # reads this replica could not take, sent elsewhere
        self.connect_errors_seen = 0  # for read routing (health.connect_failing)
        self.health_errors_seen = 0  # for the health check
        # Row-level security: (current_user, bypasses) by what decides the role a context
        # runs as (SessionContext.role_key), checked once each.
        self.bypasses_rls: dict[RoleKey, tuple[str, bool]] = {}
        self.recorder = (
            Recorder(settings.name, settings.leak_threshold, settings.env_var("leak_threshold"))
            if settings.metrics
            else None
        )
        # Replaced, never changed in place: the sync pool's threads add a provider's answers
        # while the event loop redacts with the set it read.
        self._secrets: frozenset[str] = frozenset(settings.secrets())
        self._provided_lock = threading.Lock()
        self._provided: deque[str] = deque()
        self._tasks: set[asyncio.Future[Any]] = set()
        # Connections out of the pool now, and since when: for the deadline and close().
        self._lent: dict[Conn, float] = {}
        self.cut: weakref.WeakSet[Conn] = weakref.WeakSet()  # cut past the deadline
        # What each connection was when the pool made it, and since when it is idle.
        self._baselines: weakref.WeakKeyDictionary[Conn, Baseline] = weakref.WeakKeyDictionary()
        self.healer = Healer(self)
        self.pool: AsyncConnectionPool[Conn] = ClaimingPool(
            settings.conninfo(),
            kwargs=settings.connect_kwargs(),
            **pool_limits(settings),
            name=settings.name,
            open=False,
            # The app's password provider and configure hook run inside the connection
            # attempt (_hooks.py); without them, PooledConnection as it is.
            connection_class=_hooks.connection_class(self),
            configure=self._configure,
            # No reset callback by default: with one, psycopg-pool returns every connection
            # through a worker task (about 10 us more per checkout, measured); release()
            # restores the connection's attributes inline instead.
            reset=_hooks.reset_hook(self),
            check=None if settings.check == "never" else self.healer.check,
            reconnect_failed=self.healer.reconnect_failed,
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

    def keep_secret(self, secret: str, most: int) -> None:
        """Redact secret from now on (a password provider's answer), keeping the most recent."""
        with self._provided_lock:
            if secret in self._secrets:
                return
            self._provided.append(secret)
            dropped = {self._provided.popleft()} if len(self._provided) > most else set()
            self._secrets = (self._secrets | {secret}) - dropped

    async def open(self) -> None:
        """Open the pool; fail fast with a clear reason unless settings.fail_fast is off."""
        if self.recorder is not None:
            self.spawn(self.recorder.watch())
        if self.settings.log_stats_interval is not None:
            self.spawn(log_summaries(self, self.settings.log_stats_interval))
        settings = self.settings
        self.spawn(
            _deadline.enforce(
                settings.name,
                settings.env_var("deadline"),
                settings.effective_deadline,
                self._lent,
                self.cut,
            )
        )
        try:
            await _startup.open_pool(self)
        except BaseException:
            self.cancel_tasks()
            raise

    async def close(self) -> None:
        """Close the pool and every idle connection; connections in use close on return.

        A statement still running on a lent connection is cancelled on the server first (a
        forced shutdown must not leave a backend working for a process that is gone)."""
        self.cancel_tasks()
        await self._cancel_running()
        await self.pool.close(timeout=self.settings.close_timeout)
        logger.info("pool %r closed", self.settings.name)

    async def _cancel_running(self) -> None:
        running = [
            conn
            for conn in self._lent
            if not conn.closed and conn.pgconn.transaction_status == TransactionStatus.ACTIVE
        ]
        if not running:
            return
        logger.warning(
            "pool %r closing: cancelling %d statement(s) still running on the server",
            self.settings.name,
            len(running),
        )
        cancels = [
            asyncio.ensure_future(conn.cancel_safe(timeout=_CANCEL_TIMEOUT)) for conn in running
        ]
        done, pending = await asyncio.wait(cancels, timeout=_CANCEL_TIMEOUT)
        for cancel in pending:
            cancel.cancel()
        for cancel in done:
            _quiet(cancel)

    async def acquire(self, route: object = "", timeout: float | None = None) -> tuple[Conn, int]:
        """A connection from the pool (getconn), timed; give it back with release()."""
        recorder = self.recorder
        if recorder is None:
            conn = await self.pool.getconn(timeout)
            self._lent[conn] = monotonic()
            return conn, 0
        started = recorder.wait_started()
        try:
            conn = await self.pool.getconn(timeout)
        except BaseException:
            recorder.not_acquired(started)
            raise
        self._lent[conn] = monotonic()
        return conn, recorder.acquired(started, route)

    async def release(self, conn: Conn, token: int) -> None:
        """Give back a connection acquire() lent (putconn), and record how long it was held."""
        try:
            self._lent.pop(conn, None)
            baseline = self._baselines.get(conn)
            if baseline is not None:
                baseline.idle_since = monotonic()
            if token and self.recorder is not None:
                self.recorder.released(token)
        finally:  # bookkeeping must never keep a connection from its pool
            await self.pool.putconn(conn)

    async def restore(self, conn: Conn) -> None:
        """Put back what a borrower changed on the connection object (row_factory,
        autocommit, adapters, ...): no round trip. The connection must be idle."""
        baseline = self._baselines.get(conn)
        if baseline is not None:
            await baseline.restore(conn)

    @asynccontextmanager
    async def checkout(
        self, route: object = "", timeout: float | None = None
    ) -> AsyncIterator[Conn]:
        """pool.connection(), timed: the wait for the connection and how long route holds it.

        Like pool.connection(), the block's transaction commits when it ends and rolls back
        when it raises."""
        conn, token = await self.acquire(route, timeout)
        try:
            async with conn:
                yield conn
        finally:
            try:
                if not conn.closed:
                    await self.restore(conn)
            finally:
                await self.release(conn, token)

    def idle_for(self, conn: Conn) -> float:
        """Seconds since the connection was last given back (or made)."""
        baseline = self._baselines.get(conn)
        return monotonic() - (baseline.idle_since if baseline is not None else 0.0)

    def count_unavailable(self, reason: UnavailableReason) -> None:
        """Count one 503 answer, and check the idle connections if the cause was a lost one."""
        self.unavailable[reason] += 1
        if reason == "connection_lost":
            self.healer.lost_connection()

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run work in the background until it ends or the pool closes."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def adopt(self, task: "asyncio.Future[Any]") -> None:
        """Keep a task that was given up on until it ends (cancelled at close like the rest)."""
        self._tasks.add(task)
        task.add_done_callback(_quiet)
        task.add_done_callback(self._tasks.discard)

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _configure(self, conn: Conn) -> None:
        self._baselines[conn] = Baseline(conn)


class ClaimingPool(AsyncConnectionPool[Conn]):
    """psycopg-pool's AsyncConnectionPool whose checkouts claim the connection for their
    borrower until putconn (``_owner``): also for apps that use the pool directly."""

    async def getconn(self, timeout: float | None = None) -> Conn:
        with core():  # the pool's check at checkout is its own work, whatever this context held
            conn = await super().getconn(timeout)
        if isinstance(conn, PooledConnection):
            conn.claim = claim(conn)
        return conn

    async def putconn(self, conn: Conn) -> None:
        if isinstance(conn, PooledConnection):
            release(conn.claim)
            conn.claim = None
        if in_core():  # the session's exit: its own work already
            await super().putconn(conn)
            return
        with core():  # the pool's reset (a rollback) is the package's work, not the borrower's
            await super().putconn(conn)


def pool_limits(settings: PoolSettings) -> dict[str, Any]:
    """psycopg-pool's sizes, timeouts and workers from the settings (async and sync pools)."""
    return {
        "min_size": settings.min_size,
        "max_size": settings.max_size,
        "max_waiting": settings.max_waiting,
        "timeout": settings.timeout,
        "max_idle": settings.max_idle,
        "max_lifetime": settings.max_lifetime,
        "reconnect_timeout": settings.reconnect_timeout,
        "num_workers": settings.num_workers,
    }


def _quiet(task: "asyncio.Future[Any]") -> None:
    """Retrieve a background task's outcome, so that asyncio does not log it as never read."""
    if not task.cancelled():
        task.exception()
