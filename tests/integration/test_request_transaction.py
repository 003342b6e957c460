"""One transaction and one connection per request, whatever the handler writes.

Code ported from asyncpg opens ``conn.transaction()`` blocks first, sets attributes on the
connection, and mixes read and write dependencies: each of those must keep the request's
guarantees (nothing kept on error, everything committed before the response, nothing left on
the connection for the next request, never two connections of one pool for one request).
"""

import secrets
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import psycopg
import psycopg.rows
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient
from psycopg import AsyncConnection, IsolationLevel
from psycopg.adapt import Loader
from psycopg.rows import dict_row

from fastapi_dbpool import (
    ConnDep,
    PoolDep,
    ReadConnDep,
    create_pool_lifespan,
    get_conn,
    get_conn_for,
    get_read_conn,
)
from fastapi_dbpool.testing import DatabaseServer, Observer

from .conftest import ClientFor, SettingsFactory, row_exists

Conn = AsyncConnection[Any]

OtherConnDep = Annotated[Conn, Depends(get_conn_for("other"))]
PlainConn = Any


def new_id() -> int:
    return secrets.randbelow(2**61)


async def write(conn: Conn, item: int, shape: str) -> None:
    """Insert item (and item + 1, item + 2 for the loop) the way the shape says."""
    insert = "INSERT INTO items (id, note) VALUES (%s, %s)"
    if shape == "block_first":
        async with conn.transaction():
            await conn.execute(insert, (item, shape))
    elif shape == "nested":
        async with conn.transaction(), conn.transaction():
            await conn.execute(insert, (item, shape))
    elif shape == "loop":
        for offset in range(3):
            async with conn.transaction():
                await conn.execute(insert, (item + offset, shape))
    elif shape == "cursor":
        async with conn.cursor() as cur:
            await cur.execute(insert, (item, shape))
    elif shape == "pipeline":
        async with conn.pipeline():
            await conn.execute(insert, (item, shape))
    elif shape == "copy":
        async with conn.cursor() as cur, cur.copy("COPY items (id, note) FROM STDIN") as copy:
            await copy.write_row((item, shape))
    else:  # pragma: no cover - the parametrization names every shape
        raise AssertionError(shape)


def finish(fail: str) -> None:
    if fail == "http":
        raise HTTPException(409, "conflict after the write")
    if fail == "error":
        raise ValueError("handler bug after the write")


def writes_app(settings_factory: SettingsFactory, **pool_overrides: Any) -> FastAPI:
    default = settings_factory(**pool_overrides)
    other = settings_factory(**pool_overrides)
    app = FastAPI(lifespan=create_pool_lifespan(default, pools={"other": other}))

    @app.post("/alias/{shape}/{item}")
    async def alias(shape: str, item: int, conn: ConnDep, fail: str = "") -> dict[str, int]:
        await write(conn, item, shape)
        finish(fail)
        return {"id": item}

    @app.post("/plain/{shape}/{item}")
    async def plain(
        shape: str, item: int, conn: PlainConn = Depends(get_conn), fail: str = ""
    ) -> dict[str, int]:
        await write(conn, item, shape)
        finish(fail)
        return {"id": item}

    @app.post("/named/{shape}/{item}")
    async def named(shape: str, item: int, conn: OtherConnDep, fail: str = "") -> dict[str, int]:
        await write(conn, item, shape)
        finish(fail)
        return {"id": item}

    @app.post("/mixed/{shape}/{item}")
    async def mixed(
        shape: str, item: int, read: ReadConnDep, conn: ConnDep, fail: str = ""
    ) -> dict[str, int]:
        # The read dependency comes first: it must not commit the write on its own.
        await write(read, item, shape)
        finish(fail)
        return {"id": item}

    @app.post("/commit/{item}")
    async def explicit(item: int, conn: ConnDep, how: str = "commit") -> dict[str, int]:
        await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'explicit')", (item,))
        await (conn.commit() if how == "commit" else conn.rollback())
        return {"id": item}

    return app


SHAPES = ["block_first", "nested", "loop", "cursor", "pipeline", "copy"]
ROUTES = ["alias", "plain", "named", "mixed"]


