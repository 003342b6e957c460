"""DBPOOL_READ_ONLY_GETS: the card's GET through Depends(get_conn) at one round trip, and what
a GET that writes gets."""

import secrets
from typing import Any

import pytest
from fastapi import FastAPI
from psycopg import errors

from fastapi_dbpool import ConnDep, PoolDep, PoolSettings, SyncConnDep, create_pool_lifespan
from fastapi_dbpool.testing import Observer

from .conftest import ClientFor, SettingsFactory, row_exists

INSERT = "INSERT INTO items (id, note) VALUES (%s, 'read only gets')"


def gets_app(settings: PoolSettings) -> FastAPI:
    app = FastAPI(lifespan=create_pool_lifespan(settings))

    @app.get("/users/{item_id}")
    async def read(item_id: int, conn: ConnDep) -> dict[str, Any]:
        cur = await conn.execute("SELECT count(*) FROM items WHERE id = %s", (item_id,))
        row = await cur.fetchone()
        return {
            "count": row[0] if row else None,
            "autocommit": conn.autocommit,
            "status": conn.info.transaction_status.name,
        }

    @app.get("/sneaky/{item_id}")
    async def sneaky_write(item_id: int, conn: ConnDep) -> None:
        await conn.execute(INSERT, (item_id,))

    @app.post("/users/{item_id}")
    async def write(item_id: int, conn: ConnDep) -> dict[str, str]:
        await conn.execute(INSERT, (item_id,))
        return {"status": conn.info.transaction_status.name}

    @app.post("/sync/{item_id}")
    def write_sync(item_id: int, conn: SyncConnDep) -> None:
        conn.execute(INSERT, (item_id,))

    @app.post("/raw/{item_id}")
    async def raw(item_id: int, pool: PoolDep) -> dict[str, str]:
        async with pool.connection() as conn:
            try:
                await conn.execute(INSERT, (item_id,))
            except errors.ReadOnlySqlTransaction:
                return {"raw": "read only"}
        return {"raw": "written"}

    return app


@pytest.fixture
def client(make_settings: SettingsFactory, client_for: ClientFor) -> Any:
    return client_for(gets_app(make_settings(min_size=1, max_size=1, read_only_gets=True)))


def test_a_get_through_get_conn_is_one_statement_in_autocommit(
    client: Any, observer: Observer, unique_app_name: str
) -> None:
    item = secrets.randbelow(2**62)
    answer = client.get(f"/users/{item}").json()
    assert answer == {"count": 0, "autocommit": True, "status": "IDLE"}
    # The server's own view: the backend's last statement is the SELECT, no COMMIT after it.
    (backend,) = observer.backends(unique_app_name)
    assert str(backend["query"]).startswith("SELECT count(*)")


def test_a_get_that_writes_answers_500_and_writes_nothing(client: Any, database_url: str) -> None:
    item = secrets.randbelow(2**62)
    response = client.get(f"/sneaky/{item}")
    assert response.status_code == 500
    assert "read only" in response.json()["detail"]
    assert not row_exists(database_url, "items", item)


def test_other_methods_run_one_read_write_transaction(client: Any, database_url: str) -> None:
    item = secrets.randbelow(2**62)
    response = client.post(f"/users/{item}")
    assert response.json() == {"status": "INTRANS"}
    assert row_exists(database_url, "items", item)
    sync_item = secrets.randbelow(2**62)
    assert client.post(f"/sync/{sync_item}").status_code == 200
    assert row_exists(database_url, "items", sync_item)


def test_the_raw_pool_is_read_only_unless_told(client: Any, database_url: str) -> None:
    item = secrets.randbelow(2**62)
    assert client.post(f"/raw/{item}").json() == {"raw": "read only"}
    assert not row_exists(database_url, "items", item)


@pytest.fixture
def database_url(make_settings: SettingsFactory) -> str:
    return make_settings().conninfo()
