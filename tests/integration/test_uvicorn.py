"""Under a real uvicorn process: graceful shutdown finishes in-flight requests, then closes all."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

from fastapi_dbpool.testing import DatabaseServer, Observer

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def uvicorn_app(
    env: dict[str, str], target: str = "tests.integration.uvicorn_app:app"
) -> Iterator[tuple[subprocess.Popen[bytes], str, IO[bytes]]]:
    """Serve an app (by default tests/integration/uvicorn_app.py) on a free loopback port;
    always stopped after."""
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        # A file, not a pipe: an unread pipe fills up and blocks the server's logging.
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/health/db", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                output = log.read().decode(errors="replace")
                pytest.fail(f"uvicorn did not start:\n{output}")
            time.sleep(0.1)
        yield process, base, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


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
    with uvicorn_app(env) as (process, base, log), ThreadPoolExecutor(3) as executor:
        in_flight = [
            executor.submit(httpx.get, f"{base}/sleep", params={"seconds": 1.0}, timeout=10)
            for _ in range(3)
        ]
        assert observer.wait_for_count(unique_app_name, 3) >= 3
        time.sleep(0.2)  # the three queries are running
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert [future.result().status_code for future in in_flight] == [200, 200, 200]
        # uvicorn re-raises the signal once shut down gracefully: exit by SIGTERM, not a crash.
        assert process.wait(timeout=15) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 5
        log.seek(0)
        assert "Application shutdown complete" in log.read().decode(errors="replace")
    assert observer.wait_for_count(unique_app_name, 0, timeout=2.0) == 0


@pytest.mark.slow
def test_commit_is_visible_to_others_before_the_client_sees_the_response(
    database_server: DatabaseServer, unique_app_name: str
) -> None:
    import psycopg

    env = {"DBPOOL_URL": database_server.url, "DBPOOL_APPLICATION_NAME": unique_app_name}
    with psycopg.connect(database_server.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id bigint PRIMARY KEY, note text NOT NULL)")
        with uvicorn_app(env) as (_, base, _log), httpx.Client(base_url=base) as client:
            for item in range(10):
                item_id = int(time.time_ns() % 2**40) * 100 + item
                assert client.post(f"/items/{item_id}").status_code == 200
                # Over a real socket: visible the moment the response arrives.
                row = conn.execute("SELECT note FROM items WHERE id = %s", (item_id,)).fetchone()
                assert row == ("uvicorn",)
