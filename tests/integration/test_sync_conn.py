"""get_sync_conn: def endpoints get get_conn's guarantees, and a burst cannot deadlock them."""

import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest
from fastapi import BackgroundTasks, FastAPI, HTTPException
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from fastapi_dbpool import (
    ConnDep,
    PoolSettings,
    SyncConnDep,
    create_pool_lifespan,
    pool_router,
)
from fastapi_dbpool._sync_pool import SyncConnection, _Handover
from fastapi_dbpool.testing import DatabaseServer, Observer

from .conftest import ClientFor, SettingsFactory, row_exists, url_without_password
from .test_exhaustion import PeakSampler


def new_id() -> int:
    return secrets.randbelow(2**62)


def sync_name(app_name: str) -> str:
    """The application_name of the sync pool's connections."""
    return f"{app_name[:58]}:sync"


def build_sync_app(settings: PoolSettings, seen: dict[int, bool] | None = None) -> FastAPI:
    """def endpoints on SyncConnDep, and one async endpoint on ConnDep."""
    app = FastAPI(lifespan=create_pool_lifespan(settings))
    app.include_router(pool_router)
    url = settings.conninfo()

    def visible(item_id: int) -> None:
        # After the response was sent: was the row committed by then?
        if seen is not None:
            seen[item_id] = row_exists(url, "items", item_id)

    @app.post("/items/{item_id}")
    def create_item(
        item_id: int, conn: SyncConnDep, background: BackgroundTasks, fail: str = ""
    ) -> dict[str, int]:
        conn.execute("INSERT INTO items (id, note) VALUES (%s, 'sync')", (item_id,))
        background.add_task(visible, item_id)
        if fail == "http":
            raise HTTPException(409, "conflict after write")
        if fail == "error":
            raise ValueError("handler bug after write")
        if fail == "commit":
            conn.commit()
        return {"id": item_id}

    @app.post("/savepoint/{item_id}")
    def savepoint_first(item_id: int, conn: SyncConnDep) -> None:
        with conn.transaction():  # first statement: a savepoint of the request's transaction
            conn.execute("INSERT INTO items (id, note) VALUES (%s, 'block')", (item_id,))
        raise HTTPException(409, "after the block")

    @app.post("/children/{child_id}")
    def orphan_child(child_id: int, conn: SyncConnDep) -> dict[str, int]:
        # The FK is deferred: the INSERT succeeds, the COMMIT fails.
        conn.execute("INSERT INTO children (id, parent_id) VALUES (%s, %s)", (child_id, -child_id))
        return {"id": child_id}

    @app.get("/sync/pid")
    def pid(conn: SyncConnDep) -> dict[str, Any]:
        return {"pid": conn.info.backend_pid, "status": conn.info.transaction_status.name}

    @app.get("/sync/sleep")
    def sleep(conn: SyncConnDep, seconds: float = 0.2) -> dict[str, float]:
        conn.execute("SELECT pg_sleep(%s)", (seconds,))
        return {"slept": seconds}

    @app.get("/sync/row")
    def row_type(conn: SyncConnDep, change: bool = False) -> dict[str, str]:
        shape = type(conn.execute("SELECT 1 AS one").fetchone()).__name__
        if change:  # what a handler sets on its connection must not reach the next request
            conn.row_factory = dict_row
        return {"row": shape}

    @app.get("/async/value")
    async def value(conn: ConnDep) -> dict[str, int]:
        cur = await conn.execute("SELECT 1")
        row = await cur.fetchone()
        return {"value": row[0] if row else 0}

    return app


