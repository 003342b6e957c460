"""The DI floor: a plain coroutine dependency returning the raw psycopg pool, used inline.

What FastAPI's dependency injection alone costs over variant 3 (or, with
``BENCH_AUTOCOMMIT=1``, over variant 9's autocommit pool with prepare_threshold=0): the floor
``Depends(get_conn)`` and ``ReadConnDep`` are measured against in ``bench/cpu.py``.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from psycopg_pool import AsyncConnectionPool

from bench.apps._common import POOL_MIN, POOL_SIZE, QUERY, url, user

AUTOCOMMIT = os.environ.get("BENCH_AUTOCOMMIT") == "1"
KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0} if AUTOCOMMIT else {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncConnectionPool(
        url(), min_size=POOL_MIN, max_size=POOL_SIZE, kwargs=KWARGS
    ) as pool:
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan)


async def get_pool(request: Request) -> AsyncConnectionPool:
    return request.app.state.pool  # type: ignore[no-any-return]


@app.get("/users/{user_id}")
async def get_user(
    user_id: int, pool: Annotated[AsyncConnectionPool, Depends(get_pool)]
) -> dict[str, Any]:
    async with pool.connection() as conn:
        cur = await conn.execute(QUERY, (user_id,))
        return user(await cur.fetchone())
