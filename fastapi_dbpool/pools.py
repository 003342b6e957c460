"""Databases: the app's pools by name, opened and closed together, and where reads go."""

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection

from fastapi_dbpool._drain import Drain
from fastapi_dbpool._health import connect_failing, mark_down
from fastapi_dbpool._summary import connections_in_use
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.errors import unavailable_reason
from fastapi_dbpool.session import Autocommit, Lease, Leases, lend
from fastapi_dbpool.settings import PoolSettings, SettingsError

__all__ = [
    "Databases",
]

if TYPE_CHECKING:
    from fastapi_dbpool._sync_pool import SyncPool

logger = logging.getLogger("fastapi_dbpool")


class Databases:
    """Every pool of an app: the default one (get_conn), then the named ones (get_conn_for).

    Reads (get_read_conn) go to the pools marked replica, least busy first, and to the
    default pool when none can serve in time.
    """

    def __init__(self, pools: list[DatabasePool]) -> None:
        if not pools:
            raise ValueError("Databases needs at least the default pool")
        self.default = pools[0]
        self._by_name = {pool.settings.name: pool for pool in pools}
        self.replicas = [pool for pool in pools if pool.settings.replica]
        self._turn = 0
        # Whether a route also writes through the default pool, by id(route) (see get_read_conn).
        self.route_writes: dict[int, tuple[object, bool]] = {}
        self.drain = Drain()  # readiness: off from the first SIGTERM (DBPOOL_DRAIN_SECONDS)
        self.sync: dict[str, SyncPool] = {}  # get_sync_conn's pools, by name, once opened

    @classmethod
    def build(cls, default: PoolSettings, named: list[PoolSettings] | None = None) -> "Databases":
        """The pools of these settings, the default one first; names must differ."""
        settings = [default, *(named or [])]
        upper = [item.name.upper() for item in settings]
        duplicates = sorted({item.name for item in settings if upper.count(item.name.upper()) > 1})
        if duplicates:
            raise SettingsError(
                f"two pools are named {', '.join(map(repr, duplicates))}: give each pool its "
                "own name (DBPOOL_NAME, DBPOOL_<NAME>_NAME)"
            )
        for item in named or []:
            prefix = f"{item.name.upper()}_"
            clash = next(
                (other.name for other in named or [] if other.name.upper().startswith(prefix)), None
            )
            if clash is not None:
                raise SettingsError(
                    f"pools {item.name!r} and {clash!r} would share variables "
                    f"(DBPOOL_{prefix}...): rename one of them"
                )
        if default.replica:
            raise SettingsError(
                "DBPOOL_REPLICA=true on the default pool: the default pool is the primary that "
                "reads fall back to; declare replicas as named pools (DBPOOL_POOLS=replica, "
                "DBPOOL_REPLICA_URL=..., DBPOOL_REPLICA_REPLICA=true)"
            )
        return cls([DatabasePool(item) for item in settings])

    def __iter__(self) -> Iterator[DatabasePool]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"<Databases {list(self._by_name)}>"

    def get(self, name: str) -> DatabasePool:
        """The pool called name; a clear error naming the pools there are otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            raise LookupError(
                f"no pool named {name!r}; this app's pools are {list(self._by_name)}: declare "
                f"it with DBPOOL_POOLS={name} and DBPOOL_{name.upper()}_URL, or in "
                "create_pool_lifespan(pools=...)"
            ) from None

    def read_order(self) -> list[DatabasePool]:
        """The replicas that can serve now, least busy first; ties take turns."""
        serving = [pool for pool in self.replicas if not pool.down and not pool.pool.closed]
        if len(serving) > 1:
            self._turn = (self._turn + 1) % len(serving)
            serving = serving[self._turn :] + serving[: self._turn]
            serving.sort(key=_busy)  # stable: the turn breaks ties
        return serving

    def read(
        self, route: object = "", leases: Leases | None = None, primary: bool = False
    ) -> "Read":
        """A connection for reads, in autocommit: from the least busy replica that lends one
        within its DBPOOL_<NAME>_FALLBACK_TIMEOUT, else from the default pool.

        The default pool when the app has no replica, when the request already holds a
        connection of the default pool, or with primary (the route writes there too): one
        connection per request, and reads that see the request's own writes."""
        return Read(self, route, leases, primary)

    async def open(self) -> None:
        """Open every pool at once; if a required one fails, close the others and raise."""
        try:
            results = await asyncio.gather(
                *(pool.open() for pool in self._by_name.values()), return_exceptions=True
            )
        except BaseException:  # startup itself cancelled: leave nothing open behind
            await self.close(quiet=True)
            raise
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            for other in failures[1:]:
                logger.error("another pool failed to open too: %s", other)
            await self.close(quiet=True)
            raise failures[0]

    async def close(self, quiet: bool = False) -> None:
        """Close every pool; a failure to close one does not keep the others open."""
        closing: list[DatabasePool | SyncPool] = [*self._by_name.values(), *self.sync.values()]
        results = await asyncio.gather(*(pool.close() for pool in closing), return_exceptions=True)
        for pool, result in zip(closing, results, strict=True):
            if isinstance(result, Exception) and not quiet:
                logger.error(
                    "pool %r did not close cleanly: %s",
                    pool.settings.name,
                    pool.redact(str(result)),
                )


class Read:
    """The session of Databases.read(): picks the pool, then is an Autocommit session on it."""

    __slots__ = ("_databases", "_leases", "_primary", "_route", "_session")

    def __init__(
        self, databases: Databases, route: object, leases: Leases | None, primary: bool
    ) -> None:
        self._databases = databases
        self._route = route
        self._leases = leases
        self._primary = primary
        self._session: Autocommit | None = None

    async def __aenter__(self) -> AsyncConnection[Any]:
        databases, route, leases = self._databases, self._route, self._leases
        default = databases.default
        if databases.replicas and not self._primary and (leases is None or default not in leases):
            for replica in databases.read_order():
                lease = await _try_lend(replica, route, leases)
                if lease is not None:
                    self._session = Autocommit(replica, route, None, None, lease)
                    return await self._session.__aenter__()
                # else: the next replica, then the default pool
        self._session = Autocommit(default, route, None, leases)
        return await self._session.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        assert self._session is not None, "exit without enter"
        await self._session.__aexit__(exc_type, exc, tb)


def _busy(database: DatabasePool) -> int:
    """Connections in use plus requests waiting: how loaded a pool is, for routing."""
    recorder = database.recorder
    if recorder is not None:
        return recorder.in_use + recorder.waiting
    stats = database.pool.get_stats()
    return connections_in_use(stats) + stats.get("requests_waiting", 0)


async def _try_lend(replica: DatabasePool, route: object, leases: Leases | None) -> Lease | None:
    """A connection of the replica within its fallback timeout, or None (counted as a
    fallback; a replica that cannot connect, rather than a busy one, is marked down)."""
    try:
        return await lend(replica, route, replica.settings.fallback_timeout, leases)
    except Exception as exc:
        reason = unavailable_reason(exc)
        if reason is None:
            raise
        replica.fallbacks += 1
        # Busy is not down: only a replica that cannot connect is skipped from now on.
        if reason not in ("pool_timeout", "queue_full") or connect_failing(replica):
            mark_down(replica)
        return None
