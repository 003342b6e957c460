"""Alembic at startup: migrate, then open the pools (their configure hook needs the types)."""

import asyncio
import configparser
import gc
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg import AsyncConnection
from psycopg.types.enum import EnumInfo, register_enum

from fastapi_dbpool import ConnDep, create_pool_lifespan
from tests.integration.conftest import ClientFor
from tests.integrations.alembic_project import write_project
from tests.integrations.conftest import PoolsLifespan, SettingsFactory, query


@pytest.fixture
def database_url(dbpool_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """One DATABASE_URL for Alembic (SQLAlchemy) and the pools, as such apps hold it."""
    url = dbpool_database.replace("postgresql://", "postgresql+psycopg://", 1)
    monkeypatch.setenv("DATABASE_URL", url)
    return url


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """fileConfig reconfigures logging for the whole process: put it back after each test."""
    manager = logging.Logger.manager
    root = logging.getLogger()
    saved = {
        name: (each.disabled, each.level, each.handlers[:], each.propagate)
        for name, each in manager.loggerDict.items()
        if isinstance(each, logging.Logger)
    }
    root_state = (root.level, root.handlers[:])
    yield
    root.setLevel(root_state[0])
    root.handlers[:] = root_state[1]
    for name, each in list(manager.loggerDict.items()):
        if isinstance(each, logging.Logger):
            disabled, level, handlers, propagate = saved.get(name, (False, 0, [], True))
            each.disabled, each.propagate, each.handlers[:] = disabled, propagate, handlers
            each.setLevel(level)


async def configure(conn: AsyncConnection[Any]) -> None:
    """The README's configure hook: the enum type must exist when a connection is made."""
    info = await EnumInfo.fetch(conn, "mood")  # None while the type does not exist
    register_enum(info, conn)  # type: ignore[arg-type]  # as the README writes it


def people_app(lifespan: Any) -> FastAPI:
    app = FastAPI(lifespan=lifespan)

    @app.post("/people/{person_id}")
    async def add(person_id: int, conn: ConnDep) -> dict[str, str]:
        await conn.execute("INSERT INTO people VALUES (%s, 'happy')", (person_id,))
        cur = await conn.execute("SELECT mood FROM people WHERE id = %s", (person_id,))
        row = await cur.fetchone()
        assert row is not None
        return {"mood": row[0].name}  # a Python enum: configure registered the type

    return app


def migrate_then_open(ini: Path, settings: Any) -> Any:
    """The recipe: Alembic (sync) in a thread, then the pools, then the app."""
    pools: PoolsLifespan = create_pool_lifespan(settings, configure=configure)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await asyncio.to_thread(command.upgrade, Config(ini), "head")
        async with pools(app) as state:
            yield state

    return lifespan


def test_migrate_then_open_the_pools(
    tmp_path: Path, database_url: str, make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    ini = write_project(tmp_path)
    client = client_for(people_app(migrate_then_open(ini, make_settings(url=database_url))))
    assert client.post("/people/1").json() == {"mood": "happy"}


def test_the_async_template_runs_in_a_thread(
    tmp_path: Path, database_url: str, make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    ini = write_project(tmp_path, run_async=True)
    client = client_for(people_app(migrate_then_open(ini, make_settings(url=database_url))))
    assert client.post("/people/1").json() == {"mood": "happy"}


def test_the_async_template_fails_in_the_running_loop(
    tmp_path: Path, database_url: str, make_settings: SettingsFactory
) -> None:
    """The first way: command.upgrade() called from the lifespan itself."""
    ini = write_project(tmp_path, run_async=True)
    pools: PoolsLifespan = create_pool_lifespan(make_settings(url=database_url))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        command.upgrade(Config(ini), "head")
        async with pools(app) as state:
            yield state

    with pytest.warns(RuntimeWarning, match="never awaited"):  # the template's coroutine
        with (
            pytest.raises(RuntimeError, match=r"asyncio.run\(\) cannot be called from a running"),
            TestClient(people_app(lifespan)),
        ):
            pass
        gc.collect()


def test_migrations_inside_the_pools_lifespan_stop_a_fresh_deployment(
    tmp_path: Path, database_url: str, make_settings: SettingsFactory
) -> None:
    """The first way: create_pool_lifespan(lifespan=migrate) opens the pools, and runs their
    configure hook, before the migration has created the type."""
    ini = write_project(tmp_path)

    @asynccontextmanager
    async def migrate(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(command.upgrade, Config(ini), "head")
        yield

    lifespan = create_pool_lifespan(
        make_settings(url=database_url), lifespan=migrate, configure=configure
    )
    with (
        pytest.raises(Exception, match=r"no info passed\. Is the requested enum available\?"),
        TestClient(people_app(lifespan)),
    ):
        pass


def test_file_config_as_generated_disables_our_logger(tmp_path: Path, database_url: str) -> None:
    """The first way: fileConfig(...) without disable_existing_loggers=False turns off every
    logger alive before it, ours included: warnings and tracebacks vanish."""
    loggers = [logging.getLogger(name) for name in ("fastapi_dbpool", "uvicorn.error")]
    command.upgrade(Config(write_project(tmp_path / "generated", keep_loggers=False)), "head")
    assert all(logger.disabled for logger in loggers)
    for logger in loggers:
        logger.disabled = False
    command.downgrade(Config(write_project(tmp_path / "recipe")), "base")
    assert not any(logger.disabled for logger in loggers)


def test_a_percent_encoded_password_in_alembic_ini(
    tmp_path: Path, database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The first way: configparser reads % as interpolation, and its error quotes the URL,
    password included. Doubled (%%) it is read as the URL, and the password never prints."""
    secret = "SENTINEL"  # part of the test server's password, percent-encoded in the URL
    assert secret in database_url and "%" in database_url
    raw = Config(write_project(tmp_path / "raw", ini_url=database_url))
    with pytest.raises(configparser.InterpolationSyntaxError) as raised:
        command.upgrade(raw, "head")
    assert secret in str(raised.value)

    escaped = Config(write_project(tmp_path / "escaped", ini_url=database_url.replace("%", "%%")))
    command.upgrade(escaped, "head")
    assert query(database_url.replace("+psycopg", ""), "SELECT count(*) FROM people") == [(0,)]
    out, err = capfd.readouterr()
    assert "Running upgrade" in err and secret not in out + err
