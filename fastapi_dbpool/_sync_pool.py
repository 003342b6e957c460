"""SyncPool: the psycopg ConnectionPool behind get_sync_conn, a mirror of an app's async pool.

Built from the async pool's own arguments (conninfo, kwargs, sizes, timeouts), so both connect
alike; its application_name ends in ":sync" and its stats name is the pool's name plus
":sync". It is opened by the first request that asks for it and closed with the app's pools.

A request waits for its connection in the event loop (a gate of max_size), never in a worker
thread: a burst of ``def`` requests larger than the threadpool (40 tokens) and the pool cannot
fill the threadpool with threads that wait for connections while the requests holding the
connections wait for a thread. The few blocking calls of a checkout (getconn, COMMIT,
putconn) run in worker threads of the pool's own, at most max_size at once.
"""

import asyncio
import inspect
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import monotonic
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import psycopg
from psycopg import Transaction
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout, TooManyRequests
from typing_extensions import Self, TypeVarTuple, Unpack  # typing has them from 3.11

from fastapi_dbpool import _deadline
from fastapi_dbpool._healing import closed_by_server
from fastapi_dbpool._hooks import ConnectionSetupError, accepted_password, failure_message
from fastapi_dbpool._owner import Claim, check, claim, core
from fastapi_dbpool._restore import Baseline
from fastapi_dbpool._root import UsageError
from fastapi_dbpool.connection import TransactionRefused
from fastapi_dbpool.database import DatabasePool, pool_limits
from fastapi_dbpool.errors import UNAVAILABLE_REASONS, UnavailableReason
from fastapi_dbpool.settings import PoolSettings

Args = TypeVarTuple("Args")
Result = TypeVar("Result")

logger = logging.getLogger("fastapi_dbpool")

_IDLE = TransactionStatus.IDLE
_SUFFIX = ":sync"

_REFUSED = (
    "conn.{what}() inside get_sync_conn's request transaction: the request commits when the "
    "endpoint returns and rolls back when it raises. Use conn.transaction() for a savepoint"
)


class SyncConnection(psycopg.Connection[Any]):
    """The connection class of the sync pool: PooledConnection's rules, for sync code.

    While a request's transaction owns it, commit(), rollback() and autocommit = True are
    refused, and a first ``conn.transaction()`` block is a savepoint of the request's
    transaction rather than a transaction of its own."""

    owned = False  # a get_sync_conn request holds it
    outer: Transaction | None = None  # the request's transaction, when begun by a block
    claim: Claim | None = None  # the borrowing request's hold (_owner)

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        conn = super().connect(conninfo, **kwargs)
        if not isinstance(conn, cls):  # a wrapper of connect() made psycopg's own class
            conn.__class__ = cls
        return conn

    def wait(
        self, gen: PQGen[Result], interval: float = 0.1, timeout: float | None = None
    ) -> Result:
        check(self)  # under the connection's lock: nothing after the request gave it back
        return super().wait(gen, interval, timeout)

    def commit(self) -> None:
        if self.owned:
            raise TransactionRefused(_REFUSED.format(what="commit"))
        super().commit()

    def rollback(self) -> None:
        if self.owned:
            raise TransactionRefused(_REFUSED.format(what="rollback"))
        super().rollback()

    def set_autocommit(self, value: bool) -> None:
        if value and self.owned:
            raise TransactionRefused(_REFUSED.format(what="set_autocommit"))
        super().set_autocommit(value)

    @contextmanager
    def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> Iterator[Transaction]:
        first = self.owned and self.outer is None and self.pgconn.transaction_status == _IDLE
        if not first:
            with super().transaction(savepoint_name, force_rollback) as tx:
                yield tx
            return
        outer = Transaction(self)
        outer.__enter__()  # BEGIN the request's transaction
        self.outer = outer
        if savepoint_name is not None or force_rollback:
            with super().transaction(savepoint_name, force_rollback) as tx:
                yield tx
            return
        # Nothing ran before this block: it is the request's transaction itself (no savepoint,
        # no extra round trip). Its rollback is the whole transaction's, which held only it.
        try:
            yield outer
        except BaseException as exc:
            self.outer = None
            if not outer.__exit__(type(exc), exc, exc.__traceback__):
                raise


