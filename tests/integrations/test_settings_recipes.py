"""Settings as apps that combine libraries hold them: libpq's PG* variables, a computed size."""

import os

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict

from fastapi_dbpool import (
    ConnDep,
    PoolSettings,
    SettingsError,
    create_pool_lifespan,
    pool_lifespan,
    pool_router,
)
from tests.integration.conftest import ClientFor
from tests.integrations.conftest import PoolsLifespan

LIBPQ = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}


@pytest.fixture
def libpq_environment(dbpool_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test database in PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE only."""
    params = conninfo_to_dict(dbpool_database)
    for key, variable in LIBPQ.items():
        monkeypatch.setenv(variable, str(params[key]))
    monkeypatch.setenv("PGDATABASE", str(params["dbname"]))
    for variable in ("DATABASE_URL", "DBPOOL_URL"):
        monkeypatch.delenv(variable, raising=False)
    return str(params["dbname"])


def database_app(lifespan: PoolsLifespan) -> FastAPI:
    app = FastAPI(lifespan=lifespan)
    app.include_router(pool_router)

    @app.get("/database")
    async def database(conn: ConnDep) -> str:
        cur = await conn.execute("SELECT current_database()")
        row = await cur.fetchone()
        return str(row[0]) if row else ""

    return app


def test_an_empty_url_takes_everything_from_libpq(
    libpq_environment: str, monkeypatch: pytest.MonkeyPatch, client_for: ClientFor
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://")
    client = client_for(database_app(pool_lifespan))
    assert client.get("/database").json() == libpq_environment


def test_without_a_url_startup_names_the_variable(libpq_environment: str) -> None:
    """The first way: PG* variables alone; DATABASE_URL is still required."""
    assert "PGHOST" in os.environ
    with (
        pytest.raises(SettingsError, match=r"DBPOOL_URL \(or DATABASE_URL\) is not set"),
        TestClient(database_app(pool_lifespan)),
    ):
        pass


def test_a_computed_pool_size_through_create_pool_lifespan(
    libpq_environment: str, monkeypatch: pytest.MonkeyPatch, client_for: ClientFor
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://")
    workers = 3

    def settings() -> PoolSettings:  # read at startup; the URL still from the environment
        return PoolSettings(max_size=max(2, 12 // workers), min_size=1)

    client = client_for(database_app(create_pool_lifespan(settings)))
    assert client.get("/pool/stats").json()["counters"]["pool_max"] == 4
