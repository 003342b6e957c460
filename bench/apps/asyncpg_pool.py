"""Variant 4: asyncpg's pool, acquire() inside the endpoint, with its defaults."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, Request

from bench.apps._common import POOL_MIN, POOL_SIZE, QUERY_DOLLAR, params, user


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
