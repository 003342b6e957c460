"""Variant 7: the tutorial's sync style: a def endpoint on a psycopg ConnectionPool.

FastAPI runs the endpoint in its thread pool (40 threads). The connection is taken inside the
endpoint: taken in a sync yield dependency instead, it deadlocks once more requests wait than
there are threads (every thread blocks in getconn while the requests holding the connections
wait for a thread to run their endpoint) until the pool's 30 s timeout.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from psycopg_pool import ConnectionPool

from bench.apps._common import POOL_MIN, POOL_SIZE, QUERY, url, user


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    pool = ConnectionPool(url(), min_size=POOL_MIN, max_size=POOL_SIZE, open=False)
    pool.open(wait=True)
    app.state.pool = pool
    try:
        yield
    finally:
        pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/users/{user_id}")
def get_user(user_id: int, request: Request) -> dict[str, Any]:
    pool: ConnectionPool = request.app.state.pool
    with pool.connection() as conn:
        return user(conn.execute(QUERY, (user_id,)).fetchone())
