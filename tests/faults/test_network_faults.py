"""Faults of the network path, through a TCP proxy: a COMMIT whose answer is lost, a path that
freezes without a reset."""

import secrets
import time
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_dbpool import ConnDep, PoolSettings, create_pool_lifespan, pool_router
from fastapi_dbpool.testing import DatabaseServer, Observer
from tests.faults.proxy import fault_proxy
from tests.faults.test_cancellation import row_exists


def proxied_app(url: str, application_name: str, **overrides: Any) -> FastAPI:
    values: dict[str, Any] = {
        "url": url,
        "application_name": application_name,
        "min_size": 1,
        "max_size": 2,
        "timeout": 2.0,
        "health_timeout": 1.0,
        "close_timeout": 2.0,
    }
    values.update(overrides)
    app = FastAPI(lifespan=create_pool_lifespan(PoolSettings(**values)))
    app.include_router(pool_router)

    @app.post("/items/{item_id}")
    async def create_item(item_id: int, conn: ConnDep) -> dict[str, int]:
        await conn.execute("INSERT INTO fault_items (id) VALUES (%s)", (item_id,))
        return {"id": item_id}

    return app


def test_a_lost_commit_answer_is_never_called_a_rollback(
    database_server: DatabaseServer, fault_table: None, unique_app_name: str
) -> None:
    with fault_proxy(database_server.url) as proxy:
        app = proxied_app(proxy.url, unique_app_name)
        with TestClient(app, raise_server_exceptions=False) as client:
            item = secrets.randbelow(2**62)
            proxy.lose_commit_answer()
            response = client.post(f"/items/{item}")
            assert proxy.commits_lost == 1
            # The server did commit: a 503 "rolled back" with Retry-After would invite a
            # duplicate write. The answer says the outcome is unknown, and invites no retry.
            assert row_exists(database_server.url, item)
            assert response.status_code == 500
            assert "outcome unknown" in response.json()["detail"]
            assert "retry-after" not in response.headers
            after = client.post(f"/items/{secrets.randbelow(2**62)}")
            assert after.status_code == 200  # the pool replaced the lost connection


def test_health_answers_within_its_timeout_when_the_path_freezes(
    database_server: DatabaseServer, fault_table: None, unique_app_name: str
) -> None:
    with fault_proxy(database_server.url) as proxy:
        app = proxied_app(proxy.url, unique_app_name, health_timeout=1.0)
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.get("/health/db").status_code == 200
            proxy.freeze()
            try:
                for _ in range(2):
                    started = time.monotonic()
                    response = client.get("/health/db")
                    elapsed = time.monotonic() - started
                    assert response.status_code == 503
                    assert response.json()["reason"] in ("timeout", "pool_timeout")
                    assert elapsed < 1.0 + 1.0  # DBPOOL_HEALTH_TIMEOUT + 1 s, not 12 s
            finally:
                proxy.thaw()


def test_a_request_waiting_on_a_frozen_path_answers_504_at_its_deadline(
    database_server: DatabaseServer,
    fault_table: None,
    unique_app_name: str,
    observer: Observer,
) -> None:
    with fault_proxy(database_server.url) as proxy:
        app = proxied_app(proxy.url, unique_app_name, deadline=1.0, timeout=5.0)
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.post(f"/items/{secrets.randbelow(2**62)}").status_code == 200
            item = secrets.randbelow(2**62)
            proxy.freeze()
            try:
                started = time.monotonic()
                response = client.post(f"/items/{item}")
                elapsed = time.monotonic() - started
            finally:
                proxy.thaw()
            # Not the TCP user timeout (30 s), not a cancel request into the frozen path.
            assert response.status_code == 504
            assert "DBPOOL_DEADLINE" in response.json()["detail"]
            assert elapsed < 1.0 + 1.0
            assert not row_exists(database_server.url, item)
            assert client.post(f"/items/{secrets.randbelow(2**62)}").status_code == 200
            # The cut connection's backend learns of it once the path is back (the FIN was
            # queued): the server holds no more than max_size backends for this app.
            assert observer.wait_for_count(unique_app_name, 2, timeout=3.0) <= 2