@pytest.fixture
def writes_client(make_settings: SettingsFactory, client_for: ClientFor) -> TestClient:
    return client_for(writes_app(make_settings))


def kept(url: str, item: int, shape: str) -> list[bool]:
    ids = [item + offset for offset in range(3 if shape == "loop" else 1)]
    return [row_exists(url, "items", row_id) for row_id in ids]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("fail", "status"), [("http", 409), ("error", 500)])
def test_a_request_that_raises_keeps_nothing(
    writes_client: TestClient,
    database_server: DatabaseServer,
    route: str,
    shape: str,
    fail: str,
    status: int,
) -> None:
    item = new_id()
    response = writes_client.post(f"/{route}/{shape}/{item}", params={"fail": fail})
    assert response.status_code == status
    assert not any(kept(database_server.url, item, shape))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", SHAPES)
def test_a_request_that_returns_commits_everything_before_the_response(
    writes_client: TestClient, database_server: DatabaseServer, route: str, shape: str
) -> None:
    item = new_id()
    response = writes_client.post(f"/{route}/{shape}/{item}")
    assert response.status_code == 200
    assert all(kept(database_server.url, item, shape))


@pytest.mark.parametrize("how", ["commit", "rollback"])
def test_explicit_commit_or_rollback_in_a_handler_is_refused_and_keeps_nothing(
    writes_client: TestClient,
    database_server: DatabaseServer,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    item = new_id()
    response = writes_client.post(f"/commit/{item}", params={"how": how})
    assert response.status_code == 500
    assert not row_exists(database_server.url, "items", item)
    assert "conn.commit() or conn.rollback()" in caplog.text


# --- what a handler sets on the connection does not reach the next request -----------------


NOTICES: list[Any] = []


class ShoutingText(Loader):
    def load(self, data: Any) -> str:
        return bytes(data).decode().upper()


def state_app(settings_factory: SettingsFactory) -> FastAPI:
    # One connection: every request draws the same backend.
    app = FastAPI(lifespan=create_pool_lifespan(settings_factory(min_size=1, max_size=1)))

    @app.post("/change")
    async def change(conn: ReadConnDep) -> dict[str, int]:
        conn.row_factory = dict_row
        conn.prepare_threshold = 0
        conn.prepared_max = 7
        conn.adapters.register_loader("text", ShoutingText)
        conn.add_notice_handler(NOTICES.append)
        await conn.set_isolation_level(IsolationLevel.SERIALIZABLE)
        await conn.set_read_only(True)
        await conn.set_deferrable(True)
        await conn.set_autocommit(False)
        cur = await conn.execute("SELECT 'changed' AS word")
        row = await cur.fetchone()
        assert row == {"word": "CHANGED"}  # the changes took effect in this request
        await conn.rollback()
        return {"pid": conn.info.backend_pid}

    async def describe(conn: Conn) -> dict[str, Any]:
        await conn.execute("DO $$ BEGIN RAISE NOTICE 'to no one'; END $$")  # a handler's test
        cur = await conn.execute("SELECT 'plain' AS word")
        row = await cur.fetchone()
        return {
            "pid": conn.info.backend_pid,
            "row": list(row) if isinstance(row, tuple) else row,
            "prepare_threshold": conn.prepare_threshold,
            "prepared_max": conn.prepared_max,
            "isolation_level": conn.isolation_level,
            "read_only": conn.read_only,
            "deferrable": conn.deferrable,
        }

    @app.get("/read")
    async def read(conn: ReadConnDep) -> dict[str, Any]:
        return {**await describe(conn), "autocommit": conn.autocommit}

    @app.get("/write")
    async def write_state(conn: ConnDep) -> dict[str, Any]:
        return {**await describe(conn), "autocommit": conn.autocommit}

    @app.get("/pool")
    async def pool_state(pool: PoolDep) -> dict[str, Any]:
        # psycopg-pool's own checkout puts nothing back: it sees what the last borrower left.
        async with pool.connection() as conn:
            return {"pid": conn.info.backend_pid, "autocommit": conn.autocommit}

    return app


def test_attributes_a_handler_sets_are_restored_when_the_connection_returns(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    NOTICES.clear()
    client = client_for(state_app(make_settings))
    before = client.get("/write").json()
    changed = client.post("/change")
    assert changed.status_code == 200, changed.text
    after_write, after_read = client.get("/write").json(), client.get("/read").json()
    assert before["pid"] == changed.json()["pid"] == after_write["pid"] == after_read["pid"]
    for after, autocommit in ((after_write, False), (after_read, True)):
        assert after["row"] == ["plain"]  # tuples, and the text loader is psycopg's own
        assert after["prepare_threshold"] == before["prepare_threshold"] == 5
        assert after["prepared_max"] == before["prepared_max"] != 7
        assert after["isolation_level"] is None
        assert after["read_only"] is None
        assert after["deferrable"] is None
        assert after["autocommit"] is autocommit
    assert NOTICES == []  # the notice handler /change added did not outlive its request
    # The last request was a read (autocommit on): its connection went back transactional, so
    # a get_pool block's rollback still undoes its writes.
    assert client.get("/pool").json() == {"pid": before["pid"], "autocommit": False}


# --- one connection per request -------------------------------------------------------------


def mixed_app(settings_factory: SettingsFactory) -> FastAPI:
    app = FastAPI(
        lifespan=create_pool_lifespan(settings_factory(min_size=2, max_size=2, timeout=3.0))
    )

    @app.post("/write-then-read/{item}")
    async def write_then_read(item: int, conn: ConnDep, read: ReadConnDep) -> dict[str, Any]:
        await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'mixed')", (item,))
        await conn.execute("SELECT pg_sleep(0.2)")
        cur = await read.execute("SELECT count(*) FROM items WHERE id = %s", (item,))
        row = await cur.fetchone()
        return {"same": conn is read, "sees_own_write": bool(row and row[0])}

    @app.post("/read-then-write/{item}")
    async def read_then_write(item: int, read: ReadConnDep, conn: ConnDep) -> dict[str, Any]:
        await read.execute("SELECT pg_sleep(0.2)")
        await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'mixed')", (item,))
        return {"same": conn is read, "sees_own_write": True}

    return app


