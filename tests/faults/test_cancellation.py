"""Client disconnects, cancelled requests and broken streams: nothing left in a transaction."""

import secrets
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import psycopg
import pytest

from fastapi_dbpool.testing import DatabaseServer, Observer

from .conftest import EPSILON, ServeFactory, leak_check

pytestmark = pytest.mark.slow


def row_exists(url: str, item_id: int) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM fault_items WHERE id = %s", (item_id,)).fetchone()
            is not None
        )


def test_client_disconnect_mid_query_returns_the_connection_when_the_query_ends(
    served: ServeFactory, observer: Observer
) -> None:
    with served() as app:
        with socket.create_connection(("127.0.0.1", app.port)) as sock:
            sock.sendall(b"GET /sleep?seconds=1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
            deadline = time.monotonic() + 5
            while observer.count(app.application_name, state="active") < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        # The client is gone. uvicorn does not cancel the endpoint: the query runs to its end
        # (documented), then the connection goes back idle, not "idle in transaction".
        time.sleep(1.5 + 0.2)
        leak_check(app, observer, timeout=1.0 + EPSILON)


def test_cancelled_request_cancels_its_query_on_the_server(
    served: ServeFactory, observer: Observer
) -> None:
    with served(FAULT_CANCEL_MIDDLEWARE="1") as app:
        started = time.monotonic()
        response = httpx2.get(
            f"{app.base}/sleep",
            params={"seconds": 10},
            headers={"X-Cancel-After": "0.3"},
            timeout=10,
        )
        assert response.status_code == 504
        assert time.monotonic() - started < 0.3 + EPSILON
        # psycopg sends a cancel request: the server stops the query, nothing runs on.
        deadline = time.monotonic() + 5
        while any(
            "pg_sleep" in str(b["query"]) and b["state"] == "active"
            for b in observer.backends(app.application_name)
        ):
            assert time.monotonic() < deadline, "the cancelled query still runs on the server"
            time.sleep(0.02)
        leak_check(app, observer)


def test_cancellation_while_queued_loses_no_connection(
    served: ServeFactory, observer: Observer
) -> None:
    import threading

    with served(
        FAULT_CANCEL_MIDDLEWARE="1", DBPOOL_MIN_SIZE="1", DBPOOL_MAX_SIZE="1", DBPOOL_TIMEOUT="5"
    ) as app:
        holder = threading.Thread(
            target=httpx2.get,
            args=(f"{app.base}/sleep",),
            kwargs={"params": {"seconds": 2.0}, "timeout": 10},
        )
        holder.start()
        time.sleep(0.2)
        # Five requests queue for the one connection, then are cancelled while waiting.
        with ThreadPoolExecutor(5) as executor:
            responses = list(
                executor.map(
                    lambda _: httpx2.get(
                        f"{app.base}/value", headers={"X-Cancel-After": "0.5"}, timeout=10
                    ),
                    range(5),
                )
            )
        assert [r.status_code for r in responses] == [504] * 5
        holder.join()
        stats = httpx2.get(f"{app.base}/pool/stats", timeout=5).json()
        assert stats["waiting"] == 0
        assert stats["total"] == stats["free"] == 1
        leak_check(app, observer)


def test_stream_that_breaks_after_a_write_rolls_back(
    served: ServeFactory, observer: Observer, database_server: DatabaseServer
) -> None:
    item = secrets.randbelow(2**62)
    with served() as app:
        url = f"{app.base}/stream/fail/{item}"
        with pytest.raises(httpx2.HTTPError), httpx2.stream("GET", url, timeout=5) as response:
            assert response.status_code == 200  # headers went out before the failure
            response.read()
        assert not row_exists(database_server.url, item)
        leak_check(app, observer)


@pytest.mark.parametrize(("fail", "status"), [("", 200), ("http", 409), ("error", 500)])
def test_handler_outcome_decides_commit_over_a_real_socket(
    fail: str,
    status: int,
    served: ServeFactory,
    observer: Observer,
    database_server: DatabaseServer,
) -> None:
    item = secrets.randbelow(2**62)
    with served() as app:
        response = httpx2.post(f"{app.base}/items/{item}", params={"fail": fail}, timeout=5)
        assert response.status_code == status
        assert row_exists(database_server.url, item) is (status == 200)
        if status == 500:
            assert "handler bug" not in response.text  # no traceback to the client
        leak_check(app, observer)


def test_a_client_hanging_up_mid_stream_is_not_a_lost_database_connection(
    served: ServeFactory, observer: Observer
) -> None:
    # Starlette cancels the body when the client goes; psycopg, its cancel interrupted, closes
    # the connection. The database did nothing wrong: no connection_lost among the 503 causes.
    with served() as app:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", app.port)) as sock:
                sock.sendall(b"GET /stream/rows HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
                # A reset, not a polite FIN: the server sees the client gone at once.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            time.sleep(0.5)
        leak_check(app, observer)
        stats = httpx2.get(f"{app.base}/pool/stats", timeout=5).json()
        assert stats["unavailable"] == dict.fromkeys(
            ("pool_timeout", "queue_full", "pool_closed", "connection_lost"), 0
        )
        assert httpx2.get(f"{app.base}/value", timeout=5).json() == {"value": 1}
