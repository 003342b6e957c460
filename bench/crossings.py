"""``python -m bench.crossings``: the package's module boundaries one request crosses.

One ``POST`` with ``Depends(get_conn)`` and one INSERT, run in-process against a throwaway
embedded PostgreSQL after a warm-up request; every call from one ``fastapi_dbpool`` module
into another (or back into the package from psycopg, FastAPI, ...) is counted from the
profiler's call events, from the dependency to the connection's return.
"""

import threading
from collections import Counter
from types import FrameType
from typing import Any

import psycopg
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_dbpool import ConnDep, PoolSettings, create_pool_lifespan
from fastapi_dbpool.testing import EmbeddedPostgres

PACKAGE = "fastapi_dbpool"


def _module(frame: FrameType | None) -> str:
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return str(name)


class Crossings:
    """A profiler for the thread that runs the app (TestClient's portal): counts, while on,
    each call from one of the package's modules into another."""

    def __init__(self) -> None:
        self.on = False
        self.total = 0
        self.entered: Counter[str] = Counter()
        self.pairs: Counter[str] = Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.on or event != "call":
            return
        callee = _module(frame)
        caller = _module(frame.f_back)
        if callee.startswith(PACKAGE) and caller.startswith(PACKAGE) and callee != caller:
            self.total += 1
            self.entered[callee] += 1
            self.pairs[f"{caller} -> {callee}"] += 1


def main() -> None:
    with EmbeddedPostgres() as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY)")
        settings = PoolSettings(url=server.url, min_size=1, max_size=1)
        app = FastAPI(lifespan=create_pool_lifespan(settings))

        @app.post("/items/{item_id}")
        async def create(item_id: int, conn: ConnDep) -> None:
            sql = "INSERT INTO items (id) VALUES (%s) ON CONFLICT DO NOTHING"
            await conn.execute(sql, [item_id])

        crossings = Crossings()
        threading.setprofile(crossings)  # the portal thread TestClient starts next
        try:
            with TestClient(app) as client:
                client.post("/items/1")  # warm-up: imports and first-use caches
                crossings.on = True
                response = client.post("/items/2")
                crossings.on = False
        finally:
            threading.setprofile(None)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        total, entered, pairs = crossings.total, crossings.entered, crossings.pairs
    print(f"module crossings inside {PACKAGE} for one get_conn request: {total}")
    print(f"modules entered: {len(entered)}")
    for module, times in entered.most_common():
        print(f"  {times:3d}  {module}")
    for pair, times in pairs.most_common():
        print(f"  {times:3d}  {pair}")


if __name__ == "__main__":
    main()
