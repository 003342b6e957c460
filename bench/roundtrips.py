"""``python -m bench.roundtrips``: per request shape, the statements the server receives (its
own log, log_statement=all) and the protocol round trips the request makes (counted by
``bench.delayproxy`` between the app and the server: the client wrote, the server answered),
on a throwaway embedded PostgreSQL.

Statements and round trips differ: psycopg sends BEGIN as a round trip of its own, a pipeline
or executemany sends many statements in one, asyncpg's pool runs its reset query (one
statement, one round trip) on every release. Each shape runs 10 requests of warm-up (statements
prepared), then 20 counted ones, on a one-connection pool.

The figures of docs/performance.md's round-trip table come from here.
"""

import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from bench import delayproxy
from bench.apps._common import params
from fastapi_dbpool import ConnDep, PoolSettings, ReadConnDep, create_pool_lifespan
from fastapi_dbpool.testing import EmbeddedPostgres

WARMUP, REQUESTS = 10, 20
INSERT = "INSERT INTO items (id, note) VALUES (%s, 'roundtrips')"
SELECT = "SELECT id, note FROM items WHERE id = %s"
UPDATE = "UPDATE items SET note = 'again' WHERE id = %s"


async def run_shape(conn: Any, item: int, shape: str) -> None:
    """What the endpoint runs on a psycopg connection, by shape."""
    if shape in ("read", "get_conn_read", "raw_read", "read_only_gets"):
        await conn.execute(SELECT, (item,))
    elif shape in ("one_query", "raw_write"):
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
    elif shape in ("reads20", "get_conn_reads20"):
        for offset in range(20):
            await conn.execute(SELECT, (item + offset,))
    elif shape == "updates20":
        async with conn.cursor() as cur:
            await cur.executemany(UPDATE, [(n,) for n in range(1, 21)])


# shape: (title, how the connection is had)
SHAPES: dict[str, tuple[str, str]] = {
    "none": ("nothing (`get_conn`, no query)", "get_conn"),
    "get_conn_read": ("`get_conn`, one `SELECT`", "get_conn"),
    "read_only_gets": ("`get_conn`, one `SELECT`, `DBPOOL_READ_ONLY_GETS=true`", "get_conn_ro"),
    "one_query": ("`get_conn`, one `INSERT`", "get_conn"),
    "read": ("`ReadConnDep`, one `SELECT`", "read"),
    "block_first": ("`get_conn`, one `INSERT` in a first `conn.transaction()` block", "get_conn"),
    "nested": ("`get_conn`, two nested blocks, one `INSERT`", "get_conn"),
    "loop": ("`get_conn`, three blocks in a loop, one `INSERT` each", "get_conn"),
    "pipeline": ("`get_conn`, one `INSERT` in `conn.pipeline()`", "get_conn"),
    "reads20": ("`ReadConnDep`, 20 `SELECT`s", "read"),
    "get_conn_reads20": ("`get_conn`, 20 `SELECT`s", "get_conn"),
    "updates20": ("`get_conn`, 20 `UPDATE`s by `executemany`", "get_conn"),
    "raw_read": ("raw psycopg pool, `pool.connection()`, one `SELECT`", "raw"),
    "raw_write": ("raw psycopg pool, `pool.connection()`, one `INSERT`", "raw"),
    "asyncpg_read": ("asyncpg pool, one `fetchrow` (autocommit)", "asyncpg"),
    "asyncpg_tx": ("asyncpg pool, one `INSERT` in `conn.transaction()`", "asyncpg"),
    "asyncpg_updates20": ("asyncpg pool, 20 `UPDATE`s by `executemany` in a transaction",
                          "asyncpg"),
}  # fmt: skip


