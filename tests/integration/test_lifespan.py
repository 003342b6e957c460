"""The lifespan opens min_size connections, closes them all, composes, and fails fast."""

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from fastapi_dbpool import PoolSettings, create_pool_lifespan
from fastapi_dbpool.dependencies import get_database
from fastapi_dbpool.errors import PoolStartupError
from fastapi_dbpool.testing import DatabaseServer, Observer
from tests.support import free_port

from .conftest import ClientFor, SettingsFactory, build_app


def with_netloc(url: str, netloc: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=netloc))


def test_lifespan_opens_min_size_and_closes_every_connection(
    make_settings: SettingsFactory, observer: Observer, unique_app_name: str
) -> None:
    app = build_app(make_settings(min_size=3, max_size=5))
    assert observer.count(unique_app_name) == 0  # nothing at import or build time
    with TestClient(app) as client:
        assert observer.wait_for_count(unique_app_name, 3) == 3
        assert client.get("/value").json() == {"value": 1}
    assert observer.wait_for_count(unique_app_name, 0, timeout=2.0) == 0


def test_app_can_start_twice_in_a_row(
    make_settings: SettingsFactory, observer: Observer, unique_app_name: str
) -> None:
    app = build_app(make_settings())
    for _ in range(2):
        with TestClient(app) as client:
            assert client.get("/value").status_code == 200
    assert observer.wait_for_count(unique_app_name, 0, timeout=2.0) == 0


def test_two_apps_have_their_own_pools(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    observer: Observer,
    unique_app_name: str,
) -> None:
    first = client_for(build_app(make_settings(min_size=1, application_name=unique_app_name + "a")))
    second = client_for(
        build_app(make_settings(min_size=2, application_name=unique_app_name + "b"))
    )
    assert first.get("/pool/stats").json()["counters"]["pool_min"] == 1
    assert second.get("/pool/stats").json()["counters"]["pool_min"] == 2
    assert observer.wait_for_count(unique_app_name + "a", 1) == 1
    assert observer.wait_for_count(unique_app_name + "b", 2) == 2


def test_composes_with_the_apps_own_lifespan(make_settings: SettingsFactory) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def own_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        database = app.state.dbpool
        async with database.pool.connection() as conn:
            cur = await conn.execute("SELECT 41 + 1")
            row = await cur.fetchone()
        events.append(f"started with pool, query gave {row[0] if row else None}")
        yield {"greeting": "hello"}
        events.append(f"stopping, pool {database.state}")

    app = build_app(make_settings(), lifespan=own_lifespan)

    @app.get("/greeting")
    async def greeting(request: Request) -> dict[str, Any]:
        return {"greeting": request.state.greeting, "pool": (await get_database(request)).state}

    with TestClient(app) as client:
        assert client.get("/greeting").json() == {"greeting": "hello", "pool": "open"}
    assert events == ["started with pool, query gave 42", "stopping, pool open"]


def test_startup_fails_fast_on_wrong_password(
    make_settings: SettingsFactory, database_server: DatabaseServer
) -> None:
    parts = urlsplit(database_server.url)
    wrong = with_netloc(
        database_server.url, f"{parts.username}:wrong-password@{parts.hostname}:{parts.port}"
    )
    app = build_app(make_settings(url=wrong))
    started = time.monotonic()
    with pytest.raises(PoolStartupError) as caught, TestClient(app):
        pass
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert "password authentication failed" in message
    assert "check the password in url" in message  # given in code: named as the field
    assert "wrong-password" not in message


def test_startup_fails_fast_on_missing_database(
    make_settings: SettingsFactory, database_server: DatabaseServer
) -> None:
    url = urlunsplit(urlsplit(database_server.url)._replace(path="/no_such_db"))
    with (
        pytest.raises(PoolStartupError, match="create the database"),
        TestClient(build_app(make_settings(url=url))),
    ):
        pass


def test_startup_fails_fast_on_unreachable_server(
    make_settings: SettingsFactory, database_server: DatabaseServer
) -> None:
    parts = urlsplit(database_server.url)
    url = with_netloc(
        database_server.url, f"{parts.username}:{parts.password}@127.0.0.1:{free_port()}"
    )
    started = time.monotonic()
    with (
        pytest.raises(PoolStartupError, match="check that PostgreSQL is running") as caught,
        TestClient(build_app(make_settings(url=url))),
    ):
        pass
    assert time.monotonic() - started < 3
    assert database_server.password is None or database_server.password not in str(caught.value)


def test_degraded_start_reports_unhealthy_and_recovers(
    make_settings: SettingsFactory,
    controllable_server: DatabaseServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    controllable_server.stop()
    app = build_app(make_settings(fail_fast=False, min_size=1))
    caplog.set_level(logging.WARNING, logger="fastapi_dbpool")
    with TestClient(app) as client:
        assert "starting degraded" in caplog.text
        health = client.get("/health/db")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        controllable_server.start()
        deadline = time.monotonic() + 15
        while client.get("/health/db").status_code != 200:
            assert time.monotonic() < deadline, "pool did not recover after the server came up"
            time.sleep(0.2)
        assert client.get("/value").json() == {"value": 1}


def test_connections_carry_keepalive_and_tcp_user_timeout(make_settings: SettingsFactory) -> None:
    app = build_app(make_settings(keepalives_idle=12, tcp_user_timeout=7.5))

    @app.get("/params")
    async def params(request: Request) -> dict[str, str]:
        async with (await get_database(request)).pool.connection() as conn:
            return conn.info.get_parameters()

    with TestClient(app) as client:
        params_seen = client.get("/params").json()
    assert params_seen["keepalives"] == "1"
    assert params_seen["keepalives_idle"] == "12"
    assert params_seen["keepalives_interval"] == "4"
    assert params_seen["tcp_user_timeout"] == "7500"


def test_a_named_pools_startup_error_names_its_own_variable(
    make_settings: SettingsFactory, database_server: DatabaseServer
) -> None:
    url = urlunsplit(urlsplit(database_server.url)._replace(path="/no_such_db"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DBPOOL_ANALYTICS_URL", url)
        analytics = PoolSettings.for_pool("analytics", connect_timeout=2)
    app = FastAPI(lifespan=create_pool_lifespan(make_settings(), pools={"analytics": analytics}))
    with pytest.raises(PoolStartupError) as caught, TestClient(app):
        pass
    message = str(caught.value)
    assert "fix its name in DBPOOL_ANALYTICS_URL" in message
    assert "DBPOOL_URL" not in message
