"""aiosql's queries on the request's connection: the async adapter "apsycopg"."""

import gc
from typing import Any

import aiosql
import pytest
from fastapi import FastAPI, HTTPException

from fastapi_dbpool import ConnDep, create_pool_lifespan
from tests.integration.conftest import ClientFor
from tests.integrations.conftest import SettingsFactory, query

SQL = """
-- name: create_schema#
CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text NOT NULL);

-- name: add_note(id, body)!
INSERT INTO notes (id, body) VALUES (:id, :body);

-- name: get_note(id)^
SELECT id, body FROM notes WHERE id = :id;

-- name: all_notes()
SELECT id, body FROM notes ORDER BY id;

-- name: count_notes()$
SELECT count(*) FROM notes;
"""


def notes_app(settings: Any, adapter: str) -> FastAPI:
    queries: Any = aiosql.from_str(SQL, adapter)
    app = FastAPI(lifespan=create_pool_lifespan(settings))

    @app.post("/notes/{note_id}")
    async def add(note_id: int, conn: ConnDep, fail: bool = False) -> dict[str, Any]:
        await queries.create_schema(conn)
        rowcount = await queries.add_note(conn, id=note_id, body="hello")
        if fail:
            raise HTTPException(409, "rolled back, the note included")
        return {"rowcount": rowcount}

    @app.get("/notes/{note_id}")
    async def get(note_id: int, conn: ConnDep) -> dict[str, Any]:
        row = await queries.get_note(conn, id=note_id)
        rows = [each async for each in queries.all_notes(conn)]  # an async generator
        return {"one": dict(zip(["id", "body"], _values(row), strict=True)), "all": len(rows)}

    @app.get("/count")
    async def count(conn: ConnDep) -> dict[str, Any]:
        return {"count": await queries.count_notes(conn)}

    return app


def _values(row: Any) -> list[Any]:
    return list(row.values()) if isinstance(row, dict) else list(row)


@pytest.mark.parametrize("rows", ["tuple", "dict", "record"])
def test_the_async_adapter_runs_in_the_request_transaction(
    rows: str, make_settings: SettingsFactory, client_for: ClientFor, dbpool_database: str
) -> None:
    client = client_for(notes_app(make_settings(row_factory=rows), "apsycopg"))
    assert client.post("/notes/1").json() == {"rowcount": 1}
    assert client.post("/notes/2?fail=true").status_code == 409
    assert client.get("/notes/1").json() == {"one": {"id": 1, "body": "hello"}, "all": 1}
    assert query(dbpool_database, "SELECT id FROM notes") == [(1,)]  # 2 was rolled back


@pytest.mark.parametrize("rows", ["tuple", "record"])
def test_scalar_queries_read_the_first_column(
    rows: str, make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(notes_app(make_settings(row_factory=rows), "apsycopg"))
    client.post("/notes/1")
    assert client.get("/count").json() == {"count": 1}


def test_scalar_queries_fail_on_dict_rows(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    """aiosql reads a $ query's row[0]: a dict row has no key 0 (KeyError: 0, a 500)."""
    client = client_for(notes_app(make_settings(row_factory="dict"), "apsycopg"))
    client.post("/notes/1")
    assert client.get("/count").status_code == 500


def test_the_sync_adapter_on_an_async_connection_writes_nothing(
    make_settings: SettingsFactory, client_for: ClientFor, dbpool_database: str
) -> None:
    """The first way: "psycopg" is aiosql's sync adapter. On an AsyncConnection its calls
    return coroutines it never awaits: the request answers 200 and nothing is written."""
    queries: Any = aiosql.from_str(SQL, "psycopg")
    app = FastAPI(lifespan=create_pool_lifespan(make_settings()))

    @app.post("/notes/{note_id}")
    async def add(note_id: int, conn: ConnDep) -> dict[str, Any]:
        await conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
        return {"rowcount": queries.add_note(conn, id=note_id, body="lost")}

    @app.get("/notes")
    async def notes(conn: ConnDep) -> Any:
        return queries.all_notes(conn)

    client = client_for(app)
    with pytest.warns(RuntimeWarning, match="was never awaited"):
        assert client.post("/notes/1").json() == {"rowcount": -1}
        gc.collect()
    assert query(dbpool_database, "SELECT count(*) FROM notes") == [(0,)]
    with pytest.warns(RuntimeWarning, match="was never awaited"):
        assert client.get("/notes").status_code == 500
        gc.collect()
