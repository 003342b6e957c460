"""The app's own connection set-up against the real server: a configure hook on every
connection the pool ever lends, a reset hook, a password provider through a password
rotation, and clear failures that never show a secret."""

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg import AsyncConnection
from psycopg.types.composite import CompositeInfo, register_composite

from fastapi_dbpool import ConnDep, SettingsError, create_pool_lifespan, pool_router
from fastapi_dbpool.connection import PooledConnection
from fastapi_dbpool.errors import PoolStartupError
from fastapi_dbpool.testing import DatabaseServer, Observer
from tests.integration.conftest import ClientFor, SettingsFactory, url_without_password

Conn = AsyncConnection[Any]


def hook_app(settings: Any, **lifespan: Any) -> FastAPI:
    app = FastAPI(lifespan=create_pool_lifespan(settings, **lifespan))
    app.include_router(pool_router)

    @app.get("/point")
    async def point(conn: ConnDep) -> dict[str, Any]:
        cur = await conn.execute("SELECT '(1,2)'::hook_point, pg_backend_pid()")
        row = await cur.fetchone()
        assert row is not None
        value, pid = row
        return {"type": type(value).__name__, "x": getattr(value, "x", None), "pid": pid}

    @app.get("/dirty")
    async def dirty(conn: ConnDep) -> dict[str, Any]:
        # A session-level setting, committed with the request: it outlives the request.
        await conn.execute("SELECT set_config('app.marker', 'dirty', false)")
        return {"pid": conn.info.backend_pid}

    @app.get("/marker")
    async def marker(conn: ConnDep) -> dict[str, Any]:
        cur = await conn.execute("SELECT current_setting('app.marker', true), pg_backend_pid()")
        row = await cur.fetchone()
        assert row is not None
        return {"marker": row[0], "pid": row[1]}

    @app.get("/hold")
    async def hold(conn: ConnDep, seconds: float = 0.3) -> dict[str, Any]:
        await conn.execute("SELECT pg_sleep(%s)", (seconds,))
        return {"pid": conn.info.backend_pid}

    return app


