"""A pool under pressure answers 503 in time, never hangs, never exceeds max_size."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
from fastapi.testclient import TestClient

from fastapi_dbpool.testing import Observer

from .conftest import ClientFor, SettingsFactory, build_app


class PeakSampler:
    """Samples pg_stat_activity every 20 ms and keeps the highest backend count."""

    def __init__(self, observer: Observer, application_name: str) -> None:
        self.peak = 0
        self._observer = observer
        self._name = application_name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._observer.count(self._name))


def timed_get(client: TestClient, url: str) -> tuple[httpx2.Response, float]:
    started = time.monotonic()
    response = client.get(url)
    return response, time.monotonic() - started


def test_pool_exhaustion_returns_503_within_timeout(
    make_settings: SettingsFactory, client_for: ClientFor, observer: Observer, unique_app_name: str
) -> None:
    settings = make_settings(min_size=1, max_size=2, timeout=1.0)
    client = client_for(build_app(settings))
    with PeakSampler(observer, unique_app_name) as sampler, ThreadPoolExecutor(6) as executor:
        results = list(executor.map(lambda _: timed_get(client, "/sleep?seconds=2.5"), range(6)))
    statuses = sorted(response.status_code for response, _ in results)
    assert statuses == [200, 200, 503, 503, 503, 503]
    for response, elapsed in results:
        if response.status_code == 503:
            assert settings.timeout - 0.1 <= elapsed <= settings.timeout + 1.0
            assert response.headers["retry-after"] == "1"
            assert response.json() == {
                "detail": "database unavailable: no database connection became available in time"
            }
    assert 1 <= sampler.peak <= settings.max_size
    stats = client.get("/pool/stats").json()
    assert stats["unavailable"]["pool_timeout"] == 4
    assert stats["waiting"] == 0


def test_full_wait_queue_answers_503_at_once(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    settings = make_settings(min_size=1, max_size=1, max_waiting=1, timeout=3.0)
    client = client_for(build_app(settings))
    with ThreadPoolExecutor(2) as executor:
        holder = executor.submit(timed_get, client, "/sleep?seconds=1.5")
        time.sleep(0.3)
        waiter = executor.submit(timed_get, client, "/value")
        time.sleep(0.3)
        overflow, elapsed = timed_get(client, "/value")
        assert overflow.status_code == 503
        assert elapsed < 0.5
        assert overflow.json()["detail"] == (
            "database unavailable: too many requests are waiting for a database connection"
        )
        assert "max_waiting" not in overflow.text
        assert holder.result()[0].status_code == 200
        assert waiter.result()[0].status_code == 200
    assert client.get("/pool/stats").json()["unavailable"]["queue_full"] == 1


def test_waiting_request_is_served_when_a_connection_returns(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=1, timeout=3.0)))
    with ThreadPoolExecutor(2) as executor:
        holder = executor.submit(timed_get, client, "/sleep?seconds=0.5")
        time.sleep(0.1)
        response, elapsed = timed_get(client, "/value")
    assert holder.result()[0].status_code == 200
    assert response.status_code == 200
    # Handed over when the holder returned (about 0.4 s), not at the 3 s timeout.
    assert elapsed < 2.0
