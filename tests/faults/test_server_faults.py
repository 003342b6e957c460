"""Server faults: restarts under load, long outages, killed backends."""

import time

import httpx2
import pytest

from fastapi_dbpool.testing import DatabaseServer, Observer

from .conftest import (
    EPSILON,
    LoadLoop,
    ServeFactory,
    T,
    TruthSampler,
    assert_no_password,
    leak_check,
)

pytestmark = pytest.mark.slow


def test_restart_under_load_answers_503_in_time_and_recovers(
    served: ServeFactory, controllable_server: DatabaseServer, observer: Observer
) -> None:
    with served() as app, TruthSampler(observer, app.application_name) as truth:
        with LoadLoop(f"{app.base}/value") as load:
            time.sleep(1.0)
            down_at = time.monotonic() - load.t0
            controllable_server.stop(mode="immediate")
            time.sleep(3.0)
            controllable_server.start()
            up_at = time.monotonic() - load.t0
            time.sleep(4.0)
        # A COMMIT whose answer the crash swallowed has an unknown outcome: 500 saying so, never
        # a 503 that claims a rollback; any other 500 is a bug.
        unknown = [o for o in load.outcomes if o.status == 500]
        assert all("commit outcome unknown" in o.detail for o in unknown), unknown
        statuses = {outcome.status for outcome in load.outcomes} - {500}
        assert statuses <= {200, 503}, f"only 200 or 503, never another 500 or a hang: {statuses}"
        unavailable = [o for o in load.outcomes if o.status == 503]
        assert unavailable, "the outage was not seen at all"
        assert max(o.elapsed for o in unavailable) <= T + EPSILON
        assert all(down_at - 0.5 <= o.started <= up_at + 3.0 for o in unavailable)
        first_ok = min(
            o.started + o.elapsed for o in load.outcomes if o.status == 200 and o.started > up_at
        )
        assert first_ok - up_at < 3.0, f"recovered {first_ok - up_at:.2f} s after the restart"
        assert truth.peak <= 4
        leak_check(app, observer)
        assert "connection" in app.output().lower()  # the outage was logged...
        assert_no_password(app.output(), controllable_server.password)  # ...without secrets


def test_outage_longer_than_reconnect_timeout_heals_without_a_restart(
    served: ServeFactory, controllable_server: DatabaseServer, observer: Observer
) -> None:
    # reconnect_timeout 1 s, outage 5 s: psycopg gives up on its connections; ours must not.
    with served(DBPOOL_RECONNECT_TIMEOUT="1") as app:
        assert observer.wait_for_count(app.application_name, 2) == 2
        controllable_server.stop(mode="immediate")
        for _ in range(3):
            started = time.monotonic()
            assert httpx2.get(f"{app.base}/health/db", timeout=5).status_code == 503
            assert time.monotonic() - started <= 1.0 + EPSILON
        time.sleep(5.0)
        controllable_server.start()
        # No request needed: the pool returns to min_size by itself.
        assert observer.wait_for_count(app.application_name, 2, timeout=5.0) == 2
        assert httpx2.get(f"{app.base}/health/db", timeout=5).status_code == 200
        leak_check(app, observer)


def test_busy_backend_killed_answers_503_and_the_pool_heals(
    served: ServeFactory, observer: Observer
) -> None:
    with served() as app, httpx2.Client(base_url=app.base, timeout=10) as client:
        import threading

        result: dict[str, httpx2.Response] = {}
        thread = threading.Thread(
            target=lambda: result.update(r=client.get("/sleep", params={"seconds": 5}))
        )
        thread.start()
        deadline = time.monotonic() + 5
        while observer.count(app.application_name, state="active") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert observer.terminate(app.application_name, state="active") == 1
        thread.join(10)
        response = result["r"]
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "lost" in response.json()["detail"]
        assert client.get("/pool/stats").json()["unavailable"]["connection_lost"] == 1
        leak_check(app, observer)


def test_idle_backends_killed_without_checks_cost_at_most_one_503_each(
    served: ServeFactory, observer: Observer
) -> None:
    with served(DBPOOL_CHECK="never", DBPOOL_MIN_SIZE="2", DBPOOL_MAX_SIZE="2") as app:
        assert observer.wait_for_count(app.application_name, 2) == 2
        assert observer.terminate(app.application_name, state="idle") == 2
        statuses = [httpx2.get(f"{app.base}/value", timeout=5).status_code for _ in range(6)]
        assert set(statuses) <= {200, 503}
        assert statuses.count(503) <= 2
        assert statuses[-3:] == [200, 200, 200]
        leak_check(app, observer)


def test_idle_backends_killed_with_idle_checks_fail_no_request(
    served: ServeFactory, observer: Observer
) -> None:
    with served(DBPOOL_CHECK_IDLE_AFTER="0.2", DBPOOL_TIMEOUT="5") as app:
        assert observer.wait_for_count(app.application_name, 2) == 2
        time.sleep(0.3)
        assert observer.terminate(app.application_name, state="idle") == 2
        statuses = [httpx2.get(f"{app.base}/value", timeout=10).status_code for _ in range(6)]
        assert statuses == [200] * 6
        stats = httpx2.get(f"{app.base}/pool/stats", timeout=5).json()
        assert stats["counters"]["connections_lost"] >= 2
        leak_check(app, observer)
