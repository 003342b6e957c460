"""The example app (example_app.main, what `make run` serves), driven in-process end to end.

Written as a user of the plugin writes them: ``dbpool_schema`` gives the app's schema, built
once into a template; every test gets a database cloned from it (``dbpool_database``), the app
on it (``dbpool_app``) and an async client with the lifespan running (``dbpool_client``). No
test sees another's rows, and the app's lifespan seeds each test's empty table afresh.
"""

from typing import Any

import httpx2
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import example_app.main
from example_app.main import SCHEMA, SEED_USERS, create_app
from fastapi_dbpool import PoolSettings
from fastapi_dbpool.testing import Observer


@pytest.fixture(scope="session")
def dbpool_schema() -> Any:
    """The users table, as the app's own lifespan creates it."""
    return lambda conn: conn.execute(SCHEMA)


@pytest.fixture
def dbpool_settings(dbpool_database: str, unique_app_name: str) -> PoolSettings:
    # One connection: every request reuses the one the previous request gave back.
    return PoolSettings(
        url=dbpool_database,
        application_name=unique_app_name,
        min_size=1,
        max_size=1,
        timeout=2.0,
        open_timeout=5.0,
        close_timeout=2.0,
    )


@pytest.fixture
def dbpool_app(dbpool_settings: PoolSettings) -> FastAPI:
    return create_app(dbpool_settings)


@pytest.fixture
def example_db_url(dbpool_database: str) -> str:
    """This test's own database, empty unless the module's dbpool_schema says otherwise
    (tests/integration/test_asyncpg_port.py imports this fixture)."""
    return dbpool_database


def query(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Ask the database directly, on a connection of its own outside the app's pool."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def count_users(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM users")[0][0])


async def test_startup_seeds_the_table(
    dbpool_client: httpx2.AsyncClient, dbpool_database: str
) -> None:
    response = await dbpool_client.get("/users")
    assert response.status_code == 200
    assert response.json() == [
        {"id": n, "name": name, "email": email}
        for n, (name, email) in enumerate(SEED_USERS, start=1)
    ]
    assert count_users(dbpool_database) == len(SEED_USERS)


async def test_list_pages_with_limit_and_offset(dbpool_client: httpx2.AsyncClient) -> None:
    page = (await dbpool_client.get("/users", params={"limit": 2, "offset": 1})).json()
    assert [user["id"] for user in page] == [2, 3]
    assert (await dbpool_client.get("/users", params={"offset": 100})).json() == []
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}):
        assert (await dbpool_client.get("/users", params=bad)).status_code == 422


async def test_get_one_user_and_404(dbpool_client: httpx2.AsyncClient) -> None:
    response = await dbpool_client.get("/users/1")
    assert response.status_code == 200
    assert response.json() == {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"}

    missing = await dbpool_client.get("/users/999999")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "user 999999 not found"}


async def test_create_answers_201_and_is_committed_before_the_response(
    dbpool_client: httpx2.AsyncClient, dbpool_database: str
) -> None:
    body = {"name": "Edsger Dijkstra", "email": "edsger@example.com"}
    response = await dbpool_client.post("/users", json=body)
    assert response.status_code == 201
    created = response.json()
    assert created == {"id": created["id"], **body}
    # Another connection sees the row as soon as the client has the 201.
    rows = query(dbpool_database, "SELECT name, email FROM users WHERE id = %s", (created["id"],))
    assert rows == [(body["name"], body["email"])]
    assert (await dbpool_client.get(f"/users/{created['id']}")).json() == created


async def test_duplicate_email_answers_409_and_writes_nothing(
    dbpool_client: httpx2.AsyncClient, dbpool_database: str
) -> None:
    before = count_users(dbpool_database)
    response = await dbpool_client.post(
        "/users", json={"name": "Ada again", "email": "ada@example.com"}
    )
    assert response.status_code == 409
    assert response.json() == {"detail": "a user with email ada@example.com already exists"}
    assert count_users(dbpool_database) == before
    # The pool's only connection was rolled back, not left in an aborted transaction.
    assert (await dbpool_client.get("/users/1")).status_code == 200
    created = await dbpool_client.post("/users", json={"name": "B", "email": "b@example.com"})
    assert created.status_code == 201
    assert count_users(dbpool_database) == before + 1