@pytest.mark.parametrize("order", ["write-then-read", "read-then-write"])
def test_read_and_write_dependencies_share_one_connection_and_never_wait_on_themselves(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    database_server: DatabaseServer,
    observer: Observer,
    unique_app_name: str,
    order: str,
) -> None:
    client = client_for(mixed_app(make_settings))
    items = [new_id() for _ in range(8)]
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, observer.count(unique_app_name))
            done.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda item: client.post(f"/{order}/{item}"), items))
    finally:
        done.set()
        watcher.join()
    assert [response.status_code for response in responses] == [200] * 8
    assert all(response.json() == {"same": True, "sees_own_write": True} for response in responses)
    assert all(row_exists(database_server.url, "items", item) for item in items)
    assert peak <= 2  # pg_stat_activity: never more backends than the pool's two


# --- overriding the public dependency replaces its aliases too -------------------------------


def test_overriding_get_conn_and_get_read_conn_replaces_their_aliases(
    database_server: DatabaseServer, client_for: ClientFor
) -> None:
    app = FastAPI()  # no pool at all: every connection must come from the overrides

    async def override_connection(name: str) -> AsyncIterator[Conn]:
        conn = await psycopg.AsyncConnection.connect(
            database_server.url, application_name=name, autocommit=True
        )
        async with conn:
            yield conn

    async def test_conn() -> AsyncIterator[Conn]:
        async for conn in override_connection("override-write"):
            yield conn

    async def test_read_conn() -> AsyncIterator[Conn]:
        async for conn in override_connection("override-read"):
            yield conn

    async def test_other_conn() -> AsyncIterator[Conn]:
        async for conn in override_connection("override-other"):
            yield conn

    async def name_of(conn: Conn) -> str:
        cur = await conn.execute("SELECT current_setting('application_name')")
        row = await cur.fetchone()
        return str(row[0]) if row else ""

    @app.get("/alias")
    async def alias(conn: ConnDep) -> str:
        return await name_of(conn)

    @app.get("/plain")
    async def plain(conn: PlainConn = Depends(get_conn)) -> str:
        return await name_of(conn)

    @app.get("/read-alias")
    async def read_alias(conn: ReadConnDep) -> str:
        return await name_of(conn)

    @app.get("/named")
    async def named(conn: OtherConnDep) -> str:
        return await name_of(conn)

    app.dependency_overrides[get_conn] = test_conn
    app.dependency_overrides[get_read_conn] = test_read_conn
    app.dependency_overrides[get_conn_for("other")] = test_other_conn
    client = client_for(app)
    assert client.get("/alias").json() == "override-write"
    assert client.get("/plain").json() == "override-write"
    assert client.get("/read-alias").json() == "override-read"
    assert client.get("/named").json() == "override-other"


