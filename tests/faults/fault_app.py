"""The app under fault: real uvicorn, settings from DBPOOL_* (see tests/faults/conftest.py)."""

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from fastapi_dbpool import ConnDep, StreamConnDep, pool_lifespan, pool_router
from tests.support import CancelAfter

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

app = FastAPI(lifespan=pool_lifespan)
app.include_router(pool_router)


@app.get("/value")
async def value(conn: ConnDep) -> dict[str, int]:
    cur = await conn.execute("SELECT 1")
    row = await cur.fetchone()
    return {"value": row[0] if row else 0}


@app.get("/queued")
async def queued(request: Request, conn: ConnDep, seconds: float = 0.5) -> dict[str, float]:
    """When this request arrived and when it got its connection, on the server's clock."""
    got = time.monotonic()
    await conn.execute("SELECT pg_sleep(%s)", (seconds,))
    return {"arrived": request.state.arrived, "got": got}


@app.get("/sleep")
async def sleep(conn: ConnDep, seconds: float = 1.0) -> dict[str, float]:
    await conn.execute("SELECT pg_sleep(%s)", (seconds,))
    return {"slept": seconds}


@app.post("/items/{item_id}")
async def create_item(item_id: int, conn: ConnDep, fail: str = "", hold: float = 0.0) -> Any:
    await conn.execute("INSERT INTO fault_items (id) VALUES (%s)", (item_id,))
    if hold:
        await asyncio.sleep(hold)
    if fail == "http":
        raise HTTPException(409, "conflict after the write")
    if fail == "error":
        raise RuntimeError("handler bug after the write")
    return {"id": item_id}


@app.get("/stream/fail/{item_id}")
async def stream_fail(item_id: int, conn: StreamConnDep) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        await conn.execute("INSERT INTO fault_items (id) VALUES (%s)", (item_id,))
        yield "first chunk\n"
        raise RuntimeError("the stream breaks after a write")

    return StreamingResponse(body(), media_type="text/plain")


@app.get("/stream/rows")
async def stream_rows(conn: StreamConnDep, chunks: int = 200) -> StreamingResponse:
    """A long body read from the database chunk by chunk, for a client that hangs up."""

    async def body() -> AsyncIterator[str]:
        for n in range(chunks):
            cur = await conn.execute("SELECT %s::int, repeat('x', 65536), pg_sleep(0.01)", (n,))
            row = await cur.fetchone()
            yield f"{row[0] if row else None}:{row[1] if row else ''}\n"

    return StreamingResponse(body(), media_type="text/plain")


class StampArrival:
    """Stamps each request's arrival time (server clock) into its state."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        scope.setdefault("state", {})["arrived"] = time.monotonic()
        await self.inner(scope, receive, send)


app.add_middleware(StampArrival)
if os.environ.get("FAULT_CANCEL_MIDDLEWARE"):
    app.add_middleware(CancelAfter)