def _endpoint(app: FastAPI, how: str, shape: str) -> None:
    if how in ("get_conn", "get_conn_ro"):

        @app.get("/run/{item}")
        async def run(item: int, conn: ConnDep) -> None:
            await run_shape(conn, item, shape)

    elif how == "read":

        @app.get("/run/{item}")
        async def read(item: int, conn: ReadConnDep) -> None:
            await run_shape(conn, item, shape)

    elif how == "raw":

        @app.get("/run/{item}")
        async def raw(item: int, request: Request) -> None:
            async with request.app.state.pool.connection() as conn:
                await run_shape(conn, item, shape)

    else:

        @app.get("/run/{item}")
        async def native(item: int, request: Request) -> None:
            async with request.app.state.pool.acquire() as conn:
                if shape == "asyncpg_read":
                    await conn.fetchrow("SELECT id, note FROM items WHERE id = $1", item)
                elif shape == "asyncpg_tx":
                    async with conn.transaction():
                        await conn.execute(
                            "INSERT INTO items (id, note) VALUES ($1, 'roundtrips')", item
                        )
                else:
                    async with conn.transaction():
                        await conn.executemany(
                            "UPDATE items SET note = 'again' WHERE id = $1",
                            [(n,) for n in range(1, 21)],
                        )


def app_for(url: str, name: str, shape: str) -> FastAPI:
    how = SHAPES[shape][1]
    lifespan: Callable[[FastAPI], Any]
    if how in ("get_conn", "get_conn_ro", "read"):
        settings = PoolSettings(
            url=url,
            application_name=name,
            min_size=1,
            max_size=1,
            metrics=False,
            read_only_gets=how == "get_conn_ro",
        )
        lifespan = create_pool_lifespan(settings)
    elif how == "raw":

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            conninfo = make_conninfo(url, application_name=name)
            async with AsyncConnectionPool(conninfo, min_size=1, max_size=1) as pool:
                app.state.pool = pool
                yield

    else:

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            async with asyncpg.create_pool(
                min_size=1, max_size=1, server_settings={"application_name": name},
                **params(url),
            ) as pool:  # fmt: skip
                app.state.pool = pool
                yield

    app = FastAPI(lifespan=lifespan)
    _endpoint(app, how, shape)
    return app


def measure(server: EmbeddedPostgres, proxy: delayproxy.Control, shape: str) -> dict[str, float]:
    """Statements and round trips per request of shape, over REQUESTS after WARMUP."""
    name = f"rt-{shape}"
    url = make_conninfo(server.url, host=delayproxy.HOST, port=str(proxy.port))
    with TestClient(app_for(url, name, shape)) as client:

        def request() -> None:
            client.get(f"/run/{secrets.randbelow(2**60)}").raise_for_status()

        for _ in range(WARMUP):
            request()
        time.sleep(0.3)  # the server's log is written asynchronously
        statements, trips = _count(server, name), proxy.stats()["round_trips"]
        for _ in range(REQUESTS):
            request()
        time.sleep(0.3)
        return {
            "statements": (_count(server, name) - statements) / REQUESTS,
            "round_trips": (proxy.stats()["round_trips"] - trips) / REQUESTS,
        }


def main() -> None:
    with EmbeddedPostgres() as server:
        with psycopg.connect(server.admin_url, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET log_statement = 'all'")
            admin.execute("ALTER SYSTEM SET log_line_prefix = '@@%a@@ '")
            admin.execute("SELECT pg_reload_conf()")
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, note text NOT NULL)")
            conn.execute("INSERT INTO items SELECT n, 'seed' FROM generate_series(1, 20) AS n")
        info = conninfo_to_dict(server.url)
        with delayproxy.running(
            str(info.get("host", "127.0.0.1")), int(str(info["port"]))
        ) as proxy:
            print("| the endpoint runs | statements | round trips |\n|---|---:|---:|")
            for shape, (title, _) in SHAPES.items():
                got = measure(server, proxy, shape)
                print(f"| {title} | {got['statements']:.1f} | {got['round_trips']:.1f} |",
                      flush=True)  # fmt: skip


def _count(server: EmbeddedPostgres, name: str) -> int:
    text = server.log.read_text(errors="replace") if server.log.exists() else ""
    return len(re.findall(rf"@@{re.escape(name)}@@ LOG:  (?:statement|execute)", text))


if __name__ == "__main__":
    main()
