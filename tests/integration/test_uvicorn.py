"""Under a real uvicorn process: graceful shutdown finishes in-flight requests, then closes all."""

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from fastapi_dbpool.testing import DatabaseServer, Observer
from tests.support import serve_app

APP = "tests.integration.uvicorn_app:app"


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_then_leaves_no_backend(
    database_server: DatabaseServer, observer: Observer, unique_app_name: str
) -> None:
    env = {
        "DBPOOL_URL": database_server.url,
        "DBPOOL_APPLICATION_NAME": unique_app_name,
        "DBPOOL_MIN_SIZE": "2",
        "DBPOOL_MAX_SIZE": "4",
    }
    with serve_app(APP, env) as app, ThreadPoolExecutor(3) as executor:
        base = app.base
        in_flight = [
            executor.submit(httpx2.get, f"{base}/sleep", params={"seconds": 1.0}, timeout=10)
            for _ in range(3)
        ]
        assert observer.wait_for_count(unique_app_name, 3) >= 3
        time.sleep(0.2)  # the three queries are running
        started = time.monotonic()
        app.process.send_signal(signal.SIGTERM)
        assert [future.result().status_code for future in in_flight] == [200, 200, 200]
        # uvicorn re-raises the signal once shut down gracefully: exit by SIGTERM, not a crash.
        assert app.process.wait(timeout=15) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 5
        assert "Application shutdown complete" in app.output()
    assert observer.wait_for_count(unique_app_name, 0, timeout=2.0) == 0


@pytest.mark.slow
def test_commit_is_visible_to_others_before_the_client_sees_the_response(
    database_server: DatabaseServer, unique_app_name: str
) -> None:
    import psycopg

    env = {"DBPOOL_URL": database_server.url, "DBPOOL_APPLICATION_NAME": unique_app_name}
    with psycopg.connect(database_server.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id bigint PRIMARY KEY, note text NOT NULL)")
        with serve_app(APP, env) as app, httpx2.Client(base_url=app.base) as client:
            for item in range(10):
                item_id = int(time.time_ns() % 2**40) * 100 + item
                assert client.post(f"/items/{item_id}").status_code == 200
                # Over a real socket: visible the moment the response arrives.
                row = conn.execute("SELECT note FROM items WHERE id = %s", (item_id,)).fetchone()
                assert row == ("uvicorn",)


@pytest.mark.slow
def test_a_forced_shutdown_cancels_what_runs_on_the_server(
    database_server: DatabaseServer, observer: Observer, unique_app_name: str
) -> None:
    env = {"DBPOOL_URL": database_server.url, "DBPOOL_APPLICATION_NAME": unique_app_name}
    with serve_app(APP, env) as app, ThreadPoolExecutor(1) as executor:
        # Longer than uvicorn's graceful shutdown (5 s in serve_app): the request is cut off.
        executor.submit(httpx2.get, f"{app.base}/sleep", params={"seconds": 30}, timeout=40)
        deadline = time.monotonic() + 5
        while observer.count(unique_app_name, state="active") < 1:
            assert time.monotonic() < deadline, "the query never started"
            time.sleep(0.05)
        app.process.send_signal(signal.SIGTERM)
        app.process.wait(timeout=15)
        exited = time.monotonic()
        # No backend keeps working for the process that is gone.
        assert observer.wait_for_count(unique_app_name, 0, timeout=3.0) == 0
        assert time.monotonic() - exited < 3.0
        assert "cancelling 1 statement(s) still running" in app.output()


@pytest.mark.slow
def test_sigterm_turns_readiness_off_and_keeps_serving_for_the_drain_period(
    database_server: DatabaseServer, observer: Observer, unique_app_name: str
) -> None:
    env = {
        "DBPOOL_URL": database_server.url,
        "DBPOOL_APPLICATION_NAME": unique_app_name,
        "DBPOOL_DRAIN_SECONDS": "2",
    }
    with serve_app(APP, env) as app, httpx2.Client(base_url=app.base, timeout=5) as client:
        assert client.get("/health/ready").status_code == 200
        app.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        time.sleep(0.3)
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "reason": "draining"}
        # Still serving: liveness, and new requests that use the database.
        assert client.get("/health/db").status_code == 200
        assert client.get("/sleep", params={"seconds": 0.1}).status_code == 200
        assert time.monotonic() - started < 2.0  # all of the above inside the drain period
        app.process.wait(timeout=15)
        assert time.monotonic() - started >= 2.0  # it did not shut down before the period ended
        assert "serving for 2.0 s more" in app.output()
    assert observer.wait_for_count(unique_app_name, 0, timeout=2.0) == 0


OWNER_APP = "tests.integration.uvicorn_owner_app:app"


@pytest.mark.slow
def test_nothing_runs_on_a_connection_after_its_request_under_uvicorn(
    database_server: DatabaseServer, observer: Observer, unique_app_name: str
) -> None:
    """Issue #21, item 1, as it was found: a def endpoint cancelled by an asyncio.wait_for
    middleware keeps running in its thread; its later INSERT used to be committed inside the
    next request's transaction. A streaming body on a get_conn connection likewise."""
    import psycopg

    env = {
        "DBPOOL_URL": database_server.url,
        "DBPOOL_APPLICATION_NAME": unique_app_name,
        "DBPOOL_MIN_SIZE": "1",
        "DBPOOL_MAX_SIZE": "1",
    }
    base_id = int(time.time_ns() % 2**40) * 100
    with psycopg.connect(database_server.url, autocommit=True) as check:
        check.execute("CREATE TABLE IF NOT EXISTS items (id bigint PRIMARY KEY, note text)")

        def exists(item_id: int) -> bool:
            found = check.execute("SELECT 1 FROM items WHERE id = %s", (item_id,)).fetchone()
            return found is not None

        with (
            serve_app(OWNER_APP, env) as app,
            httpx2.Client(base_url=app.base, timeout=10) as client,
        ):
            cancelled = client.post(f"/def/{base_id}", headers={"x-cancel-after": "0.3"})
            assert cancelled.status_code == 504
            # The next request on the one connection, while the cancelled thread still runs.
            assert client.post(f"/plain/{base_id + 10}").status_code == 200
            deadline = time.monotonic() + 5
            while f"LATE def {base_id + 1}" not in app.output():
                assert time.monotonic() < deadline, app.output()
                time.sleep(0.05)
            assert f"LATE def {base_id + 1} ConnectionReleased" in app.output()
            streamed = client.get(f"/stream/{base_id + 20}")
            assert streamed.text == "start\nrefused\n"
            assert f"LATE stream {base_id + 20} ConnectionReleased" in app.output()
            assert client.post(f"/plain/{base_id + 30}").status_code == 200
        rows = [exists(base_id + n) for n in (0, 1, 10, 20, 30)]
        assert rows == [False, False, True, False, True]
    idle_in_transaction = observer.count(unique_app_name, "idle in transaction")
    idle_in_transaction += observer.count(f"{unique_app_name[:58]}:sync", "idle in transaction")
    assert idle_in_transaction == 0
