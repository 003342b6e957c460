"""Without HTTP: the pool's cost (acquire + query loop, many tasks) and the connect cost."""

import asyncio
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import psycopg
import uvloop
from psycopg_pool import AsyncConnectionPool

from bench.apps._common import QUERY, QUERY_DOLLAR, params
from fastapi_dbpool import PoolSettings
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.session import autocommit, transaction

USERS = 10_000
Checkout = Callable[[], AbstractAsyncContextManager[Any]]
Query = Callable[[Any, int], Awaitable[Any]]


async def _psycopg_query(conn: Any, user_id: int) -> Any:
    cur = await conn.execute(QUERY, (user_id,))
    return await cur.fetchone()


async def _asyncpg_query(conn: Any, user_id: int) -> Any:
    return await conn.fetchrow(QUERY_DOLLAR, user_id)


@asynccontextmanager
async def _psycopg(url: str, size: int, **kwargs: Any) -> AsyncIterator[tuple[Checkout, Query]]:
    async with AsyncConnectionPool(url, min_size=size, max_size=size, kwargs=kwargs) as pool:
        await pool.wait()
        yield pool.connection, _psycopg_query


@asynccontextmanager
async def _dbpool(
    url: str, size: int, read: bool, metrics: bool = True
) -> AsyncIterator[tuple[Checkout, Query]]:
    database = DatabasePool(PoolSettings(url=url, min_size=size, max_size=size, metrics=metrics))
    await database.open()
    await database.pool.wait()
    try:
        enter = autocommit if read else transaction
        yield (lambda: enter(database)), _psycopg_query
    finally:
        await database.close()


@asynccontextmanager
async def _asyncpg(url: str, size: int) -> AsyncIterator[tuple[Checkout, Query]]:
    async with asyncpg.create_pool(min_size=size, max_size=size, **params(url)) as pool:
        yield pool.acquire, _asyncpg_query


POOLS: dict[str, tuple[str, Callable[[str, int], AbstractAsyncContextManager[Any]]]] = {
    "psycopg-pool": (
        "psycopg-pool, defaults (BEGIN/SELECT/COMMIT)",
        lambda url, n: _psycopg(url, n),
    ),
    "psycopg-pool-autocommit": (
        "psycopg-pool, autocommit=True",
        lambda url, n: _psycopg(url, n, autocommit=True),
    ),
    "psycopg-pool-autocommit-prepare0": (
        "psycopg-pool, autocommit=True, prepare_threshold=0",
        lambda url, n: _psycopg(url, n, autocommit=True, prepare_threshold=0),
    ),
    "dbpool-transaction": (
        "fastapi_dbpool transaction() (what get_conn runs)",
        lambda url, n: _dbpool(url, n, read=False),
    ),
    "dbpool-transaction-nometrics": (
        "fastapi_dbpool transaction(), DBPOOL_METRICS=false",
        lambda url, n: _dbpool(url, n, read=False, metrics=False),
    ),
    "dbpool-autocommit": (
        "fastapi_dbpool autocommit() (what get_read_conn runs)",
        lambda url, n: _dbpool(url, n, read=True),
    ),
    "asyncpg": ("asyncpg pool, defaults", lambda url, n: _asyncpg(url, n)),
}


async def _loop(url: str, key: str, size: int, tasks: int, seconds: float) -> float:
    async with POOLS[key][1](url, size) as (checkout, query):
        await ops_per_second(checkout, query, tasks, min(0.5, seconds / 4))  # warm-up
        return await ops_per_second(checkout, query, tasks, seconds)


async def ops_per_second(checkout: Checkout, query: Query, tasks: int, seconds: float) -> float:
    """tasks looping checkout + query (a random user) + release for seconds: operations/s."""
    stop = time.perf_counter() + seconds
    count = 0

    async def worker() -> None:
        nonlocal count
        rand = random.Random()
        while time.perf_counter() < stop:
            async with checkout() as conn:
                await query(conn, rand.randint(1, USERS))
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return count / (time.perf_counter() - started)


def pool_loop(url: str, size: int, tasks: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Operations per second of each pool, rounds interleaved, median of rounds."""
    per_round: dict[str, list[float]] = {key: [] for key in POOLS}
    for r in range(rounds):
        keys = list(POOLS)
        keys = keys[r % len(keys) :] + keys[: r % len(keys)]
        for key in keys:
            per_round[key].append(uvloop.run(_loop(url, key, size, tasks, seconds)))
    return {
        key: {"title": POOLS[key][0], "ops": statistics.median(v), "rounds": v}
        for key, v in per_round.items()
    }


async def _time_connects(url: str, count: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"psycopg": [], "psycopg-async": [], "asyncpg": []}
    for _ in range(count):
        started = time.perf_counter()
        conn = await asyncio.to_thread(psycopg.connect, url)
        times["psycopg"].append(time.perf_counter() - started)
        conn.close()
        started = time.perf_counter()
        aconn = await psycopg.AsyncConnection.connect(url)
        times["psycopg-async"].append(time.perf_counter() - started)
        await aconn.close()
        started = time.perf_counter()
        pconn = await asyncpg.connect(**params(url))
        times["asyncpg"].append(time.perf_counter() - started)
        await pconn.close()
    return times


def connect_cost(url: str, count: int) -> dict[str, Any]:
    """Median and p90 of many connects (TCP + scram-sha-256 + backend start), in ms."""
    times = uvloop.run(_time_connects(url, count))
    out: dict[str, Any] = {}
    for key, values in times.items():
        ms = sorted(v * 1000 for v in values)
        out[key] = {
            "median_ms": statistics.median(ms),
            "p90_ms": ms[int(len(ms) * 0.9) - 1] if len(ms) >= 10 else ms[-1],
            "count": len(ms),
        }
    return out
