"""A small app exercising every dependency, and settings pointing at the test server."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fastapi_dbpool import (
    ConnDep,
    PoolDep,
    PoolSettings,
    ReadConnDep,
    StreamConnDep,
    create_pool_lifespan,
    get_conn,
    pool_router,
)
from fastapi_dbpool.testing import DatabaseServer

SettingsFactory = Callable[..., PoolSettings]
ClientFor = Callable[[FastAPI], TestClient]


@pytest.fixture(scope="session")
def schema(database_server: DatabaseServer) -> None:
    """Tables the test app writes to; each test uses its own ids."""
    with psycopg.connect(database_server.url, autocommit=True) as conn:
        # The plugin's server commits asynchronously (synchronous_commit=off): wait for the
        # flush, or a test that crashes the server right after could lose the tables.
        conn.execute("SET synchronous_commit = on")
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS items (id bigint PRIMARY KEY, note text NOT NULL);
            CREATE TABLE IF NOT EXISTS parents (id bigint PRIMARY KEY);
            CREATE TABLE IF NOT EXISTS children (
                id bigint PRIMARY KEY,
                parent_id bigint REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
            );
            """
        )


@pytest.fixture
def make_settings(
    database_server: DatabaseServer, unique_app_name: str, schema: None
) -> SettingsFactory:
    """PoolSettings for the test server, small and quick, tagged with this test's name."""

    def make(**overrides: Any) -> PoolSettings:
        values: dict[str, Any] = {
            "url": database_server.url,
            "application_name": unique_app_name,
            "min_size": 1,
            "max_size": 4,
            "timeout": 1.0,
            "health_timeout": 1.0,
            "connect_timeout": 2,
            "open_timeout": 5.0,
            "close_timeout": 2.0,
        }
        values.update(overrides)
        return PoolSettings(**values)

    return make


async def connection_mode(conn: AsyncConnection[Any]) -> dict[str, Any]:
    """After one query: is the connection in autocommit, in a transaction, and which backend."""
    await conn.execute("SELECT 1")
    return {
        "autocommit": conn.autocommit,
        "status": conn.info.transaction_status.name,
        "pid": conn.info.backend_pid,
    }


