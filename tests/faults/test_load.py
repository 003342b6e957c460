"""Load: bursts far above max_size, lifetime recycling, and a mixed soak."""

import random
import secrets
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx2
import psycopg
import pytest

from fastapi_dbpool.testing import DatabaseServer, Observer

from .conftest import EPSILON, ServeFactory, TruthSampler, assert_no_password, leak_check

pytestmark = pytest.mark.slow


def test_burst_runs_max_size_at_once_serves_in_order_and_sheds_the_rest(
    served: ServeFactory, observer: Observer
) -> None:
    env = {
        "DBPOOL_MIN_SIZE": "1",
        "DBPOOL_MAX_SIZE": "4",
        "DBPOOL_TIMEOUT": "0.8",
        "DBPOOL_MAX_IDLE": "1",
    }
    with served(**env) as app, TruthSampler(observer, app.application_name) as truth:
        arrivals: list[tuple[float, float, int, dict[str, float]]] = []
        lock = threading.Lock()

        def request(n: int) -> None:
            time.sleep(n * 0.05)  # staggered arrivals
            started = time.monotonic()
            response = httpx2.get(f"{app.base}/queued", params={"seconds": 0.5}, timeout=10)
            body = response.json() if response.status_code == 200 else {}
            with lock:
                arrivals.append((started, time.monotonic(), response.status_code, body))

        with ThreadPoolExecutor(24) as executor:
            list(executor.map(request, range(24)))
        statuses = Counter(status for _, _, status, _ in arrivals)
        assert set(statuses) == {200, 503}, statuses
        # 4 run at once for 0.5 s (8/s) while 20/s arrive: the first ones are served, the
        # queue grows, and the later ones are shed at the 0.8 s timeout.
        assert statuses[200] >= 4 and statuses[503] >= 4
        assert truth.peak == 4  # exactly max_size backends, never more
        for started, ended, status, _ in arrivals:
            if status == 503:
                assert 0.8 - 0.1 <= ended - started <= 0.8 + EPSILON
        # First come, first served, on the server's clock: the order in which requests got a
        # connection is the order in which they arrived.
        stamps = sorted(body["arrived"] for *_, body in arrivals if body)
        got_in_arrival_order = [
            body["got"]
            for *_, body in sorted((a for a in arrivals if a[3]), key=lambda a: a[3]["arrived"])
        ]
        assert len(stamps) == statuses[200]
        assert got_in_arrival_order == sorted(got_in_arrival_order)
        stats = httpx2.get(f"{app.base}/pool/stats", timeout=5).json()
        assert stats["unavailable"]["pool_timeout"] == statuses[503]  # counters match clients
        # After the burst the pool shrinks back towards min_size (max_idle = 1 s).
        assert observer.wait_for_count(app.application_name, 1, timeout=8.0) == 1
        leak_check(app, observer)


def test_full_queue_sheds_at_once(served: ServeFactory, observer: Observer) -> None:
    env = {
        "DBPOOL_MIN_SIZE": "1",
        "DBPOOL_MAX_SIZE": "1",
        "DBPOOL_MAX_WAITING": "2",
        "DBPOOL_TIMEOUT": "5",
    }
    with served(**env) as app, ThreadPoolExecutor(4) as executor:
        holder = executor.submit(
            httpx2.get, f"{app.base}/sleep", params={"seconds": 1.5}, timeout=10
        )
        time.sleep(0.3)
        waiters = [executor.submit(httpx2.get, f"{app.base}/value", timeout=10) for _ in range(2)]
        time.sleep(0.3)
        started = time.monotonic()
        overflow = httpx2.get(f"{app.base}/value", timeout=10)
        assert overflow.status_code == 503
        assert time.monotonic() - started < 0.25
        assert overflow.headers["retry-after"] == "1"
        assert holder.result().status_code == 200
        assert [w.result().status_code for w in waiters] == [200, 200]
        leak_check(app, observer)


