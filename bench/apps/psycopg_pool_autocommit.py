"""Variant 9: psycopg's AsyncConnectionPool with autocommit connections, inside the endpoint:
the floor of the read path (ReadConnDep, variant 8). One round trip per query, no
BEGIN/COMMIT, and prepared statements off as in psycopg's autocommit examples."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from psycopg_pool import AsyncConnectionPool

from bench.apps._common import POOL_MIN, POOL_SIZE, QUERY, url, user


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncConnectionPool(
        url(),
        min_size=POOL_MIN,
        max_size=POOL_SIZE,
        kwargs={"autocommit": True, "prepare_threshold": 0},
    ) as pool:
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/users/{user_id}")
async def get_user(user_id: int, request: Request) -> dict[str, Any]:
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        cur = await conn.execute(QUERY, (user_id,))
        return user(await cur.fetchone())
