"""Variant 8: fastapi_dbpool's fast read path, ReadConnDep (autocommit, no BEGIN/COMMIT)."""

from typing import Any

from fastapi import FastAPI

from bench.apps._common import QUERY, user
from fastapi_dbpool import ReadConnDep, pool_lifespan

app = FastAPI(lifespan=pool_lifespan)


@app.get("/users/{user_id}")
async def get_user(user_id: int, conn: ReadConnDep) -> dict[str, Any]:
    cur = await conn.execute(QUERY, (user_id,))
    return user(await cur.fetchone())
