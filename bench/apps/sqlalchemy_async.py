"""Variant 5: SQLAlchemy's async engine on the psycopg driver, engine.connect() per request."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.apps._common import POOL_SIZE, QUERY_NAMED, params, user

SELECT_USER = text(QUERY_NAMED)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    p = params()
    engine = create_async_engine(
        URL.create(
            "postgresql+psycopg",
            username=p["user"],
            password=p["password"],
            host=p["host"],
            port=p["port"],
            database=p["database"],
        ),
        pool_size=POOL_SIZE,
        max_overflow=0,
    )
    app.state.engine = engine
    try:
        yield
    finally:
        await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/users/{user_id}")
async def get_user(user_id: int, request: Request) -> dict[str, Any]:
    engine: AsyncEngine = request.app.state.engine
    async with engine.connect() as conn:
        result = await conn.execute(SELECT_USER, {"id": user_id})
        return user(result.first())
