"""LangGraph's Postgres checkpointer (AsyncPostgresSaver) on the app's pools."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import psycopg
import pytest
from fastapi import Depends, FastAPI, HTTPException
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from fastapi_dbpool import ConnDep, PoolDep, create_pool_lifespan
from fastapi_dbpool.session import autocommit
from tests.integration.conftest import ClientFor
from tests.integrations.conftest import PoolsLifespan, SettingsFactory, query


def thread(thread_id: str) -> Any:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


def checkpoints(url: str, thread_id: str) -> int:
    rows = query(url, "SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread_id,))
    return int(rows[0][0])


@asynccontextmanager
async def set_up_checkpoints(app: FastAPI) -> AsyncIterator[None]:
    """The recipe's lifespan: setup() in autocommit (CREATE INDEX CONCURRENTLY needs it)."""
    async with autocommit(app.state.dbpool) as conn:
        await AsyncPostgresSaver(conn).setup()
    yield


async def request_checkpointer(conn: ConnDep) -> AsyncPostgresSaver:
    """The recipe: a saver on the request's connection, inside its transaction."""
    return AsyncPostgresSaver(conn)


Checkpointer = Annotated[AsyncPostgresSaver, Depends(request_checkpointer)]


def recipe_app(settings: Any) -> FastAPI:
    app = FastAPI(lifespan=create_pool_lifespan(settings, lifespan=set_up_checkpoints))

    @app.post("/threads/{thread_id}")
    async def step(thread_id: str, saver: Checkpointer, fail: bool = False) -> dict[str, bool]:
        await saver.aput(thread(thread_id), empty_checkpoint(), {}, {})
        if fail:
            raise HTTPException(409, "rolled back, checkpoint included")
        return {"saved": (await saver.aget_tuple(thread(thread_id))) is not None}

    return app


def shared_pool_app(settings: Any) -> FastAPI:
    """The first way: one saver on the app's pool, used from a request that holds ConnDep."""
    app = FastAPI(lifespan=create_pool_lifespan(settings, lifespan=set_up_checkpoints))

    @app.post("/threads/{thread_id}")
    async def step(thread_id: str, conn: ConnDep, pool: PoolDep, fail: bool = False) -> None:
        await conn.execute("SELECT 1")
        await AsyncPostgresSaver(pool).aput(thread(thread_id), empty_checkpoint(), {}, {})
        if fail:
            raise HTTPException(409, "the request rolls back")

    return app


def test_setup_on_the_apps_pool_fails(make_settings: SettingsFactory) -> None:
    """What a user gets with AsyncPostgresSaver(pool).setup() in the lifespan."""

    async def setup() -> None:
        app = FastAPI()
        pools: PoolsLifespan = create_pool_lifespan(make_settings())
        async with pools(app):
            await AsyncPostgresSaver(app.state.dbpool.pool).setup()

    with pytest.raises(psycopg.errors.ActiveSqlTransaction) as raised:
        asyncio.run(setup())
    assert "CREATE INDEX CONCURRENTLY cannot run inside a transaction block" in str(raised.value)


def test_a_saver_per_request_commits_with_the_request(
    make_settings: SettingsFactory, client_for: ClientFor, dbpool_database: str
) -> None:
    client = client_for(recipe_app(make_settings(max_size=1)))  # one connection is enough
    assert client.post("/threads/kept").json() == {"saved": True}
    assert checkpoints(dbpool_database, "kept") == 1


def test_a_saver_per_request_rolls_back_with_the_request(
    make_settings: SettingsFactory, client_for: ClientFor, dbpool_database: str
) -> None:
    client = client_for(recipe_app(make_settings()))
    assert client.post("/threads/dropped?fail=true").status_code == 409
    assert checkpoints(dbpool_database, "dropped") == 0


def test_a_saver_on_the_shared_pool_keeps_checkpoints_of_a_rolled_back_request(
    make_settings: SettingsFactory, client_for: ClientFor, dbpool_database: str
) -> None:
    """The first way: the checkpoint commits on a second connection, before the request's."""
    client = client_for(shared_pool_app(make_settings()))
    assert client.post("/threads/orphan?fail=true").status_code == 409
    assert checkpoints(dbpool_database, "orphan") == 1


def test_a_saver_on_the_shared_pool_waits_on_its_own_request(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    """The first way, with DBPOOL_MAX_SIZE=1: the saver waits for the connection the request
    holds, and the request answers 503 after DBPOOL_TIMEOUT on an idle database."""
    client = client_for(shared_pool_app(make_settings(max_size=1, timeout=1.0)))
    started = time.monotonic()
    response = client.post("/threads/stuck")
    assert response.status_code == 503, response.text
    assert 1.0 <= time.monotonic() - started < 5.0


def test_an_autocommit_pool_serves_a_shared_saver(
    make_settings: SettingsFactory, client_for: ClientFor, dbpool_database: str
) -> None:
    """A named pool with autocommit (DBPOOL_CHECKPOINTS_AUTOCOMMIT=true) for work outside
    requests: setup() runs on it as is, and each checkpoint commits at once."""
    app = FastAPI(
        lifespan=create_pool_lifespan(
            make_settings(), pools={"checkpoints": make_settings(autocommit=True)}
        )
    )

    @app.post("/background/{thread_id}")
    async def background(thread_id: str) -> None:
        saver = AsyncPostgresSaver(app.state.dbpools.get("checkpoints").pool)
        await saver.setup()
        await saver.aput(thread(thread_id), empty_checkpoint(), {}, {})

    assert client_for(app).post("/background/job").status_code == 200
    assert checkpoints(dbpool_database, "job") == 1