# --- session-level SETs: kept by default, reset with DBPOOL_RESET_SESSION ----------------------


def set_app(settings_factory: SettingsFactory, **overrides: Any) -> FastAPI:
    settings = settings_factory(min_size=1, max_size=1, **overrides)
    app = FastAPI(lifespan=create_pool_lifespan(settings))

    @app.post("/set")
    async def set_timeout(conn: ConnDep) -> int:
        await conn.execute("SET statement_timeout = '4321ms'")  # session-level, committed
        return conn.info.backend_pid

    @app.get("/show")
    async def show(conn: ConnDep) -> dict[str, Any]:
        cur = await conn.execute("SHOW statement_timeout")
        row = await cur.fetchone()
        return {"pid": conn.info.backend_pid, "statement_timeout": row[0] if row else None}

    return app


@pytest.mark.parametrize(("reset", "seen"), [(False, "4321ms"), (True, "0")])
def test_a_session_set_reaches_the_next_request_unless_reset_session(
    make_settings: SettingsFactory, client_for: ClientFor, reset: bool, seen: str
) -> None:
    client = client_for(set_app(make_settings, reset_session=reset))
    pid = client.post("/set").json()
    after = client.get("/show").json()
    assert after["pid"] == pid  # the same backend, so only a reset can have undone it
    assert after["statement_timeout"] == seen


# --- a row factory per pool ----------------------------------------------------------------


def rows_app(settings_factory: SettingsFactory, row_factory: str) -> FastAPI:
    settings = settings_factory(min_size=1, max_size=1, row_factory=row_factory)
    app = FastAPI(lifespan=create_pool_lifespan(settings))

    @app.get("/one")
    async def one(conn: ConnDep) -> Any:
        cur = await conn.execute("SELECT 1 AS id, 'Ada' AS name")
        return await cur.fetchone()  # returned as the pool's rows are

    @app.get("/both")
    async def both(conn: ReadConnDep) -> dict[str, Any]:
        cur = await conn.execute("SELECT 1 AS id, 'Ada' AS name")
        record = await cur.fetchone()
        assert record is not None
        return {"by_position": record[1], "by_name": record["name"], "as_dict": dict(record)}

    @app.get("/tuples")
    async def tuples(conn: ConnDep) -> Any:
        conn.row_factory = psycopg.rows.tuple_row  # this request only
        cur = await conn.execute("SELECT 1 AS id, 'Ada' AS name")
        return await cur.fetchone()

    return app


def test_the_pools_row_factory_reaches_every_connection_and_comes_back(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    dicts = client_for(rows_app(make_settings, "dict"))
    assert dicts.get("/one").json() == {"id": 1, "name": "Ada"}  # the README's object
    assert dicts.get("/tuples").json() == [1, "Ada"]
    assert dicts.get("/one").json() == {"id": 1, "name": "Ada"}  # back to the pool's


def test_record_rows_port_asyncpg_row_access(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    records = client_for(rows_app(make_settings, "record"))
    assert records.get("/both").json() == {
        "by_position": "Ada",
        "by_name": "Ada",
        "as_dict": {"id": 1, "name": "Ada"},
    }
    assert records.get("/one").json() == [1, "Ada"]  # a tuple to JSON, as psycopg's rows
