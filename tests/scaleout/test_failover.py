"""Failover: a libpq multi-host URL over a primary and its standby; the primary stops, the
standby is promoted, and writes resume on it by themselves, answering 503 (never 500) while
it happens."""

import threading
import time
from urllib.parse import quote

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_dbpool import ConnDep, PoolSettings, create_pool_lifespan
from tests.scaleout.conftest import primary_and_standby

pytestmark = pytest.mark.slow


def test_writes_resume_on_the_promoted_standby(unique_app_name: str) -> None:
    with primary_and_standby() as (primary, standby):
        hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
        url = (
            f"postgresql://{primary.APP_USER}:{quote(primary.password, safe='')}@{hosts}/"
            f"{primary.APP_DB}?target_session_attrs=read-write"
        )
        settings = PoolSettings(
            url=url,
            application_name=unique_app_name,
            min_size=2,
            max_size=4,
            timeout=1.0,
            connect_timeout=2,
            reconnect_timeout=2.0,
        )
        app = FastAPI(lifespan=create_pool_lifespan(settings))

        @app.post("/write")
        async def write(conn: ConnDep) -> dict[str, int]:
            cur = await conn.execute("INSERT INTO items (note) VALUES ('failover') RETURNING id")
            row = await cur.fetchone()
            return {"id": row[0] if row else 0}

        outcomes: list[tuple[float, int]] = []
        stop = threading.Event()
        with TestClient(app, raise_server_exceptions=False) as client:

            def load() -> None:
                while not stop.is_set():
                    outcomes.append((time.monotonic(), client.post("/write").status_code))
                    time.sleep(0.05)

            loader = threading.Thread(target=load)
            loader.start()
            try:
                time.sleep(0.5)
                primary.stop(mode="immediate")
                time.sleep(2.5)  # longer than DBPOOL_TIMEOUT: requests meanwhile answer 503
                standby.promote()
                promoted = time.monotonic()
                deadline = promoted + 20
                while time.monotonic() < deadline:
                    if any(at > promoted and status == 200 for at, status in outcomes):
                        break
                    time.sleep(0.05)
                time.sleep(0.5)  # a few writes on the new primary
            finally:
                stop.set()
                loader.join(10)
        statuses = {status for _, status in outcomes}
        after = [at for at, status in outcomes if at > promoted and status == 200]
        first_write = min(after, default=None)
        assert statuses <= {200, 503}, outcomes  # never a 500 while it happens
        assert 503 in statuses  # the outage was seen, and answered 503
        assert first_write is not None, "no write succeeded after the promotion"
        seconds = first_write - promoted
        print(f"first successful write {seconds:.2f} s after the promotion")
        assert seconds < 10  # reconnect_timeout 2 s, then the pool's healer every second
        with psycopg.connect(standby.url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            count = conn.execute("SELECT count(*) FROM items WHERE id > 0").fetchone()
            assert count is not None and count[0] >= 1
