"""/health/db and /pool/stats: in time, truthful, protectable, and never revealing."""

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

from fastapi_dbpool import create_pool_lifespan, pool_router
from fastapi_dbpool.stats import PoolCounters
from fastapi_dbpool.testing import DatabaseServer, Observer

from .conftest import ClientFor, SettingsFactory, build_app


def test_health_ok(make_settings: SettingsFactory, client_for: ClientFor) -> None:
    response = client_for(build_app(make_settings())).get("/health/db")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body) == {"status", "latency_ms"}


def test_health_503_in_time_while_server_down_then_200_after_restart(
    make_settings: SettingsFactory, client_for: ClientFor, controllable_server: DatabaseServer
) -> None:
    settings = make_settings(min_size=2, max_size=2, health_timeout=1.0)
    client = client_for(build_app(settings))
    assert client.get("/health/db").status_code == 200
    controllable_server.stop(mode="immediate")
    for _ in range(3):
        started = time.monotonic()
        response = client.get("/health/db")
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert set(response.json()) == {"status", "reason"}
        assert elapsed <= settings.health_timeout + 1.0
        # Stats must answer while the database is down.
        assert client.get("/pool/stats").status_code == 200
    controllable_server.start()
    deadline = time.monotonic() + 10
    while client.get("/health/db").status_code != 200:
        assert time.monotonic() < deadline, "health did not recover after the server restarted"
        time.sleep(0.2)
    assert client.get("/value").json() == {"value": 1}


def test_stats_has_every_counter_and_reading_resets_nothing(
    make_settings: SettingsFactory, client_for: ClientFor, observer: Observer, unique_app_name: str
) -> None:
    client = client_for(build_app(make_settings(min_size=2, max_size=4)))
    first = client.get("/pool/stats").json()
    assert set(first["counters"]) == set(PoolCounters.model_fields)
    assert first["counters"]["returns_bad"] == 0  # present even at zero
    for _ in range(3):
        assert client.get("/value").status_code == 200
    second = client.get("/pool/stats").json()
    third = client.get("/pool/stats").json()
    assert second["counters"]["requests_num"] == first["counters"]["requests_num"] + 3
    assert third["counters"]["requests_num"] == second["counters"]["requests_num"]
    assert third["total"] == third["counters"]["pool_size"]
    assert third["free"] == third["counters"]["pool_available"]
    assert third["in_use"] == third["total"] - third["free"] == 0
    assert third["waiting"] == 0
    assert observer.wait_for_count(unique_app_name, third["total"]) == third["total"]


def test_router_can_be_protected_by_the_apps_own_dependency(make_settings: SettingsFactory) -> None:
    def require_token(x_token: str = Header(default="")) -> None:
        if x_token != "letmein":
            raise HTTPException(401, "missing or wrong X-Token")

    app = FastAPI(lifespan=create_pool_lifespan(make_settings()))
    app.include_router(pool_router, prefix="/internal", dependencies=[Depends(require_token)])
    with TestClient(app) as client:
        for path in ("/internal/health/db", "/internal/pool/stats"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"X-Token": "letmein"}).status_code == 200
        assert client.get("/health/db").status_code == 404
        assert client.get("/pool/stats").status_code == 404


def test_endpoints_are_in_openapi_with_response_models(make_settings: SettingsFactory) -> None:
    app = build_app(make_settings())
    paths = app.openapi()["paths"]
    health = paths["/health/db"]["get"]["responses"]
    assert health["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Health"
    }
    assert "503" in health
    stats = paths["/pool/stats"]["get"]["responses"]["200"]
    assert stats["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AppPoolStats"
    }


@pytest.mark.parametrize("path", ["/health/db", "/pool/stats"])
def test_bodies_never_reveal_connection_details(
    path: str,
    make_settings: SettingsFactory,
    client_for: ClientFor,
    database_server: DatabaseServer,
) -> None:
    client = client_for(build_app(make_settings()))
    text = client.get(path).text
    for secret in filter(
        None, [database_server.password, database_server.url, "127.0.0.1", "postgresql://"]
    ):
        assert secret not in text


def test_health_reason_says_the_pool_was_busy_not_unreachable(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    # One connection, held by a slow request: the server answers, the pool cannot lend.
    settings = make_settings(min_size=1, max_size=1, health_timeout=0.5)
    client = client_for(build_app(settings))
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.get, "/sleep", params={"seconds": 2})
        time.sleep(0.5)
        started = time.monotonic()
        response = client.get("/health/db")
        elapsed = time.monotonic() - started
        assert slow.result().status_code == 200
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": "pool_timeout"}
    assert elapsed < 0.5 + 1.0


def test_health_says_cannot_connect_when_the_password_is_refused(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    database_server: DatabaseServer,
    observer: Observer,
    unique_app_name: str,
) -> None:
    role, password = f"t_health_{secrets.token_hex(4)}", secrets.token_hex(12)
    observer.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        parts = urlsplit(database_server.url)
        url = urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}"))
        settings = make_settings(url=url, min_size=1, max_size=1, health_timeout=1.0)
        client = client_for(build_app(settings))
        assert client.get("/health/db").status_code == 200
        observer.execute(f"ALTER ROLE {role} PASSWORD '{secrets.token_hex(12)}'")  # rotated
        observer.terminate(unique_app_name)
        observer.wait_for_count(unique_app_name, 0)
        response = client.get("/health/db")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "reason": "cannot_connect"}
    finally:
        observer.terminate(unique_app_name)
        observer.execute(f"DROP ROLE IF EXISTS {role}")
