"""A plain Starlette app on fastapi_dbpool.starlette, served by uvicorn in the tests.

FastAPI cannot be imported in this process: the app proves that the Starlette path needs none
of it.
"""

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType


class _NoFastAPI(MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "fastapi" or fullname.startswith("fastapi."):
            raise ImportError(f"{fullname} is blocked in this process")
        return None


sys.meta_path.insert(0, _NoFastAPI())

from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from fastapi_dbpool import pool_lifespan  # noqa: E402
from fastapi_dbpool.starlette import connection, exception_handlers, pool_routes  # noqa: E402


async def create_item(request: Request) -> JSONResponse:
    """Insert the item; ?fail=409 raises an HTTPException after it, ?fail=crash a RuntimeError,
    ?block=1 writes inside a conn.transaction() block, the request's first statement."""
    item_id = int(request.path_params["item_id"])
    fail = request.query_params.get("fail")
    async with connection(request) as conn:
        if request.query_params.get("block"):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO starlette_items (id, note) VALUES (%s, 'block')", (item_id,)
                )
        else:
            await conn.execute(
                "INSERT INTO starlette_items (id, note) VALUES (%s, 'plain')", (item_id,)
            )
        if fail == "409":
            raise HTTPException(409, "conflict, after the insert")
        if fail == "crash":
            raise RuntimeError("a bug, after the insert")
    return JSONResponse({"id": item_id}, status_code=201)


async def _add_note(request: Request, item_id: int) -> None:
    """A helper that opens its own block: it joins the request's transaction."""
    async with connection(request) as conn:
        sql = "INSERT INTO starlette_items (id, note) VALUES (%s, 'nested')"
        await conn.execute(sql, (item_id,))


async def create_nested(request: Request) -> JSONResponse:
    item_id = int(request.path_params["item_id"])
    async with connection(request) as conn:
        sql = "INSERT INTO starlette_items (id, note) VALUES (%s, 'outer')"
        await conn.execute(sql, (item_id,))
        await _add_note(request, item_id + 1)
        if request.query_params.get("fail"):
            raise HTTPException(409, "after both inserts")
    return JSONResponse({"id": item_id}, status_code=201)


async def sleep(request: Request) -> JSONResponse:
    seconds = float(request.query_params.get("seconds", "1"))
    async with connection(request) as conn:
        await conn.execute("SELECT pg_sleep(%s)", (seconds,))
    return JSONResponse({"slept": seconds})


async def read_item(request: Request) -> JSONResponse:
    """A read and a write in one request: one connection, the read sees the write."""
    item_id = int(request.path_params["item_id"])
    async with connection(request) as conn:
        await conn.execute("INSERT INTO starlette_items (id, note) VALUES (%s, 'rw')", (item_id,))
        async with connection(request, read=True) as reader:
            cur = await reader.execute(
                "SELECT note, pg_backend_pid() = %s FROM starlette_items WHERE id = %s",
                (conn.info.backend_pid, item_id),
            )
            note, same_backend = await cur.fetchone() or (None, False)
    return JSONResponse({"note": note, "same_backend": same_backend})


async def read_write_read(request: Request) -> JSONResponse:
    """A read block around a write block, then a read: the write is committed when its block
    ends, and the reads after it run in autocommit again. ?fail=1: the write block raises, and
    its write is rolled back (the block runs in a transaction, not in the reader's autocommit)."""
    item_id = int(request.path_params["item_id"])
    async with connection(request, read=True) as reader:
        await reader.execute("SELECT 1")
        async with connection(request) as conn:
            await conn.execute(
                "INSERT INTO starlette_items (id, note) VALUES (%s, 'rwr')", (item_id,)
            )
            if request.query_params.get("fail"):
                raise HTTPException(409, "inside the write block")
        cur = await reader.execute("SELECT note FROM starlette_items WHERE id = %s", (item_id,))
        row = await cur.fetchone()
    return JSONResponse({"note": row[0] if row else None})


app = Starlette(
    lifespan=pool_lifespan,
    routes=[
        Route("/items/{item_id:int}", create_item, methods=["POST"]),
        Route("/items/{item_id:int}/rw", read_item, methods=["POST"]),
        Route("/items/{item_id:int}/nested", create_nested, methods=["POST"]),
        Route("/items/{item_id:int}/rwr", read_write_read, methods=["POST"]),
        Route("/sleep", sleep, methods=["GET"]),
        *pool_routes(),
    ],
    exception_handlers=dict(exception_handlers),
)
