"""A tiny app for tests that run a real uvicorn process (settings from DBPOOL_* env)."""

from fastapi import FastAPI

from fastapi_dbpool import ConnDep, pool_lifespan, pool_router

app = FastAPI(lifespan=pool_lifespan)
app.include_router(pool_router)


@app.get("/sleep")
async def sleep(conn: ConnDep, seconds: float = 1.0) -> dict[str, float]:
    await conn.execute("SELECT pg_sleep(%s)", (seconds,))
    return {"slept": seconds}


@app.post("/items/{item_id}")
async def create_item(item_id: int, conn: ConnDep) -> dict[str, int]:
    await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'uvicorn')", (item_id,))
    return {"id": item_id}
