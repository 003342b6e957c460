"""Variant 3: psycopg's AsyncConnectionPool used inside the endpoint, the floor of our overhead.

pool.connection() runs the connection's own context: a transaction committed on exit, as
get_conn does, with psycopg-pool's defaults otherwise.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from psycopg_pool import AsyncConnectionPool

from bench.apps._common import POOL_MIN, POOL_SIZE, QUERY, url, user


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncConnectionPool(url(), min_size=POOL_MIN, max_size=POOL_SIZE) as pool:
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/users/{user_id}")
async def get_user(user_id: int, request: Request) -> dict[str, Any]:
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        cur = await conn.execute(QUERY, (user_id,))
        return user(await cur.fetchone())
