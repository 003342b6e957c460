"""After-commit work: FastAPI's BackgroundTasks run after the response, and get_conn commits
before it, so a task added by an endpoint runs only when its transaction committed."""

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import BackgroundTasks, FastAPI, HTTPException

from fastapi_dbpool import ConnDep, create_pool_lifespan
from fastapi_dbpool.testing import DatabaseServer

from .conftest import ClientFor, SettingsFactory, row_exists


def after_commit_app(settings_factory: SettingsFactory, sent: list[int]) -> FastAPI:
    app = FastAPI(lifespan=create_pool_lifespan(settings_factory(min_size=1, max_size=1)))

    @app.post("/items/{item}")
    async def create(item: int, conn: ConnDep, tasks: BackgroundTasks, fail: str = "") -> Any:
        await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'after')", (item,))
        tasks.add_task(sent.append, item)  # "send the email": only once committed
        if fail == "http":
            raise HTTPException(409, "conflict")
        return {"id": item}

    @app.post("/children/{child}")
    async def orphan(child: int, conn: ConnDep, tasks: BackgroundTasks) -> Any:
        # The FK is deferred: the INSERT passes, the COMMIT fails.
        await conn.execute("INSERT INTO children (id, parent_id) VALUES (%s, %s)", (child, -child))
        tasks.add_task(sent.append, child)
        return {"id": child}

    @app.get("/hold")
    async def hold(conn: ConnDep, seconds: float = 1.0) -> None:
        await conn.execute("SELECT pg_sleep(%s)", (seconds,))

    @app.post("/busy/{item}")
    async def busy(item: int, conn: ConnDep, tasks: BackgroundTasks) -> None:
        tasks.add_task(sent.append, item)

    return app


def test_background_work_runs_only_after_a_commit(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    sent: list[int] = []
    client = client_for(after_commit_app(make_settings, sent))
    committed, rolled_back, failed = (secrets.randbelow(2**60) for _ in range(3))

    assert client.post(f"/items/{committed}").status_code == 200
    assert row_exists(database_server.url, "items", committed)
    assert sent == [committed]

    assert client.post(f"/items/{rolled_back}", params={"fail": "http"}).status_code == 409
    assert client.post(f"/children/{failed}").status_code == 500  # the commit failed
    assert sent == [committed]  # neither the rollback nor the failed commit sent anything


def test_background_work_does_not_run_when_the_pool_answers_503(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    sent: list[int] = []
    client = client_for(after_commit_app(lambda **kw: make_settings(timeout=0.3, **kw), sent))
    with ThreadPoolExecutor(1) as executor:
        holder = executor.submit(client.get, "/hold", params={"seconds": 1.0})
        time.sleep(0.2)
        assert client.post("/busy/7").status_code == 503
        assert holder.result().status_code == 200
    assert sent == []
