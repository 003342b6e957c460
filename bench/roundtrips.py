"""``python -m bench.roundtrips``: the statements the server receives per request, by what the
endpoint runs (its own log, log_statement=all), on a throwaway embedded PostgreSQL.

The figures of docs/performance.md's round-trip table come from here.
"""

import re
import secrets
import time
from typing import Any

import psycopg
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_dbpool import ConnDep, PoolSettings, ReadConnDep, create_pool_lifespan
from fastapi_dbpool.testing import EmbeddedPostgres

REQUESTS = 20
INSERT = "INSERT INTO items (id, note) VALUES (%s, 'roundtrips')"


async def run_shape(conn: Any, item: int, shape: str) -> None:
    if shape == "one_query":
        await conn.execute(INSERT, (item,))
    elif shape == "block_first":
        async with conn.transaction():
            await conn.execute(INSERT, (item,))
    elif shape == "nested":
        async with conn.transaction(), conn.transaction():
            await conn.execute(INSERT, (item,))
    elif shape == "loop":
        for offset in range(3):
            async with conn.transaction():
                await conn.execute(INSERT, (item + offset,))
    elif shape == "pipeline":
        async with conn.pipeline():
            await conn.execute(INSERT, (item,))


def app_for(url: str, name: str, shape: str) -> FastAPI:
    settings = PoolSettings(url=url, application_name=name, min_size=1, max_size=1, metrics=False)
    app = FastAPI(lifespan=create_pool_lifespan(settings))

    @app.post("/write/{item}")
    async def write(item: int, conn: ConnDep) -> None:
        await run_shape(conn, item, shape)

    @app.get("/read/{item}")
    async def read(item: int, conn: ReadConnDep) -> None:
        await conn.execute("SELECT 1 FROM items WHERE id = %s", (item,))

    return app


def main() -> None:
    with EmbeddedPostgres() as server:
        with psycopg.connect(server.admin_url, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET log_statement = 'all'")
            admin.execute("ALTER SYSTEM SET log_line_prefix = '@@%a@@ '")
            admin.execute("SELECT pg_reload_conf()")
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, note text NOT NULL)")
        shapes = ["none", "one_query", "block_first", "nested", "loop", "pipeline", "read"]
        for shape in shapes:
            name = f"rt-{shape}"
            with TestClient(app_for(server.url, name, shape)) as client:
                before = _count(server, name)
                for _ in range(REQUESTS):
                    item = secrets.randbelow(2**60)
                    path = f"/read/{item}" if shape == "read" else f"/write/{item}"
                    response = client.get(path) if shape == "read" else client.post(path)
                    response.raise_for_status()
                time.sleep(0.3)  # the server's log is written asynchronously
                per_request = (_count(server, name) - before) / REQUESTS
            print(f"{shape:12s} {per_request:4.1f} statements per request", flush=True)


def _count(server: EmbeddedPostgres, name: str) -> int:
    text = server.log.read_text(errors="replace") if server.log.exists() else ""
    return len(re.findall(rf"@@{re.escape(name)}@@ LOG:  (?:statement|execute)", text))


if __name__ == "__main__":
    main()
