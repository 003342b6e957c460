"""Variants 1 and 2: fastapi_dbpool as documented, Depends(get_conn) through ConnDep.

Variant 2 is this module with DBPOOL_METRICS=false in its environment.
"""

from typing import Any

from fastapi import FastAPI

from bench.apps._common import QUERY, user
from fastapi_dbpool import ConnDep, pool_lifespan

app = FastAPI(lifespan=pool_lifespan)


@app.get("/users/{user_id}")
async def get_user(user_id: int, conn: ConnDep) -> dict[str, Any]:
    cur = await conn.execute(QUERY, (user_id,))
    return user(await cur.fetchone())
