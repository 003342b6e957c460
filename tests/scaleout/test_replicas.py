"""Named pools and read replicas, against a real streaming replica (pg_basebackup -R).

The primary and its standby are built here from the embedded PostgreSQL binaries, apart from
the session's server, so stopping the standby disturbs no other test.
"""

import asyncio
import time
from collections.abc import Iterator
from typing import Annotated, Any

import httpx2
import psycopg
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg import AsyncConnection

from fastapi_dbpool import (
    ConnDep,
    PoolSettings,
    ReadConnDep,
    create_pool_lifespan,
    get_conn_for,
    pool_lifespan,
    pool_router,
)
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.testing import EmbeddedPostgres
from tests.scaleout.conftest import primary_and_standby

AnalyticsConn = Annotated[AsyncConnection[Any], Depends(get_conn_for("analytics"))]
AnalyticsReadConn = Annotated[AsyncConnection[Any], Depends(get_conn_for("analytics", read=True))]


class Pair:
    def __init__(self, primary: EmbeddedPostgres, standby: EmbeddedPostgres) -> None:
        self.primary = primary
        self.standby = standby


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """A primary and its streaming standby on two loopback ports, with an items table."""
    with primary_and_standby() as (primary, standby):
        yield Pair(primary, standby)


async def row_of(conn: AsyncConnection[Any], sql: str, *params: Any) -> tuple[Any, ...]:
    cur = await conn.execute(sql, params or None)
    row: tuple[Any, ...] | None = await cur.fetchone()
    assert row is not None
    return row


def build_app(pair: Pair, **replica: Any) -> FastAPI:
    primary = PoolSettings(url=pair.primary.url, name="primary", min_size=1, max_size=4)
    options: dict[str, Any] = {
        "replica": True,
        "min_size": 1,
        "max_size": 4,
        "health_timeout": 1.0,
        "reconnect_timeout": 1.0,
    }
    standby = PoolSettings.for_pool("replica", url=pair.standby.url, **{**options, **replica})
    analytics = PoolSettings.for_pool("analytics", url=pair.primary.url, min_size=0, max_size=2)
    app = FastAPI(
        lifespan=create_pool_lifespan(primary, pools={"replica": standby, "analytics": analytics})
    )
    app.include_router(pool_router)

    @app.get("/where")
    async def where(conn: ReadConnDep) -> dict[str, Any]:
        row = await row_of(conn, "SELECT pg_is_in_recovery(), current_setting('port')::int")
        return {"in_recovery": row[0], "port": row[1]}

    @app.get("/where/slowly")
    async def where_slowly(conn: ReadConnDep) -> dict[str, Any]:
        row = await row_of(conn, "SELECT pg_is_in_recovery() FROM pg_sleep(1)")
        return {"in_recovery": row[0]}

    @app.post("/items")
    async def create(conn: ConnDep) -> dict[str, Any]:
        row = await row_of(
            conn,
            "INSERT INTO items (note) VALUES ('from the primary') "
            "RETURNING id, pg_is_in_recovery()",
        )
        return {"id": row[0], "in_recovery": row[1]}

    @app.get("/items/{item_id}")
    async def read(item_id: int, conn: ReadConnDep) -> dict[str, Any]:
        row = await row_of(
            conn, "SELECT (SELECT note FROM items WHERE id = %s), pg_is_in_recovery()", item_id
        )
        return {"note": row[0], "in_recovery": row[1]}

    @app.get("/analytics")
    async def analytics_name(conn: AnalyticsConn) -> dict[str, Any]:
        row = await row_of(conn, "SELECT current_setting('application_name')")
        return {"application_name": row[0]}

    @app.get("/analytics/read")
    async def analytics_read(conn: AnalyticsReadConn) -> dict[str, Any]:
        row = await row_of(conn, "SELECT current_setting('application_name')")
        return {"application_name": row[0], "autocommit": conn.autocommit}

    @app.get("/nowhere")
    async def nowhere(conn: Annotated[AsyncConnection[Any], Depends(get_conn_for("nope"))]) -> None:
        raise AssertionError("unreachable: there is no pool named nope")

    return app


def test_reads_run_on_the_replica_and_writes_on_the_primary(pair: Pair) -> None:
    with TestClient(build_app(pair)) as client:
        reads = [client.get("/where").json() for _ in range(20)]
        write = client.post("/items").json()
    assert reads == [{"in_recovery": True, "port": pair.standby.port}] * 20
    assert write["in_recovery"] is False


