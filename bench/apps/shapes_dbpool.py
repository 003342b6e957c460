"""The request shapes on fastapi_dbpool, written as the README shows: ConnDep for writes (and
the card's read), ReadConnDep for reads."""

from typing import Any

from fastapi import FastAPI

from bench.apps._common import QUERY, user
from bench.apps._shapes import PAGE, UPDATE, WRITE, ids, page
from fastapi_dbpool import ConnDep, ReadConnDep, pool_lifespan

app = FastAPI(lifespan=pool_lifespan)


@app.get("/users/{user_id}")
async def get_user(user_id: int, conn: ConnDep) -> dict[str, Any]:
    cur = await conn.execute(QUERY, (user_id,))
    return user(await cur.fetchone())


@app.get("/read/{user_id}")
async def read_user(user_id: int, conn: ReadConnDep) -> dict[str, Any]:
    cur = await conn.execute(QUERY, (user_id,))
    return user(await cur.fetchone())


@app.get("/write/{user_id}")
async def write_user(user_id: int, conn: ConnDep) -> dict[str, Any]:
    cur = await conn.execute(WRITE, (user_id,))
    return user(await cur.fetchone())


@app.get("/reads20/{user_id}")
async def reads20(user_id: int, conn: ReadConnDep) -> dict[str, Any]:
    found = []
    for one in ids(user_id):
        cur = await conn.execute(QUERY, (one,))
        found.append(await cur.fetchone())
    return {"users": [user(row) for row in found]}


@app.get("/updates20/{user_id}")
async def updates20(user_id: int, conn: ConnDep) -> dict[str, int]:
    async with conn.cursor() as cur:
        await cur.executemany(UPDATE, [(one,) for one in ids(user_id)])
    return {"updated": 20}


@app.get("/page/{user_id}")
async def page12(user_id: int, conn: ReadConnDep) -> dict[str, Any]:
    cur = await conn.execute(PAGE, (user_id,))
    return page(await cur.fetchall())