def build_app(settings: PoolSettings, **lifespan_kwargs: Any) -> FastAPI:
    """An app with the pool router and routes that write, fail, sleep and stream."""
    app = FastAPI(lifespan=create_pool_lifespan(settings, **lifespan_kwargs))
    app.include_router(pool_router)

    @app.get("/value")
    async def value(conn: ConnDep) -> dict[str, Any]:
        cur = await conn.execute("SELECT 1")
        row = await cur.fetchone()
        return {"value": row[0] if row else None}

    @app.get("/read")
    async def read(conn: ReadConnDep) -> dict[str, Any]:
        return await connection_mode(conn)

    @app.get("/mode")
    async def mode(conn: ConnDep) -> dict[str, Any]:
        return await connection_mode(conn)

    @app.post("/read/items/{item_id}")
    async def write_in_autocommit(item_id: int, conn: ReadConnDep) -> None:
        await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'autocommit')", (item_id,))
        raise HTTPException(409, "raised after an autocommit write")

    @app.post("/read/begin/{item_id}")
    async def begin_in_autocommit(item_id: int, conn: ReadConnDep) -> None:
        await conn.execute("BEGIN")
        await conn.execute(
            "INSERT INTO items (id, note) VALUES (%s, 'never committed')", (item_id,)
        )

    @app.get("/pid")
    async def pid(conn: ConnDep) -> dict[str, int]:
        return {"pid": conn.info.backend_pid}

    @app.post("/items/{item_id}")
    async def create_item(item_id: int, conn: ConnDep, fail: str = "") -> dict[str, int]:
        await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'x')", (item_id,))
        if fail == "http":
            raise HTTPException(409, "conflict after write")
        if fail == "error":
            raise ValueError("handler bug after write")
        return {"id": item_id}

    @app.post("/children/{child_id}")
    async def orphan_child(child_id: int, conn: ConnDep) -> dict[str, int]:
        # The FK is deferred: the INSERT succeeds, the COMMIT fails.
        await conn.execute(
            "INSERT INTO children (id, parent_id) VALUES (%s, %s)", (child_id, -child_id)
        )
        return {"id": child_id}

    @app.post("/swallow/{item_id}")
    async def swallow(item_id: int, conn: ConnDep, savepoint: bool = False) -> dict[str, int]:
        await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'swallow')", (item_id,))
        try:
            if savepoint:
                async with conn.transaction():
                    await conn.execute("SELECT 1 / 0")
            else:
                await conn.execute("SELECT 1 / 0")
        except psycopg.errors.DivisionByZero:
            pass  # the handler "handles" the error and returns normally
        return {"id": item_id}

    @app.post("/plain/children/{child_id}")
    async def orphan_child_plain(child_id: int, conn: Any = Depends(get_conn)) -> dict[str, int]:
        # The design card's spelling: a plain Depends(get_conn), no Annotated alias.
        await conn.execute(
            "INSERT INTO children (id, parent_id) VALUES (%s, %s)", (child_id, -child_id)
        )
        return {"id": child_id}

    @app.post("/lost-before-commit")
    async def lost_before_commit(conn: ConnDep, pool: PoolDep) -> dict[str, str]:
        await conn.execute("SELECT 1")  # a transaction is open
        async with pool.connection() as killer:
            await killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        return {"unreachable": "the commit finds its connection gone"}

    @app.get("/sleep")
    async def sleep(conn: ConnDep, seconds: float = 1.0) -> dict[str, float]:
        await conn.execute("SELECT pg_sleep(%s)", (seconds,))
        return {"slept": seconds}

    @app.post("/swallow-lost/{item_id}")
    async def swallow_lost(item_id: int, conn: ConnDep) -> dict[str, str]:
        await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'lost')", (item_id,))
        with contextlib.suppress(psycopg.OperationalError):  # swallowed: it means to answer 200
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return {"unreachable": "the commit finds its connection gone"}

    @app.get("/suicide")
    async def suicide(conn: ConnDep) -> dict[str, str]:
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return {"unreachable": "the query above kills this connection"}

    @app.get("/stream/plain")
    async def stream_plain(conn: ConnDep, pool: PoolDep) -> StreamingResponse:
        await conn.execute("SELECT 1")

        async def body() -> AsyncIterator[str]:
            await asyncio.sleep(0)
            stats = pool.get_stats()
            yield f"{stats['pool_size'] - stats['pool_available']}"

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/stream/held")
    async def stream_held(conn: StreamConnDep, pool: PoolDep) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            for n in range(3):
                cur = await conn.execute("SELECT %s::int", (n,))
                row = await cur.fetchone()
                stats = pool.get_stats()
                in_use = stats["pool_size"] - stats["pool_available"]
                yield f"{row[0] if row else None}:{in_use}\n"

        return StreamingResponse(body(), media_type="text/plain")

    return app


@pytest.fixture
def client_for() -> Iterator[ClientFor]:
    """Start an app's lifespan in a TestClient; every one started is shut down after the test."""
    clients: list[TestClient] = []

    def start(app: FastAPI) -> TestClient:
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in reversed(clients):
        client.__exit__(None, None, None)


def url_without_password(url: str, user: str | None = None) -> str:
    """url with its password left out (for a password provider), and another user if given."""
    params = conninfo_to_dict(url)
    params.pop("password", None)
    if user is not None:
        params["user"] = user
    return make_conninfo(**{key: str(value) for key, value in params.items()})


def row_exists(url: str, table: str, row_id: int) -> bool:
    """Ask the database itself, outside the app, whether a row was committed."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(f"SELECT 1 FROM {table} WHERE id = %s", (row_id,))
        return cur.fetchone() is not None