def test_max_lifetime_replaces_connections_without_failing_requests(
    served: ServeFactory, observer: Observer
) -> None:
    env = {"DBPOOL_MIN_SIZE": "2", "DBPOOL_MAX_SIZE": "2", "DBPOOL_MAX_LIFETIME": "1"}
    with served(**env) as app:
        assert observer.wait_for_count(app.application_name, 2) == 2
        first = {b["pid"]: b["backend_start"] for b in observer.backends(app.application_name)}
        statuses = []
        with httpx2.Client(base_url=app.base, timeout=5) as client:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                statuses.append(client.get("/value").status_code)
                time.sleep(0.02)
        assert set(statuses) == {200}
        later = {b["pid"]: b["backend_start"] for b in observer.backends(app.application_name)}
        assert not set(first) & set(later), "every backend should have been replaced"
        assert min(later.values()) > max(first.values())
        assert len(later) <= 2
        leak_check(app, observer)


def test_soak_mixed_traffic_loses_and_leaks_nothing(
    served: ServeFactory, observer: Observer, database_server: DatabaseServer
) -> None:
    rng = random.Random(20261124)
    base_id = secrets.randbelow(2**40) * 10_000
    kinds = rng.choices(["ok", "http", "error", "disconnect", "slow"], [60, 10, 10, 10, 10], k=2000)
    outcome: dict[int, int] = {}  # item id -> status the client saw
    seen: Counter[int] = Counter()
    lock = threading.Lock()
    env = {"DBPOOL_MIN_SIZE": "2", "DBPOOL_MAX_SIZE": "4", "DBPOOL_TIMEOUT": "0.5"}
    with served(**env) as app, TruthSampler(observer, app.application_name) as truth:

        def one(n: int) -> None:
            kind, item = kinds[n], base_id + n
            if kind == "disconnect":
                with socket.create_connection(("127.0.0.1", app.port)) as sock:
                    sock.sendall(
                        f"POST /items/{item}?hold=0.05 HTTP/1.1\r\nHost: x\r\n"
                        "Content-Length: 0\r\n\r\n".encode()
                    )
                return  # closed before the answer: the outcome is the server's to decide
            try:
                if kind == "slow":
                    url, params = f"{app.base}/sleep", {"seconds": "0.3"}
                    status = httpx2.get(url, params=params, timeout=10).status_code
                else:
                    url, params = f"{app.base}/items/{item}", {"fail": "" if kind == "ok" else kind}
                    status = httpx2.post(url, params=params, timeout=10).status_code
            except httpx2.TimeoutException:
                with lock:
                    hung.append((n, kind, round(time.monotonic() - t0, 2)))
                return
            if kind != "slow":
                with lock:
                    outcome[item] = status
            with lock:
                seen[status] += 1

        hung: list[tuple[int, str, float]] = []
        t0 = time.monotonic()
        with ThreadPoolExecutor(12) as executor:
            list(executor.map(one, range(len(kinds))))
        assert not hung, f"requests got no answer within 10 s: {hung[:5]}"

        assert set(seen) <= {200, 409, 500, 503}, seen
        with psycopg.connect(database_server.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT id FROM fault_items WHERE id >= %s AND id < %s",
                (base_id, base_id + len(kinds)),
            ).fetchall()
        present = {row[0] for row in rows}
        for item, status in outcome.items():
            assert (item in present) is (status == 200), (item, status)
        assert truth.peak <= 4
        time.sleep(0.3)  # the last disconnected requests finish server-side
        stats = httpx2.get(f"{app.base}/pool/stats", timeout=5).json()
        # The pool's own 503 count is what the clients saw (no other cause in this run).
        assert stats["unavailable"]["pool_timeout"] == seen[503]
        assert stats["counters"]["requests_errors"] >= seen[503]
        leak_check(app, observer)
        assert_no_password(app.output(), database_server.password)
    assert observer.wait_for_count(app.application_name, 0, timeout=3.0) == 0
