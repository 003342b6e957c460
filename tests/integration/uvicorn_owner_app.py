"""An app for the owner's guarantees under a real uvicorn process (settings from DBPOOL_*):
a def endpoint cancelled by an edge timeout whose thread writes on, and a streaming body on
a get_conn connection. What the late code got is printed, for the test to read in the log."""

import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from fastapi_dbpool import ConnDep, SyncConnDep, pool_lifespan, pool_router
from tests.support import CancelAfter

INSERT = "INSERT INTO items (id, note) VALUES (%s, 'owner')"

app = FastAPI(lifespan=pool_lifespan)
app.include_router(pool_router)


def report(what: str, item_id: int, exc: BaseException | None) -> None:
    print(f"LATE {what} {item_id} {type(exc).__name__ if exc else 'ran'}", flush=True)


@app.post("/def/{item_id}")
def slow_def(item_id: int, conn: SyncConnDep) -> None:
    conn.execute(INSERT, (item_id,))
    time.sleep(0.8)  # cancelled meanwhile by the edge timeout; this thread goes on
    try:
        conn.execute(INSERT, (item_id + 1,))
    except Exception as exc:
        report("def", item_id + 1, exc)
        return
    report("def", item_id + 1, None)


@app.post("/plain/{item_id}")
def plain_def(item_id: int, conn: SyncConnDep) -> None:
    conn.execute(INSERT, (item_id,))


@app.get("/stream/{item_id}")
async def stream(item_id: int, conn: ConnDep) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        yield "start\n"
        try:
            await conn.execute(INSERT, (item_id,))
        except Exception as exc:
            report("stream", item_id, exc)
            yield "refused\n"
            return
        report("stream", item_id, None)
        yield "ran\n"

    return StreamingResponse(body(), media_type="text/plain")


app.add_middleware(CancelAfter)
