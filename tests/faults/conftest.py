"""Fault-suite harness: the app under a real uvicorn, and pg_stat_activity as the truth."""

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx2
import psycopg
import pytest

from fastapi_dbpool.testing import DatabaseServer, Observer
from tests.support import Served, serve_app

# The matrix's pool: small, quick timeouts; epsilon for a loaded 2-core box.
T = 1.0
EPSILON = 1.0
BASE_ENV = {
    "DBPOOL_MIN_SIZE": "2",
    "DBPOOL_MAX_SIZE": "4",
    "DBPOOL_TIMEOUT": str(T),
    "DBPOOL_HEALTH_TIMEOUT": "1.0",
    "DBPOOL_CONNECT_TIMEOUT": "2",
}


@contextmanager
def serve(url: str, application_name: str, **env: str) -> Iterator[Served]:
    """Serve the fault app against url, tagged with application_name."""
    full_env = {**BASE_ENV, "DBPOOL_URL": url, "DBPOOL_APPLICATION_NAME": application_name, **env}
    with serve_app("tests.faults.fault_app:app", full_env) as served:
        yield served


@dataclass
class Truth:
    """What pg_stat_activity showed for one application_name, sampled every 20 ms."""

    peak: int = 0
    samples: int = 0
    states: Counter[str] = field(default_factory=Counter)


class TruthSampler:
    """Samples the server's own view in a thread; survives the server being down."""

    def __init__(self, observer: Observer, application_name: str) -> None:
        self.truth = Truth()
        self._observer = observer
        self._name = application_name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Truth:
        self._thread.start()
        return self.truth

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                backends = self._observer.backends(self._name)
            except psycopg.OperationalError:
                continue  # the server is down: nothing to count
            self.truth.samples += 1
            self.truth.peak = max(self.truth.peak, len(backends))
            self.truth.states.update(str(backend["state"]) for backend in backends)


@dataclass
class Outcome:
    started: float
    elapsed: float
    status: int  # 0: no HTTP answer (transport error)
    detail: str = ""  # the body's detail, for a 500


class LoadLoop:
    """Clients that send GETs in a loop until stopped, recording every outcome."""

    def __init__(self, url: str, clients: int = 4, pause: float = 0.05) -> None:
        self.outcomes: list[Outcome] = []
        self._url = url
        self._pause = pause
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        self._lock = threading.Lock()
        self.t0 = time.monotonic()

    def __enter__(self) -> "LoadLoop":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        with httpx2.Client(timeout=T + 10) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                detail = ""
                try:
                    response = client.get(self._url)
                    status = response.status_code
                    if status == 500:
                        detail = str(response.json().get("detail", ""))
                except httpx2.TransportError:
                    status = 0
                with self._lock:
                    self.outcomes.append(
                        Outcome(started - self.t0, time.monotonic() - started, status, detail)
                    )
                self._stop.wait(self._pause)


def leak_check(served: Served, observer: Observer, timeout: float = 3.0) -> None:
    """After a scenario: stats agree with the server, nothing waits, nothing stuck in a transaction,
    and the next request succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        stats = httpx2.get(f"{served.base}/pool/stats", timeout=5).json()
        backends = observer.backends(served.application_name)
        stuck = [b for b in backends if str(b["state"]).startswith("idle in transaction")]
        active = [b for b in backends if b["state"] == "active"]
        if (
            stats["counters"]["pool_size"] == len(backends)
            and stats["waiting"] == 0
            and not stuck
            and not active
        ):
            break
        assert time.monotonic() < deadline, (
            f"leak: stats {stats['total']}/{stats['waiting']} waiting, backends "
            f"{[(b['pid'], b['state']) for b in backends]}"
        )
        time.sleep(0.05)
    assert httpx2.get(f"{served.base}/value", timeout=5).status_code == 200


def assert_no_password(text: str, password: str | None) -> None:
    """Neither the raw nor the percent-encoded password appears in text."""
    if password:
        for form in (password, quote(password, safe=""), quote(password)):
            assert form not in text, "the database password leaked into the server output"


ServeFactory = Callable[..., AbstractContextManager[Served]]


@pytest.fixture(scope="session")
def fault_table(database_server: DatabaseServer) -> None:
    with psycopg.connect(database_server.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS fault_items (id bigint PRIMARY KEY)")


@pytest.fixture
def served(
    database_server: DatabaseServer, unique_app_name: str, fault_table: None
) -> ServeFactory:
    """serve(**env): the fault app against the test server, tagged with this test's name."""

    def start(**env: str) -> AbstractContextManager[Served]:
        return serve(database_server.url, unique_app_name, **env)

    return start