class SyncPool:
    """A ConnectionPool mirroring database's pool, for get_sync_conn; open() on first use."""

    def __init__(self, database: DatabasePool) -> None:
        settings = database.settings
        source = database.pool
        self.database = database
        self.settings = settings  # read by errors.translate, as a DatabasePool's
        self.name = f"{settings.name}{_SUFFIX}"
        self.unavailable: Counter[UnavailableReason] = Counter(
            dict.fromkeys(UNAVAILABLE_REASONS, 0)
        )
        self.cut: weakref.WeakSet[Any] = weakref.WeakSet()  # cut past DBPOOL_DEADLINE
        self._lent: dict[SyncConnection, float] = {}  # lent now, and since when
        self._deadline: asyncio.Task[None] | None = None
        self.waiting = 0  # requests waiting at the gate
        self._gate = anyio.Semaphore(source.max_size)
        self._threads = anyio.CapacityLimiter(source.max_size)
        self._baselines: weakref.WeakKeyDictionary[Any, Baseline] = weakref.WeakKeyDictionary()
        conninfo, kwargs = source.conninfo, source.kwargs
        provider = settings.password_provider
        refused = async_setup_refused(settings)
        if refused is not None:
            raise UsageError(refused)
        if not isinstance(conninfo, str) or not isinstance(kwargs, dict | None):
            raise UsageError(
                f"pool {settings.name!r} computes its connection arguments with a callable, "
                "which the sync pool of get_sync_conn does not run: use async def endpoints"
            )
        kwargs = dict(kwargs or {})
        base = kwargs.get("application_name") or conninfo_to_dict(conninfo).get(
            "application_name", settings.application_name
        )
        self.application_name = f"{str(base)[: 63 - len(_SUFFIX)]}{_SUFFIX}"
        kwargs["application_name"] = self.application_name
        self.pool: ConnectionPool[SyncConnection] = ConnectionPool(
            conninfo,
            # A sync password provider runs for every new connection (psycopg-pool calls it).
            kwargs=kwargs if provider is None else _with_password(kwargs, database, provider),
            # The gate above caps the queue (DBPOOL_MAX_WAITING); the pool must not cap it again
            # among the max_size requests the gate lets through.
            **{**pool_limits(settings), "max_waiting": 0},
            name=self.name,
            open=False,
            connection_class=SyncConnection,
            configure=self._configure,
            reset=_reset_session if settings.reset_session else None,
            check=None if settings.check == "never" else self._check,
        )

    def __repr__(self) -> str:
        return f"<SyncPool {self.name!r} {'closed' if self.pool.closed else 'open'}>"

    def redact(self, text: str) -> str:
        return self.database.redact(text)

    def count_unavailable(self, reason: UnavailableReason) -> None:
        self.unavailable[reason] += 1

    def open(self) -> None:
        """Start the pool's workers; connections (min_size) are made in the background. Called
        in the event loop, which runs the DBPOOL_DEADLINE sweep of this pool too."""
        self.pool.open(wait=False)
        settings = self.settings
        self._deadline = asyncio.get_running_loop().create_task(
            _deadline.enforce(
                self.name,
                settings.env_var("deadline"),
                settings.effective_deadline,
                self._lent,
                self.cut,
            )
        )
        logger.info(
            "pool %r opened on first use by a def endpoint (min_size=%d, max_size=%d)",
            self.name,
            self.pool.min_size,
            self.pool.max_size,
        )

    async def close(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        await anyio.to_thread.run_sync(self.pool.close, self.database.settings.close_timeout)
        logger.info("pool %r closed", self.name)

    async def acquire(self) -> SyncConnection:
        """A connection, waited for in the event loop; raises psycopg-pool's errors."""
        timeout = self.pool.timeout
        started = monotonic()
        if self._gate.value == 0 and 0 < self.settings.max_waiting <= self.waiting:
            raise TooManyRequests(
                f"the pool {self.name!r} has already {self.waiting} requests waiting"
            )
        self.waiting += 1
        try:
            with anyio.fail_after(timeout):
                await self._gate.acquire()
        except TimeoutError:
            raise PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec") from None
        finally:
            self.waiting -= 1
        left = max(0.05, timeout - (monotonic() - started))
        handover = _Handover(self.pool)
        try:  # a slot is ours: a connection is idle or being made
            conn = await anyio.to_thread.run_sync(
                handover.getconn, left, limiter=self._threads
            )
        except BaseException:
            # Cancelled (or failed) while the thread waits for getconn: whatever connection it
            # gets now goes straight back to the pool, and the slot is free again.
            handover.abandon()
            self._gate.release()
            raise
        conn.claim = claim(conn)  # in the request's context, which its threads inherit
        self._lent[conn] = monotonic()
        return conn

    async def run(self, work: Callable[[Unpack[Args]], Result], *args: Unpack[Args]) -> Result:
        """Run a blocking call on a connection this pool lent, off the event loop."""
        return await anyio.to_thread.run_sync(work, *args, limiter=self._threads)

    def give_back(self, conn: SyncConnection) -> None:
        """Put back what the borrower changed, then return the connection (blocking)."""
        self._lent.pop(conn, None)
        try:
            if not conn.closed and not conn.broken:
                if conn.pgconn.transaction_status != _IDLE:
                    conn.rollback()
                baseline = self._baselines.get(conn)
                if baseline is not None:
                    baseline.restore_sync(conn)
                    baseline.idle_since = monotonic()
        except Exception as exc:  # a connection that cannot be reset is not lent again
            logger.warning(
                "closing a connection that could not be reset: %s",
                self.redact(f"{type(exc).__name__}: {exc}"),
            )
            conn.close()
        finally:
            self.pool.putconn(conn)

    def release_slot(self) -> None:
        self._gate.release()

    def stats(self) -> dict[str, int]:
        """psycopg-pool's counters, requests waiting at the gate included."""
        stats = self.pool.get_stats()
        stats["requests_waiting"] = stats.get("requests_waiting", 0) + self.waiting
        return stats

    def _configure(self, conn: SyncConnection) -> None:
        self._baselines[conn] = Baseline(conn)

    def _check(self, conn: SyncConnection) -> None:
        if closed_by_server(conn):  # the server hung up while it sat idle: no round trip
            raise psycopg.OperationalError("the server closed the connection while it was idle")
        baseline = self._baselines.get(conn)
        idle = monotonic() - baseline.idle_since if baseline is not None else float("inf")
        if self.settings.check == "always" or idle >= self.settings.check_idle_after:
            ConnectionPool.check_connection(conn)


class _Handover:
    """A getconn run in a worker thread for a request that may be cancelled meanwhile: the
    connection is then put back by whichever side sees the cancellation last."""

    __slots__ = ("_abandoned", "_conn", "_lock", "_pool")

    def __init__(self, pool: ConnectionPool[SyncConnection]) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._abandoned = False
        self._conn: SyncConnection | None = None

    def getconn(self, timeout: float) -> SyncConnection:
        with core():  # the pool's check at checkout is its own work, whatever the thread held
            conn = self._pool.getconn(timeout)
        with self._lock:
            if not self._abandoned:
                self._conn = conn
                return conn
        self._pool.putconn(conn)  # the request is gone: never lend it to nobody
        raise anyio.get_cancelled_exc_class()()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            conn, self._conn = self._conn, None
        if conn is not None:  # the thread got it, the request never did: back to the pool
            threading.Thread(target=self._pool.putconn, args=(conn,), daemon=True).start()


def async_setup_refused(settings: PoolSettings) -> str | None:
    """Why the sync pool cannot mirror a pool set up by coroutines (its hooks, an async
    password provider), or None if it can."""
    hooks = [field for field in ("configure", "reset") if getattr(settings, field) is not None]
    provider = settings.password_provider
    if provider is not None and inspect.iscoroutinefunction(provider):
        hooks.append("password_provider")
    if not hooks:
        return None
    named = " and ".join(settings.env_var(field) for field in hooks)
    return (
        f"pool {settings.name!r} sets up its connections with {named} (coroutines), which the "
        "sync pool of get_sync_conn cannot run: use async def endpoints with get_conn for "
        "this pool, or a sync password provider"
    )


def _with_password(
    kwargs: dict[str, Any], database: DatabasePool, provider: Callable[[], Any]
) -> Callable[[], dict[str, Any]]:
    def resolve() -> dict[str, Any]:
        try:
            password = provider()
            if inspect.isawaitable(password):
                close = getattr(password, "close", None)
                if close is not None:
                    close()  # never awaited: say so here, not in a RuntimeWarning
                raise TypeError("it returned an awaitable: the sync pool needs a sync provider")
            return {**kwargs, "password": accepted_password(database, password)}
        except Exception as exc:
            message = failure_message(database, "password_provider", provider, exc)
            raise ConnectionSetupError(message) from None

    return resolve


def _reset_session(conn: SyncConnection) -> None:
    """DBPOOL_RESET_SESSION: undo session-level SETs before the connection is lent again."""
    conn.autocommit = True
    conn.execute("RESET ALL")
    conn.autocommit = False
