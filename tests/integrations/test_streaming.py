"""StreamingResponse: a body that reads while it streams holds get_stream_conn's connection."""

from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from fastapi_dbpool import ConnDep, PoolDep, StreamConnDep, create_pool_lifespan
from fastapi_dbpool.errors import ConnectionReleased
from tests.integration.conftest import ClientFor
from tests.integrations.conftest import SettingsFactory

ROWS = 5000


def export_app(settings: Any) -> FastAPI:
    app = FastAPI(lifespan=create_pool_lifespan(settings))

    @app.get("/export.csv")
    async def export(conn: StreamConnDep) -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            # A server-side cursor: rows arrive in batches, never all in memory; it needs the
            # transaction get_stream_conn holds until the last chunk is sent.
            async with conn.cursor(name="export") as cur:
                await cur.execute(
                    "SELECT n, md5(n::text) FROM generate_series(1, %s) AS n", (ROWS,)
                )
                async for n, digest in cur:
                    yield f"{n},{digest}\n"

        return StreamingResponse(lines(), media_type="text/csv")

    @app.get("/first-way.csv")
    async def first_way(conn: ConnDep, pool: PoolDep) -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            stats = pool.get_stats()  # what the pool thinks while the body holds the connection
            yield f"lent:{stats['pool_size'] - stats['pool_available']}\n"
            try:
                await conn.execute("SELECT 1")
            except ConnectionReleased:
                yield "refused: ConnectionReleased\n"
                return
            yield "ran\n"

        return StreamingResponse(lines(), media_type="text/csv")

    @app.get("/value")
    async def value(conn: ConnDep) -> int:
        cur = await conn.execute("SELECT 1")
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    return app


def test_a_body_streams_from_a_server_side_cursor(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(export_app(make_settings(max_size=1)))
    lines = client.get("/export.csv").text.splitlines()
    assert len(lines) == ROWS and lines[-1].startswith(f"{ROWS},")
    assert client.get("/value").json() == 1  # the one connection came back after the body


def test_a_body_on_get_conn_finds_its_connection_given_back(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    """The first way: ConnDep's connection is back in the pool before the body is written
    (another request may hold it by then), so the body's statement is refused."""
    client = client_for(export_app(make_settings(max_size=1)))
    assert client.get("/first-way.csv").text == "lent:0\nrefused: ConnectionReleased\n"
    assert client.get("/value").json() == 1  # the connection serves the next request