@pytest.fixture(scope="module", autouse=True)
def hook_point(database_server: DatabaseServer) -> None:
    with psycopg.connect(database_server.url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        conn.execute(
            "DO $$ BEGIN CREATE TYPE hook_point AS (x int, y int); "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )


def test_a_type_registered_in_configure_is_on_every_connection_ever_lent(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    observer: Observer,
    unique_app_name: str,
) -> None:
    configured: set[int] = set()

    async def register_point(conn: Conn) -> None:
        info = await CompositeInfo.fetch(conn, "hook_point")  # a query: left in a transaction
        assert info is not None
        register_composite(info, conn)
        configured.add(conn.info.backend_pid)

    settings = make_settings(min_size=2, max_size=2, max_lifetime=1.0, configure=register_point)
    client = client_for(hook_app(settings))
    seen: set[int] = set()
    # max_lifetime rotation: connections older than 1 s are replaced as they come back.
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        body = client.get("/point").json()
        assert body["type"] == "hook_point" and body["x"] == 1
        seen.add(body["pid"])
        time.sleep(0.05)
    assert len(seen) > 2, "no connection was replaced by max_lifetime"
    # An outage: every backend of the pool is killed; the pool reconnects.
    assert observer.terminate(unique_app_name) >= 1
    before_outage = set(seen)
    after: set[int] = set()
    deadline = time.monotonic() + 5
    while len(after) < 2 and time.monotonic() < deadline:
        response = client.get("/point")
        if response.status_code == 200:
            body = response.json()
            assert body["type"] == "hook_point"
            after.add(body["pid"])
        else:
            assert response.status_code == 503  # a killed connection, answered once
    assert after and not after & before_outage
    assert seen | after <= configured  # every connection lent went through the hook


def test_what_configure_sets_on_the_session_stays_and_is_committed(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    async def set_marker(conn: Conn) -> None:
        await conn.execute("SELECT set_config('app.marker', 'configured', false)")

    settings = make_settings(min_size=1, max_size=1, configure=set_marker)
    client = client_for(hook_app(settings))
    for _ in range(3):
        assert client.get("/marker").json()["marker"] == "configured"


def test_the_lifespan_gives_hooks_to_every_pool_without_its_own(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    calls: list[str] = []

    async def register_point(conn: Conn) -> None:
        info = await CompositeInfo.fetch(conn, "hook_point")
        assert info is not None
        register_composite(info, conn)
        calls.append("configure")

    app = hook_app(make_settings(min_size=1, max_size=1), configure=register_point)
    client = client_for(app)
    assert client.get("/point").json()["type"] == "hook_point"
    assert calls

    async def own(conn: Conn) -> None:
        calls.append("own")

    calls.clear()
    app = hook_app(make_settings(min_size=1, max_size=1, configure=own), configure=register_point)
    client_for(app).get("/marker")
    assert calls and set(calls) == {"own"}  # a pool's own hook wins over the lifespan's


def marker_after_reset(client: TestClient, pid: int, wanted: tuple[object, ...]) -> object:
    """app.marker on the connection pid once it reads one of wanted, or after 2 s: the reset
    runs in the pool's worker, after the response."""
    deadline = time.monotonic() + 2
    while True:
        body = client.get("/marker").json()
        assert body["pid"] == pid  # the same connection
        if body["marker"] in wanted or time.monotonic() > deadline:
            return body["marker"]


def test_reset_session_sets_what_configure_set_again(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    async def set_marker(conn: Conn) -> None:
        await conn.execute("SELECT set_config('app.marker', 'configured', false)")

    settings = make_settings(min_size=1, max_size=1, configure=set_marker, reset_session=True)
    client = client_for(hook_app(settings))
    pid = client.get("/dirty").json()["pid"]  # a session-level SET that RESET ALL undoes
    marker = marker_after_reset(client, pid, ("configured",))
    assert marker == "configured"  # neither the request's "dirty" nor RESET ALL's ""


def test_a_reset_hook_runs_on_every_connection_given_back(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    async def forget_marker(conn: Conn) -> None:
        await conn.execute("RESET app.marker")

    settings = make_settings(min_size=1, max_size=1, reset=forget_marker)
    client = client_for(hook_app(settings))
    pid = client.get("/dirty").json()["pid"]
    marker = marker_after_reset(client, pid, ("", None))
    assert marker in ("", None)


def test_a_raising_configure_fails_startup_naming_the_hook_never_the_password(
    make_settings: SettingsFactory, database_server: DatabaseServer
) -> None:
    async def careless(conn: Conn) -> None:
        # A hook whose error shows the connection string it was given.
        raise RuntimeError(f"vector extension missing on {database_server.url}")

    app = hook_app(make_settings(configure=careless, open_timeout=2.0))
    with pytest.raises(PoolStartupError) as caught, TestClient(app):
        pass
    message = str(caught.value)
    assert "configure tests." in message  # given in code: named as the field
    assert f"{__name__}:test_a_raising_configure" in message
    assert "vector extension missing" in message
    assert database_server.password
    assert database_server.password not in message


def test_a_configure_that_leaves_a_failed_transaction_fails_startup_naming_it(
    make_settings: SettingsFactory,
) -> None:
    """A hook that swallows an SQL error leaves its connection unusable (every statement
    would fail until a rollback): refused as a failed set-up, never lent."""

    async def swallowing(conn: Conn) -> None:
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            await conn.execute("SELECT 1 / 0")

    app = hook_app(make_settings(configure=swallowing, open_timeout=2.0))
    with pytest.raises(PoolStartupError) as caught, TestClient(app):
        pass
    message = str(caught.value)
    assert f"{__name__}:test_a_configure_that_leaves_a_failed_transaction" in message
    assert "left the connection in a failed transaction" in message


def test_a_configure_that_starts_failing_answers_503_and_logs_the_hook(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    observer: Observer,
    unique_app_name: str,
    caplog: pytest.LogCaptureFixture,
    database_server: DatabaseServer,
) -> None:
    failing = {"now": False}

    async def flaky(conn: Conn) -> None:
        if failing["now"]:
            raise RuntimeError(f"lookup failed for {database_server.url}")

    client = client_for(hook_app(make_settings(min_size=1, max_size=1, configure=flaky)))
    assert client.get("/marker").status_code == 200
    failing["now"] = True
    caplog.set_level(logging.ERROR, logger="fastapi_dbpool")
    observer.terminate(unique_app_name)
    started = time.monotonic()
    statuses = {client.get("/marker").status_code for _ in range(2)}
    assert statuses == {503}
    assert time.monotonic() - started < 2 * (1.0 + 1.0)  # DBPOOL_TIMEOUT + 1 s each
    assert client.get("/health/db").json()["reason"] == "cannot_connect"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"{__name__}:test_a_configure_that_starts_failing" in logged
    assert "configure tests." in logged and "connection is discarded" in logged
    assert database_server.password
    assert database_server.password not in logged
    failing["now"] = False
    deadline = time.monotonic() + 5
    while client.get("/marker").status_code != 200:
        assert time.monotonic() < deadline, "the pool did not recover once the hook worked"
        time.sleep(0.1)


async def refuse_every_connection(conn: Conn) -> None:
    """A configure hook named by DBPOOL_CONFIGURE in the environment test below."""
    raise RuntimeError("no such extension: vector")


def test_a_hook_from_the_environment_is_imported_and_named_by_its_variable(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBPOOL_CONFIGURE", f"{__name__}:refuse_every_connection")
    settings = make_settings(open_timeout=2.0)
    assert settings.configure is refuse_every_connection
    with pytest.raises(PoolStartupError) as caught, TestClient(hook_app(settings)):
        pass
    assert f"DBPOOL_CONFIGURE {__name__}:refuse_every_connection failed" in str(caught.value)
    monkeypatch.setenv("DBPOOL_CONFIGURE", f"{__name__}:no_such_hook")
    with pytest.raises(SettingsError) as refused:
        make_settings()
    assert "DBPOOL_CONFIGURE: Invalid python path" in str(refused.value)
    assert "give module:function" in str(refused.value)


def test_without_hooks_connections_are_made_as_before(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    app = hook_app(make_settings(min_size=1, max_size=1))
    client_for(app)
    # No hook, no provider: psycopg's own connect, a static kwargs dict, no reset callback.
    pool = app.state.dbpool.pool
    assert pool.connection_class is PooledConnection
    assert isinstance(pool.kwargs, dict)


# -- rotating credentials -----------------------------------------------------------------


@pytest.fixture
def rotating_role(database_server: DatabaseServer, observer: Observer) -> Iterator[str]:
    """A login role of its own (the tests change its password), dropped after the test."""
    role = f"rot_{secrets.token_hex(4)}"
    observer.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'first-{role}'")
    try:
        yield role
    finally:
        observer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        observer.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_password_rotated_mid_run_fails_no_request(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    observer: Observer,
    unique_app_name: str,
    database_server: DatabaseServer,
    rotating_role: str,
) -> None:
    current = {"password": f"first-{rotating_role}"}
    handed_out: list[str] = []

    async def token() -> str:  # as an IAM token or a Vault lease would be fetched
        await asyncio.sleep(0)
        handed_out.append(current["password"])
        return current["password"]

    settings = make_settings(
        url=url_without_password(database_server.url, rotating_role),
        min_size=2,
        max_size=4,
        password_provider=token,
    )
    client = client_for(hook_app(settings))
    old = {client.get("/hold", params={"seconds": 0}).json()["pid"] for _ in range(6)}
    assert observer.wait_for_count(unique_app_name, 2) == 2

    observer.execute(f"ALTER ROLE {rotating_role} PASSWORD 'second-{rotating_role}'")
    current["password"] = f"second-{rotating_role}"

    # The existing connections keep serving; four at once make the pool open two more.
    with ThreadPoolExecutor(4) as executor:
        answers = list(executor.map(lambda _: client.get("/hold"), range(8)))
    assert [answer.status_code for answer in answers] == [200] * 8
    pids = {answer.json()["pid"] for answer in answers}
    assert pids - old, "no new connection was opened after the rotation"
    backends = {backend["pid"] for backend in observer.backends(unique_app_name)}
    assert old <= backends  # the connections made with the old password are untouched
    assert handed_out[-1] == f"second-{rotating_role}"
    assert handed_out.count(f"second-{rotating_role}") == len(backends - old)


def test_a_failing_password_provider_fails_startup_naming_it(
    make_settings: SettingsFactory, database_server: DatabaseServer, rotating_role: str
) -> None:
    def vault() -> str:
        raise ConnectionError("vault sealed")

    settings = make_settings(
        url=url_without_password(database_server.url, rotating_role), password_provider=vault
    )
    with pytest.raises(PoolStartupError) as caught, TestClient(hook_app(settings)):
        pass
    message = str(caught.value)
    assert "password_provider tests." in message
    assert f"{__name__}:test_a_failing_password_provider" in message
    assert "vault sealed" in message


def test_a_provider_failing_at_run_time_answers_503_then_recovers_and_never_shows_a_secret(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    observer: Observer,
    unique_app_name: str,
    database_server: DatabaseServer,
    rotating_role: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = f"first-{rotating_role}"
    state = {"failing": False}

    def token() -> str:
        if state["failing"]:
            raise ConnectionError(f"token service refused; last token was {password}")
        return password

    settings = make_settings(
        url=url_without_password(database_server.url, rotating_role),
        min_size=1,
        max_size=1,
        password_provider=token,
    )
    client = client_for(hook_app(settings))
    assert client.get("/marker").status_code == 200
    state["failing"] = True
    caplog.set_level(logging.DEBUG)
    observer.terminate(unique_app_name)
    response = client.get("/marker")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    health = client.get("/health/db")
    assert health.json()["reason"] == "cannot_connect"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "password_provider tests." in logged
    assert password not in logged + response.text + health.text
    state["failing"] = False
    deadline = time.monotonic() + 5
    while client.get("/marker").status_code != 200:
        assert time.monotonic() < deadline, "the pool did not recover once the provider worked"
        time.sleep(0.1)


def test_a_configure_that_never_returns_fails_startup_within_the_hook_timeout(
    make_settings: SettingsFactory,
) -> None:
    async def stuck(conn: Conn) -> None:
        await asyncio.sleep(3600)  # waits on a lock or a service that never answers

    app = hook_app(make_settings(configure=stuck, hook_timeout=0.5, open_timeout=2.0))
    started = time.monotonic()
    with pytest.raises(PoolStartupError) as caught, TestClient(app):
        pass
    assert time.monotonic() - started < 0.5 + 2.0
    message = str(caught.value)
    assert f"configure {__name__}:test_a_configure_that_never_returns" in message
    assert "did not return within hook_timeout (0.5 s)" in message


def test_an_async_provider_that_never_returns_fails_startup_naming_it(
    make_settings: SettingsFactory, database_server: DatabaseServer, rotating_role: str
) -> None:
    async def vault() -> str:
        await asyncio.sleep(3600)
        return "never"

    settings = make_settings(
        url=url_without_password(database_server.url, rotating_role),
        password_provider=vault,
        hook_timeout=0.5,
    )
    started = time.monotonic()
    with pytest.raises(PoolStartupError) as caught, TestClient(hook_app(settings)):
        pass
    assert time.monotonic() - started < 0.5 + 2.0
    assert "password_provider tests." in str(caught.value)
    assert "did not return within hook_timeout" in str(caught.value)


def test_a_configure_hung_at_run_time_answers_503_and_the_pool_recovers(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    observer: Observer,
    unique_app_name: str,
) -> None:
    state = {"hang": False}

    async def sometimes_stuck(conn: Conn) -> None:
        if state["hang"]:
            await asyncio.sleep(3600)

    settings = make_settings(min_size=1, max_size=1, configure=sometimes_stuck, hook_timeout=0.5)
    client = client_for(hook_app(settings))
    assert client.get("/marker").status_code == 200
    state["hang"] = True
    observer.terminate(unique_app_name)
    started = time.monotonic()
    assert client.get("/marker").status_code == 503
    assert time.monotonic() - started < 1.0 + 1.0  # DBPOOL_TIMEOUT + 1 s
    state["hang"] = False
    deadline = time.monotonic() + 5  # the stuck attempt is given up after 0.5 s, then retried
    while client.get("/marker").status_code != 200:
        assert time.monotonic() < deadline, "a hung configure kept the pool down"
        time.sleep(0.1)


def test_a_blocking_sync_provider_never_freezes_the_event_loop(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    database_server: DatabaseServer,
    rotating_role: str,
) -> None:
    password = f"first-{rotating_role}"
    state = {"slow": False}

    def token_service() -> str:
        if state["slow"]:
            time.sleep(1.5)  # a blocking HTTP call for a token
        return password

    settings = make_settings(
        url=url_without_password(database_server.url, rotating_role),
        min_size=1,
        max_size=2,
        password_provider=token_service,
    )
    app = hook_app(settings)

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    client = client_for(app)
    state["slow"] = True
    with ThreadPoolExecutor(2) as executor:
        # Two at once: the second needs a new connection, whose provider call blocks 1.5 s.
        holds = [executor.submit(client.get, "/hold", params={"seconds": 0.2}) for _ in range(2)]
        time.sleep(0.3)
        started = time.monotonic()
        assert client.get("/ping").status_code == 200
        ping_took = time.monotonic() - started
        assert [hold.result().status_code for hold in holds] == [200, 200]
    assert ping_took < 0.5, f"the event loop was blocked for {ping_took:.2f} s"
