"""A plain Starlette app (fastapi_dbpool.starlette) under uvicorn, with FastAPI unimportable:
commit before the response, rollback on error, 503 on exhaustion, the pool routes."""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import psycopg
import pytest

from fastapi_dbpool.testing import DatabaseServer, Observer
from tests.support import Served, serve_app

APP = "tests.integration.starlette_app:app"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def admin(database_server: DatabaseServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_server.url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS starlette_items (id bigint PRIMARY KEY, note text NOT NULL)"
        )
        yield conn


@pytest.fixture(scope="module")
def served(database_server: DatabaseServer, admin: object) -> Iterator[Served]:
    env = {
        "DBPOOL_URL": database_server.url,
        "DBPOOL_APPLICATION_NAME": "starlette-app",
        "DBPOOL_MIN_SIZE": "1",
        "DBPOOL_MAX_SIZE": "2",
        "DBPOOL_TIMEOUT": "1",
    }
    with serve_app(APP, env) as app:
        yield app


def _new_id() -> int:
    return time.time_ns() % 2**52


def _note(admin: psycopg.Connection[tuple[object, ...]], item_id: int) -> object:
    row = admin.execute("SELECT note FROM starlette_items WHERE id = %s", (item_id,)).fetchone()
    return None if row is None else row[0]


def test_the_commit_is_visible_when_the_response_arrives(
    served: Served, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    with httpx2.Client(base_url=served.base) as client:
        for _ in range(10):
            item_id = _new_id()
            assert client.post(f"/items/{item_id}").status_code == 201
            assert _note(admin, item_id) == "plain"  # no wait: committed before the answer


@pytest.mark.parametrize("block", ["", "1"], ids=["statement", "transaction-block-first"])
@pytest.mark.parametrize(("fail", "status"), [("409", 409), ("crash", 500)])
def test_an_error_keeps_nothing(
    served: Served,
    admin: psycopg.Connection[tuple[object, ...]],
    fail: str,
    status: int,
    block: str,
) -> None:
    item_id = _new_id()
    response = httpx2.post(f"{served.base}/items/{item_id}", params={"fail": fail, "block": block})
    assert response.status_code == status
    assert _note(admin, item_id) is None


def test_a_read_in_a_writing_request_shares_its_connection(
    served: Served, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    item_id = _new_id()
    response = httpx2.post(f"{served.base}/items/{item_id}/rw")
    assert response.status_code == 200
    assert response.json() == {"note": "rw", "same_backend": True}
    assert _note(admin, item_id) == "rw"


def test_a_write_block_inside_a_read_block_answers_what_happened(
    served: Served, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The write commits when its block ends; the read after it does not turn the answer into
    a "rolled back" 500 (the row is there: a client trusting the 500 would write twice)."""
    item_id = _new_id()
    response = httpx2.post(f"{served.base}/items/{item_id}/rwr")
    assert response.status_code == 200, response.text
    assert response.json() == {"note": "rwr"}
    assert _note(admin, item_id) == "rwr"


def test_a_write_block_inside_a_read_block_that_raises_keeps_nothing(
    served: Served, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The shared connection is in autocommit for the read block: the write block inside it
    must run in a transaction all the same, or its rollback would undo nothing."""
    item_id = _new_id()
    response = httpx2.post(f"{served.base}/items/{item_id}/rwr", params={"fail": "1"})
    assert response.status_code == 409, response.text
    assert _note(admin, item_id) is None


@pytest.mark.parametrize(("fail", "status", "kept"), [("", 201, True), ("1", 409, False)])
def test_a_block_inside_a_block_joins_the_requests_transaction(
    served: Served,
    admin: psycopg.Connection[tuple[object, ...]],
    fail: str,
    status: int,
    kept: bool,
) -> None:
    item_id = _new_id()
    response = httpx2.post(f"{served.base}/items/{item_id}/nested", params={"fail": fail})
    assert response.status_code == status
    expected = ("outer", "nested") if kept else (None, None)
    assert (_note(admin, item_id), _note(admin, item_id + 1)) == expected


def test_exhaustion_answers_503_json_within_the_timeout(served: Served) -> None:
    with ThreadPoolExecutor(2) as executor:
        holders = [
            executor.submit(httpx2.get, f"{served.base}/sleep", params={"seconds": 3}, timeout=10)
            for _ in range(2)
        ]
        time.sleep(0.5)  # both connections of max_size=2 are held
        started = time.monotonic()
        response = httpx2.get(f"{served.base}/sleep", params={"seconds": 0}, timeout=10)
        waited = time.monotonic() - started
        assert [holder.result().status_code for holder in holders] == [200, 200]
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {
        "detail": "database unavailable: no database connection became available in time"
    }
    assert waited < 1 + 1  # DBPOOL_TIMEOUT + 1 s


def test_the_pool_routes_answer_as_pool_router_does(
    served: Served, observer: Observer, database_server: DatabaseServer
) -> None:
    with httpx2.Client(base_url=served.base) as client:
        health = client.get("/health/db")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert client.get("/health/ready").json()["status"] == "ok"
        stats = client.get("/pool/stats").json()
        assert stats["name"] == "fastapi_dbpool"
        assert stats["counters"]["pool_max"] == 2
        metrics = client.get("/pool/metrics")
        assert metrics.status_code == 200
        assert 'dbpool_connections_max{pool="fastapi_dbpool"} 2.0' in metrics.text
        page = client.get("/pool/dashboard")
        assert page.status_code == 200 and page.text.startswith("<!doctype html>")
        assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert database_server.password
    assert database_server.password not in served.output()
    assert observer.count("starlette-app") >= 1
