"""The request shapes on raw psycopg-pool, ``async with pool.connection()`` in every endpoint
(a transaction committed on exit), as a raw app writes them."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from psycopg_pool import AsyncConnectionPool

from bench.apps._common import POOL_MIN, POOL_SIZE, QUERY, url, user
from bench.apps._shapes import PAGE, UPDATE, WRITE, ids, page


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncConnectionPool(url(), min_size=POOL_MIN, max_size=POOL_SIZE) as pool:
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan)


async def _one(request: Request, query: str, user_id: int) -> dict[str, Any]:
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        cur = await conn.execute(query, (user_id,))
        return user(await cur.fetchone())


@app.get("/users/{user_id}")
async def get_user(user_id: int, request: Request) -> dict[str, Any]:
    return await _one(request, QUERY, user_id)


@app.get("/read/{user_id}")
async def read_user(user_id: int, request: Request) -> dict[str, Any]:
    return await _one(request, QUERY, user_id)


@app.get("/write/{user_id}")
async def write_user(user_id: int, request: Request) -> dict[str, Any]:
    return await _one(request, WRITE, user_id)


@app.get("/reads20/{user_id}")
async def reads20(user_id: int, request: Request) -> dict[str, Any]:
    pool: AsyncConnectionPool = request.app.state.pool
    found = []
    async with pool.connection() as conn:
        for one in ids(user_id):
            cur = await conn.execute(QUERY, (one,))
            found.append(await cur.fetchone())
    return {"users": [user(row) for row in found]}


@app.get("/updates20/{user_id}")
async def updates20(user_id: int, request: Request) -> dict[str, int]:
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn, conn.cursor() as cur:
        await cur.executemany(UPDATE, [(one,) for one in ids(user_id)])
    return {"updated": 20}


@app.get("/page/{user_id}")
async def page12(user_id: int, request: Request) -> dict[str, Any]:
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        cur = await conn.execute(PAGE, (user_id,))
        return page(await cur.fetchall())