def test_a_write_on_the_primary_becomes_visible_on_the_replica(pair: Pair) -> None:
    with TestClient(build_app(pair)) as client:
        item_id = client.post("/items").json()["id"]
        deadline = time.monotonic() + 10
        while True:
            body = client.get(f"/items/{item_id}").json()
            if body["note"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    assert body == {"note": "from the primary", "in_recovery": True}


def test_reads_fall_back_to_the_primary_while_the_replica_is_down(pair: Pair) -> None:
    with TestClient(build_app(pair)) as client:
        assert client.get("/where").json()["in_recovery"] is True
        pair.standby.stop("fast")
        try:
            started = time.monotonic()
            first = client.get("/where")
            first_s = time.monotonic() - started
            rest = [client.get("/where") for _ in range(100)]
            health = client.get("/health/db")
            stats = client.get("/pool/stats").json()
        finally:
            pair.standby.start()
        # Zero failed requests: every read answered, from the primary.
        assert [r.status_code for r in [first, *rest]] == [200] * 101
        assert {r.json()["in_recovery"] for r in [first, *rest]} == {False}
        assert first_s < 0.5 + 1.0  # DBPOOL_REPLICA_FALLBACK_TIMEOUT (0.5 s) + 1 s
        assert health.status_code == 200  # the replica is not required
        assert health.json()["status"] == "degraded"
        assert health.json()["pools"]["replica"]["status"] == "unavailable"
        assert stats["pools"]["replica"]["serving"] is False
        assert stats["pools"]["replica"]["fallbacks"] >= 1
        assert stats["pools"]["replica"]["unavailable"] == dict.fromkeys(
            ("pool_timeout", "queue_full", "pool_closed", "connection_lost"), 0
        )  # a fallback is not a 503
        # Back: reads return to the replica by themselves.
        deadline = time.monotonic() + 15
        while client.get("/where").json()["in_recovery"] is False:
            assert time.monotonic() < deadline, "reads did not return to the replica"
            time.sleep(0.1)
        assert client.get("/health/db").json()["status"] == "ok"


def test_a_required_replica_down_makes_health_503(pair: Pair) -> None:
    with TestClient(build_app(pair, required=True)) as client:
        pair.standby.stop("fast")
        try:
            health = client.get("/health/db")
            reads = [client.get("/where") for _ in range(5)]
        finally:
            pair.standby.start()
    assert health.status_code == 503
    assert health.json()["pools"]["replica"]["status"] == "unavailable"
    assert health.json()["pools"]["primary"]["status"] == "ok"
    assert [r.status_code for r in reads] == [200] * 5  # reads still fall back


def test_named_pool_through_get_conn_for(pair: Pair) -> None:
    with TestClient(build_app(pair)) as client:
        assert client.get("/analytics").json() == {"application_name": "fastapi_dbpool:analytics"}
        assert client.get("/analytics/read").json() == {
            "application_name": "fastapi_dbpool:analytics",
            "autocommit": True,
        }
        assert get_conn_for("analytics") is get_conn_for("analytics")  # one per name
        with pytest.raises(RuntimeError, match=r"no pool named 'nope'.*primary.*replica"):
            client.get("/nowhere")


def test_stats_and_metrics_report_every_pool_by_name(pair: Pair) -> None:
    with TestClient(build_app(pair)) as client:
        client.get("/where")
        stats = client.get("/pool/stats").json()
        text = client.get("/pool/metrics").text
    assert set(stats["pools"]) == {"primary", "replica", "analytics"}
    assert stats["name"] == "primary"  # the default pool stays at the top
    assert stats["pools"]["replica"]["replica"] is True
    assert stats["pools"]["replica"]["required"] is False
    assert stats["pools"]["replica"]["counters"]["requests_num"] >= 1
    families = {family.name: family for family in text_string_to_metric_families(text)}
    pools = {sample.labels["pool"] for sample in families["dbpool_connections"].samples}
    assert pools == {"primary", "replica", "analytics"}
    serving = {s.labels["pool"]: s.value for s in families["dbpool_serving"].samples}
    assert serving == {"primary": 1.0, "replica": 1.0, "analytics": 1.0}


def test_pools_from_the_environment(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBPOOL_URL", pair.primary.url)
    monkeypatch.setenv("DBPOOL_NAME", "primary")
    monkeypatch.setenv("DBPOOL_POOLS", "replica")
    monkeypatch.setenv("DBPOOL_REPLICA_URL", pair.standby.url)
    monkeypatch.setenv("DBPOOL_REPLICA_REPLICA", "true")
    monkeypatch.setenv("DBPOOL_REPLICA_MAX_SIZE", "3")
    app = FastAPI(lifespan=pool_lifespan)
    app.include_router(pool_router)

    @app.get("/where")
    async def where(conn: ReadConnDep) -> bool:
        cur = await conn.execute("SELECT pg_is_in_recovery()")
        row = await cur.fetchone()
        return bool(row and row[0])

    with TestClient(app) as client:
        assert client.get("/where").json() is True
        stats = client.get("/pool/stats").json()
    assert stats["pools"]["replica"]["counters"]["pool_max"] == 3


@pytest.mark.parametrize(
    ("attrs", "expect_recovery"),
    [("read-write", False), ("standby", True), ("prefer-standby", True), ("primary", False)],
)
def test_multi_host_urls_and_target_session_attrs(
    pair: Pair, attrs: str, expect_recovery: bool
) -> None:
    """libpq tries the hosts in order and keeps the first that matches target_session_attrs."""
    primary, standby = pair.primary, pair.standby
    userinfo = primary.url.split("//", 1)[1].split("@", 1)[0]
    hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
    url = f"postgresql://{userinfo}@{hosts}/app?target_session_attrs={attrs}"

    async def where() -> tuple[bool, str]:
        database = DatabasePool(PoolSettings(url=url, min_size=1, max_size=1))
        await database.open()
        try:
            async with database.checkout() as conn:
                cur = await conn.execute("SELECT pg_is_in_recovery()")
                row = await cur.fetchone()
            return bool(row and row[0]), repr(database)
        finally:
            await database.close()

    in_recovery, described = asyncio.run(where())
    assert in_recovery is expect_recovery
    assert primary.password not in described


def test_prefer_standby_falls_back_to_the_primary_when_the_standby_is_down(pair: Pair) -> None:
    primary, standby = pair.primary, pair.standby
    userinfo = primary.url.split("//", 1)[1].split("@", 1)[0]
    url = (
        f"postgresql://{userinfo}@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/app"
        "?target_session_attrs=prefer-standby"
    )

    async def in_recovery() -> bool:
        async with await psycopg.AsyncConnection.connect(url, connect_timeout=2) as conn:
            cur = await conn.execute("SELECT pg_is_in_recovery()")
            row = await cur.fetchone()
            return bool(row and row[0])

    standby.stop("fast")
    try:
        assert asyncio.run(in_recovery()) is False
    finally:
        standby.start()
    assert asyncio.run(in_recovery()) is True


def test_reads_under_load_while_the_replica_stops(pair: Pair) -> None:
    """4 clients loop reads while the replica stops: every read that starts after the stop
    answers 200 from the primary; one in flight on the replica at that moment may get 503
    (never 500), and nothing hangs."""
    app = build_app(pair)
    results: list[tuple[float, float, int, bool | None]] = []

    async def scenario() -> float:
        done = asyncio.Event()
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:

            async def loop() -> None:
                while not done.is_set():
                    started = time.monotonic()
                    response = await client.get("/where")
                    body = response.json() if response.status_code == 200 else {}
                    results.append(
                        (started, time.monotonic(), response.status_code, body.get("in_recovery"))
                    )

            loops = [asyncio.create_task(loop()) for _ in range(4)]
            await asyncio.sleep(0.3)
            await asyncio.to_thread(pair.standby.stop, "fast")
            stopped = time.monotonic()
            await asyncio.sleep(1.0)
            done.set()
            await asyncio.gather(*loops)
        return stopped

    with TestClient(app) as client:
        try:
            stopped = client.portal.call(scenario)
        finally:
            pair.standby.start()
    before = [r for r in results if r[0] < stopped]
    after = [r for r in results if r[0] >= stopped]
    assert any(r[3] is True for r in before)  # the replica served before it stopped
    assert len(after) >= 20
    assert {(status, in_recovery) for _, _, status, in_recovery in after} == {(200, False)}
    assert {status for _, _, status, _ in before} <= {200, 503}
    assert max(end - start for start, end, _, _ in results) < 0.5 + 1.0


def test_a_busy_replica_sends_the_overflow_to_the_primary_and_stays_in_service(
    pair: Pair,
) -> None:
    """One replica connection, held by a slow read: the next read waits the fallback timeout,
    goes to the primary, and the replica is not taken out of service for being busy."""
    app = build_app(pair, min_size=1, max_size=1)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
            slow = asyncio.create_task(client.get("/where/slowly"))
            await asyncio.sleep(0.2)
            overflow = (await client.get("/where")).json()
            return (await slow).json(), overflow

    with TestClient(app) as client:
        slow, overflow = client.portal.call(scenario)
        stats = client.get("/pool/stats").json()["pools"]["replica"]
        after = client.get("/where").json()
    assert slow == {"in_recovery": True}
    assert overflow["in_recovery"] is False  # the primary took it
    assert (stats["serving"], stats["fallbacks"]) == (True, 1)
    assert after["in_recovery"] is True  # the replica serves the next read again
