"""The instrumentation A/B on one pool in one process: POST /bench/metrics/on (or /off) swaps
the pool's recorder in or out between runs, GET /users/{id} is variant 1's endpoint.

Two processes, or two pools with their own server backends, differ in where the scheduler puts
them on a 2-core machine, a bias that pairing runs cannot cancel; one pool in one process
shares it.
"""

import asyncio
from typing import Any

from fastapi import FastAPI, Request

from bench.apps._common import QUERY, user
from fastapi_dbpool import ConnDep, pool_lifespan
from fastapi_dbpool._timings import Recorder
from fastapi_dbpool.database import DatabasePool

app = FastAPI(lifespan=pool_lifespan)
_recorder: Recorder | None = None


@app.get("/users/{user_id}")
async def get_user(user_id: int, conn: ConnDep) -> dict[str, Any]:
    cur = await conn.execute(QUERY, (user_id,))
    return user(await cur.fetchone())


@app.post("/bench/metrics/{state}")
async def metrics(state: str, request: Request) -> dict[str, bool]:
    """Only between runs, with no request in flight: a checkout must end as it began."""
    database: DatabasePool = request.app.state.dbpool
    # wrk stops sending, not the requests it had in flight: let them finish first, so that
    # every checkout ends with the recorder it began with.
    for _ in range(500):
        stats = database.pool.get_stats()
        if stats.get("pool_size", 0) == stats.get("pool_available", 0):
            break
        await asyncio.sleep(0.01)
    global _recorder
    if _recorder is None:
        _recorder = database.recorder  # the one the pool opened with (its sweeper watches it)
    database.recorder = _recorder if state == "on" else None
    return {"on": database.recorder is not None}