def test_def_endpoint_commits_before_the_response(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    seen: dict[int, bool] = {}
    client = client_for(build_sync_app(make_settings(), seen))
    item = new_id()
    response = client.post(f"/items/{item}")
    assert response.status_code == 200
    # The background task ran after the response was sent, and saw the row committed.
    assert seen == {item: True}
    assert row_exists(database_server.url, "items", item)


@pytest.mark.parametrize(("fail", "status"), [("http", 409), ("error", 500), ("commit", 500)])
def test_def_endpoint_rolls_back_when_it_raises(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    database_server: DatabaseServer,
    observer: Observer,
    unique_app_name: str,
    fail: str,
    status: int,
) -> None:
    client = client_for(build_sync_app(make_settings(min_size=1, max_size=1)))
    pid_before = client.get("/sync/pid").json()["pid"]
    item = new_id()
    response = client.post(f"/items/{item}", params={"fail": fail})
    assert response.status_code == status
    assert not row_exists(database_server.url, "items", item)
    # Rolled back, not discarded: the same backend serves the next request, idle.
    assert client.get("/sync/pid").json() == {"pid": pid_before, "status": "IDLE"}
    assert observer.count(sync_name(unique_app_name), state="idle in transaction") == 0


def test_a_first_transaction_block_is_a_savepoint_of_the_request(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(build_sync_app(make_settings()))
    item = new_id()
    assert client.post(f"/savepoint/{item}").status_code == 409
    assert not row_exists(database_server.url, "items", item)


def test_what_a_handler_sets_on_its_connection_is_put_back(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(build_sync_app(make_settings(min_size=1, max_size=1)))
    assert client.get("/sync/row", params={"change": True}).json() == {"row": "tuple"}
    assert client.get("/sync/row").json() == {"row": "tuple"}


def test_failed_commit_returns_500(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(build_sync_app(make_settings()))
    child = new_id()
    response = client.post(f"/children/{child}")
    assert response.status_code == 500
    assert response.json() == {"detail": "database commit failed; the transaction was rolled back"}
    assert not row_exists(database_server.url, "children", child)


def test_exhausted_sync_pool_returns_503_within_timeout(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    settings = make_settings(min_size=1, max_size=1, timeout=1.0)
    client = client_for(build_sync_app(settings))

    def timed() -> tuple[httpx2.Response, float]:
        started = time.monotonic()
        response = client.get("/sync/sleep", params={"seconds": 2.5})
        return response, time.monotonic() - started

    with ThreadPoolExecutor(3) as executor:
        results = list(executor.map(lambda _: timed(), range(3)))
    assert sorted(response.status_code for response, _ in results) == [200, 503, 503]
    for response, elapsed in results:
        if response.status_code == 503:
            assert settings.timeout - 0.1 <= elapsed <= settings.timeout + 1.0
            assert response.headers["retry-after"] == "1"
            assert response.json()["detail"].startswith("database unavailable")
    stats = client.get("/pool/stats").json()["pools"]
    assert stats[f"{settings.name}:sync"]["unavailable"]["pool_timeout"] == 2
    assert stats[settings.name]["unavailable"]["pool_timeout"] == 0


def test_sync_pool_sheds_requests_beyond_max_waiting_at_once(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    settings = make_settings(min_size=1, max_size=1, max_waiting=1, timeout=1.0)
    client = client_for(build_sync_app(settings))
    assert client.get("/sync/pid").status_code == 200  # the sync pool is open

    def timed(delay: float) -> tuple[int, float]:
        time.sleep(delay)
        started = time.monotonic()
        response = client.get("/sync/sleep", params={"seconds": 2.0})
        return response.status_code, time.monotonic() - started

    with ThreadPoolExecutor(3) as executor:
        results = list(executor.map(timed, (0.0, 0.3, 0.6)))
    holder, waiter, shed = results
    assert holder[0] == 200
    assert waiter[0] == 503 and waiter[1] >= settings.timeout - 0.1
    assert shed[0] == 503 and shed[1] < settings.timeout / 2
    unavailable = client.get("/pool/stats").json()["pools"][f"{settings.name}:sync"]["unavailable"]
    assert (unavailable["pool_timeout"], unavailable["queue_full"]) == (1, 1)


def test_burst_beyond_threadpool_and_pool_answers_in_bound_without_deadlock(
    make_settings: SettingsFactory, observer: Observer, unique_app_name: str
) -> None:
    """60 def requests at once (threadpool: 40 tokens; pool: 2 connections), each holding its
    connection 0.2 s: every one answers 200 or 503 within DBPOOL_TIMEOUT plus a margin, the
    first answers come while the others still wait (the holders are never starved of a
    thread), and the server never sees more than max_size backends of the sync pool."""
    settings = make_settings(min_size=2, max_size=2, timeout=2.0)
    app = build_sync_app(settings)
    results: list[tuple[int, float]] = []

    async def burst() -> None:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:

            async def one() -> None:
                started = time.monotonic()
                response = await client.get("/sync/sleep", params={"seconds": 0.2})
                results.append((response.status_code, time.monotonic() - started))

            await asyncio.wait_for(asyncio.gather(*(one() for _ in range(60))), timeout=15)

    with TestClient(app) as client, PeakSampler(observer, sync_name(unique_app_name)) as sampler:
        assert client.get("/sync/pid").status_code == 200  # the sync pool is open and filled
        client.portal.call(burst)
        after = client.get("/sync/sleep", params={"seconds": 0})
    assert len(results) == 60
    assert {status for status, _ in results} <= {200, 503}
    assert max(elapsed for _, elapsed in results) <= settings.timeout + 2.0
    served = sorted(elapsed for status, elapsed in results if status == 200)
    assert served and served[0] < settings.timeout / 2
    assert 1 <= sampler.peak <= 2
    assert after.status_code == 200


def test_sync_pool_opens_on_first_use_and_closes_with_the_app(
    make_settings: SettingsFactory, observer: Observer, unique_app_name: str
) -> None:
    settings = make_settings(min_size=1)
    app = build_sync_app(settings)
    with TestClient(app) as client:
        assert client.get("/async/value").json() == {"value": 1}
        assert "pools" not in client.get("/pool/stats").json()
        assert observer.count(sync_name(unique_app_name)) == 0
        assert observer.count(unique_app_name) >= 1
        assert client.get("/sync/pid").status_code == 200
        stats = client.get("/pool/stats").json()
        assert stats["pools"][f"{settings.name}:sync"]["status"] == "open"
        assert observer.count(sync_name(unique_app_name)) >= 1
    assert observer.wait_for_count(sync_name(unique_app_name), 0) == 0


def test_def_endpoint_taking_the_async_connection_is_refused_at_startup(
    make_settings: SettingsFactory,
) -> None:
    app = FastAPI(lifespan=create_pool_lifespan(make_settings()))

    @app.get("/wrong")
    def wrong(conn: ConnDep) -> None:
        conn.execute("SELECT 1")  # type: ignore[unused-coroutine]

    with pytest.raises(RuntimeError, match="SyncConnDep") as caught, TestClient(app):
        pass
    assert "GET /wrong" in str(caught.value)


def test_a_sync_password_provider_serves_def_endpoints_and_async_hooks_are_refused_clearly(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    database_server: DatabaseServer,
    observer: Observer,
    unique_app_name: str,
) -> None:
    password = str(conninfo_to_dict(database_server.url)["password"])
    no_password = url_without_password(database_server.url)
    calls: list[str] = []

    def provider() -> str:  # a sync provider: both pools call it for each new connection
        calls.append("called")
        return password

    client = client_for(
        build_sync_app(make_settings(url=no_password, password_provider=provider, min_size=1))
    )
    before = len(calls)
    assert client.get("/sync/pid").status_code == 200
    assert len(calls) > before  # the sync pool's connection got its password from it
    assert observer.count(sync_name(unique_app_name)) >= 1

    async def configure(conn: Any) -> None:
        return None

    with (
        pytest.raises(RuntimeError) as refused,
        TestClient(build_sync_app(make_settings(configure=configure))),
    ):
        pass  # refused at startup, before any request could fail
    assert "route /items/{item_id} takes SyncConnDep" in str(refused.value)
    assert "sets up its connections with configure (coroutines)" in str(refused.value)
    assert "use async def endpoints with get_conn" in str(refused.value)


def test_the_sync_pool_sheds_only_at_its_gate_not_while_it_grows(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    # max_waiting=1 caps the queue at the gate; four requests fit max_size=4 and must all be
    # served while the pool opens connections for them.
    client = client_for(build_sync_app(make_settings(min_size=1, max_size=4, max_waiting=1)))
    with ThreadPoolExecutor(4) as executor:
        answers = list(
            executor.map(lambda _: client.get("/sync/sleep", params={"seconds": 0.3}), range(4))
        )
    assert [answer.status_code for answer in answers] == [200] * 4


@pytest.mark.parametrize("when", ["before_the_thread_hands_it_over", "after"])
def test_a_checkout_abandoned_by_its_request_goes_back_to_the_pool(
    database_server: DatabaseServer, when: str
) -> None:
    """The two sides of a sync checkout whose request is cancelled: the worker thread still
    waiting for getconn (it puts the connection back itself), or the thread done and the
    request gone before it received the connection (the request's side puts it back)."""
    pool: ConnectionPool[SyncConnection] = ConnectionPool(
        database_server.url, min_size=1, max_size=1, open=True, connection_class=SyncConnection
    )
    try:
        pool.wait(5)
        handover = _Handover(pool)
        if when == "after":
            handover.getconn(2.0)  # the thread got it...
            handover.abandon()  # ...and the request was cancelled before it received it
        else:
            handover.abandon()  # the request is cancelled first...
            with pytest.raises(BaseException):  # noqa: B017 - anyio's cancellation class
                handover.getconn(2.0)  # ...so the thread puts back what it gets
        deadline = time.monotonic() + 5
        while pool.get_stats().get("pool_available", 0) != 1:
            assert time.monotonic() < deadline, f"still lent: {pool.get_stats()}"
            time.sleep(0.05)
        with pool.connection(timeout=1.0) as conn:  # and it is lent again
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()
