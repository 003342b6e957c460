"""The request shapes on asyncpg's pool with its defaults: reads in autocommit, writes in
``async with conn.transaction()``."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from fastapi import FastAPI, Request

from bench.apps._common import POOL_MIN, POOL_SIZE, QUERY_DOLLAR, params, user
from bench.apps._shapes import PAGE_DOLLAR, UPDATE_DOLLAR, WRITE_DOLLAR, ids, page


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with asyncpg.create_pool(min_size=POOL_MIN, max_size=POOL_SIZE, **params()) as pool:
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/users/{user_id}")
async def get_user(user_id: int, request: Request) -> dict[str, Any]:
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn:
        return user(await conn.fetchrow(QUERY_DOLLAR, user_id))


@app.get("/read/{user_id}")
async def read_user(user_id: int, request: Request) -> dict[str, Any]:
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn:
        return user(await conn.fetchrow(QUERY_DOLLAR, user_id))


@app.get("/write/{user_id}")
async def write_user(user_id: int, request: Request) -> dict[str, Any]:
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn, conn.transaction():
        return user(await conn.fetchrow(WRITE_DOLLAR, user_id))


@app.get("/reads20/{user_id}")
async def reads20(user_id: int, request: Request) -> dict[str, Any]:
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn:
        found = [await conn.fetchrow(QUERY_DOLLAR, one) for one in ids(user_id)]
    return {"users": [user(row) for row in found]}


@app.get("/updates20/{user_id}")
async def updates20(user_id: int, request: Request) -> dict[str, int]:
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(UPDATE_DOLLAR, [(one,) for one in ids(user_id)])
    return {"updated": 20}


@app.get("/page/{user_id}")
async def page12(user_id: int, request: Request) -> dict[str, Any]:
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn:
        return page(await conn.fetch(PAGE_DOLLAR, user_id))