async def test_invalid_body_answers_422(
    dbpool_client: httpx2.AsyncClient, dbpool_database: str
) -> None:
    before = count_users(dbpool_database)
    empty_name = {"name": "", "email": "x@example.com"}
    assert (await dbpool_client.post("/users", json=empty_name)).status_code == 422
    assert (await dbpool_client.post("/users", json={"name": "No email"})).status_code == 422
    assert count_users(dbpool_database) == before


async def test_delete_answers_204_then_404(
    dbpool_client: httpx2.AsyncClient, dbpool_database: str
) -> None:
    response = await dbpool_client.delete("/users/2")
    assert response.status_code == 204
    assert response.content == b""
    assert query(dbpool_database, "SELECT 1 FROM users WHERE id = 2") == []

    again = await dbpool_client.delete("/users/2")
    assert again.status_code == 404
    assert again.json() == {"detail": "user 2 not found"}
    assert (await dbpool_client.get("/users/2")).status_code == 404


async def test_pool_router_is_mounted(dbpool_client: httpx2.AsyncClient) -> None:
    assert (await dbpool_client.get("/health/db")).json()["status"] == "ok"
    stats = (await dbpool_client.get("/pool/stats")).json()
    assert stats["status"] == "open"
    assert stats["counters"]["pool_max"] == 1


def test_restart_keeps_the_data_and_does_not_seed_again(dbpool_settings: PoolSettings) -> None:
    with TestClient(create_app(dbpool_settings)) as first:
        assert first.delete("/users/1").status_code == 204
    with TestClient(create_app(dbpool_settings)) as second:
        assert [user["id"] for user in second.get("/users").json()] == [2, 3]


def test_connections_are_the_apps_and_close_at_shutdown(
    dbpool_settings: PoolSettings, observer: Observer, unique_app_name: str
) -> None:
    with TestClient(create_app(dbpool_settings)) as client:
        assert client.get("/users").status_code == 200
        assert observer.count(unique_app_name) == 1
    assert observer.wait_for_count(unique_app_name, 0) == 0


def test_creating_the_app_reads_no_settings_and_connects_to_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DBPOOL_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = create_app()
    assert not hasattr(app.state, "dbpool")
    assert set(app.openapi()["paths"]) == {
        "/users",
        "/users/count",
        "/users/{user_id}",
        "/health/db",
        "/health/ready",
        "/pool/stats",
        "/pool/metrics",
        "/pool/dashboard",
    }


async def test_count_runs_in_a_read_only_transaction_and_welcome_follows_the_commit(
    dbpool_client: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    before = (await dbpool_client.get("/users/count")).json()
    caplog.set_level("INFO", logger="example_app")
    body = {"name": "Barbara Liskov", "email": "bl@example.org"}
    created = await dbpool_client.post("/users", json=body)
    assert created.status_code == 201
    assert (await dbpool_client.get("/users/count")).json() == before + 1
    assert f"welcome sent to user {created.json()['id']}" in caplog.text
    duplicate = await dbpool_client.post("/users", json={**body, "name": "B. Liskov"})
    assert duplicate.status_code == 409
    assert caplog.text.count("welcome sent") == 1  # none for the rolled-back one


@pytest.mark.parametrize("dbpool_app", [example_app.main.app])  # not create_app(dbpool_settings)
def test_the_module_level_app_reads_dbpool_url_at_startup(
    dbpool_test_client: TestClient, dbpool_database: str
) -> None:
    """The sync flavour, on `make run`'s app: DBPOOL_URL points at this test's database."""
    created = dbpool_test_client.post("/users", json={"name": "Env", "email": "env@example.com"})
    assert created.status_code == 201
    assert query(
        dbpool_database, "SELECT email FROM users WHERE id = %s", (created.json()["id"],)
    ) == [("env@example.com",)]
