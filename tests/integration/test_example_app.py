"""The example app (example_app.main, what `make run` serves), driven in-process end to end.

It runs in its own database, created for this module, so its users table touches nothing else;
each test drops the table first, so the app's lifespan creates and seeds it afresh.
"""

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from example_app.main import SEED_USERS, create_app
from fastapi_dbpool import PoolSettings
from fastapi_dbpool.testing import DatabaseServer, Observer


@pytest.fixture(scope="module")
def example_db_url(database_server: DatabaseServer) -> Iterator[str]:
    """A database of its own, owned by the app's role; dropped after the module."""
    name = f"example_app_{secrets.token_hex(4)}"
    owner = conninfo_to_dict(database_server.url).get("user")
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if owner:
        create += sql.SQL(" OWNER {}").format(sql.Identifier(str(owner)))
    with psycopg.connect(database_server.admin_url, autocommit=True) as admin:
        admin.execute(create)
    try:
        yield make_conninfo(database_server.url, dbname=name)
    finally:
        with psycopg.connect(database_server.admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def settings(example_db_url: str, unique_app_name: str) -> PoolSettings:
    # One connection: every request reuses the one the previous request gave back.
    return PoolSettings(
        url=example_db_url,
        application_name=unique_app_name,
        min_size=1,
        max_size=1,
        timeout=2.0,
        open_timeout=5.0,
        close_timeout=2.0,
    )


@pytest.fixture
def client(example_db_url: str, settings: PoolSettings) -> Iterator[TestClient]:
    """The example app with its lifespan running, on a users table created afresh."""
    query(example_db_url, "DROP TABLE IF EXISTS users")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def query(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Ask the database directly, on a connection of its own outside the app's pool."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def count_users(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM users")[0][0])


def test_startup_creates_and_seeds_the_table(client: TestClient, example_db_url: str) -> None:
    response = client.get("/users")
    assert response.status_code == 200
    assert response.json() == [
        {"id": n, "name": name, "email": email}
        for n, (name, email) in enumerate(SEED_USERS, start=1)
    ]
    assert count_users(example_db_url) == len(SEED_USERS)


def test_list_pages_with_limit_and_offset(client: TestClient) -> None:
    page = client.get("/users", params={"limit": 2, "offset": 1}).json()
    assert [user["id"] for user in page] == [2, 3]
    assert client.get("/users", params={"offset": 100}).json() == []
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}):
        assert client.get("/users", params=bad).status_code == 422


def test_get_one_user_and_404(client: TestClient) -> None:
    response = client.get("/users/1")
    assert response.status_code == 200
    assert response.json() == {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"}

    missing = client.get("/users/999999")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "user 999999 not found"}


def test_create_answers_201_and_is_committed_before_the_response(
    client: TestClient, example_db_url: str
) -> None:
    body = {"name": "Edsger Dijkstra", "email": "edsger@example.com"}
    response = client.post("/users", json=body)
    assert response.status_code == 201
    created = response.json()
    assert created == {"id": created["id"], **body}
    # Another connection sees the row as soon as the client has the 201.
    rows = query(example_db_url, "SELECT name, email FROM users WHERE id = %s", (created["id"],))
    assert rows == [(body["name"], body["email"])]
    assert client.get(f"/users/{created['id']}").json() == created


def test_duplicate_email_answers_409_and_writes_nothing(
    client: TestClient, example_db_url: str
) -> None:
    before = count_users(example_db_url)
    response = client.post("/users", json={"name": "Ada again", "email": "ada@example.com"})
    assert response.status_code == 409
    assert response.json() == {"detail": "a user with email ada@example.com already exists"}
    assert count_users(example_db_url) == before
    # The pool's only connection was rolled back, not left in an aborted transaction.
    assert client.get("/users/1").status_code == 200
    assert client.post("/users", json={"name": "B", "email": "b@example.com"}).status_code == 201
    assert count_users(example_db_url) == before + 1


def test_invalid_body_answers_422(client: TestClient, example_db_url: str) -> None:
    before = count_users(example_db_url)
    assert client.post("/users", json={"name": "", "email": "x@example.com"}).status_code == 422
    assert client.post("/users", json={"name": "No email"}).status_code == 422
    assert count_users(example_db_url) == before


def test_delete_answers_204_then_404(client: TestClient, example_db_url: str) -> None:
    response = client.delete("/users/2")
    assert response.status_code == 204
    assert response.content == b""
    assert query(example_db_url, "SELECT 1 FROM users WHERE id = 2") == []

    again = client.delete("/users/2")
    assert again.status_code == 404
    assert again.json() == {"detail": "user 2 not found"}
    assert client.get("/users/2").status_code == 404


def test_pool_router_is_mounted(client: TestClient) -> None:
    assert client.get("/health/db").json()["status"] == "ok"
    stats = client.get("/pool/stats").json()
    assert stats["status"] == "open"
    assert stats["counters"]["pool_max"] == 1


def test_restart_keeps_the_data_and_does_not_seed_again(
    example_db_url: str, settings: PoolSettings
) -> None:
    query(example_db_url, "DROP TABLE IF EXISTS users")
    with TestClient(create_app(settings)) as first:
        assert first.delete("/users/1").status_code == 204
    with TestClient(create_app(settings)) as second:
        assert [user["id"] for user in second.get("/users").json()] == [2, 3]


def test_connections_are_the_apps_and_close_at_shutdown(
    example_db_url: str, settings: PoolSettings, observer: Observer, unique_app_name: str
) -> None:
    with TestClient(create_app(settings)) as client:
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
    }


def test_count_runs_in_a_read_only_transaction_and_welcome_follows_the_commit(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    before = client.get("/users/count").json()
    caplog.set_level("INFO", logger="example_app")
    created = client.post("/users", json={"name": "Barbara Liskov", "email": "bl@example.org"})
    assert created.status_code == 201
    assert client.get("/users/count").json() == before + 1
    assert f"welcome sent to user {created.json()['id']}" in caplog.text
    duplicate = client.post("/users", json={"name": "B. Liskov", "email": "bl@example.org"})
    assert duplicate.status_code == 409
    assert caplog.text.count("welcome sent") == 1  # none for the rolled-back one
