"""A misspelt DBPOOL_* variable stops the app at startup instead of being ignored (issue #21,
item 9); a variable of a pool the app does not declare is told in a warning."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_dbpool import ConnDep, SettingsError, create_pool_lifespan
from fastapi_dbpool.testing import DatabaseServer

from .conftest import SettingsFactory


def app_with_startup(settings_factory: SettingsFactory, started: list[str]) -> FastAPI:
    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        started.append("startup")
        yield

    app = FastAPI(lifespan=create_pool_lifespan(settings_factory(), lifespan=own))

    @app.get("/one")
    async def one(conn: ConnDep) -> Any:
        cur = await conn.execute("SELECT 1")
        return (await cur.fetchone() or [None])[0]

    return app


@pytest.mark.parametrize(
    ("variable", "real"),
    [("DBPOOL_MAX_SIZ", "DBPOOL_MAX_SIZE"), ("DBPOOL_CONFIGUER", "DBPOOL_CONFIGURE")],
)
@pytest.mark.parametrize("source", ["environment", ".env"])
def test_a_misspelt_setting_stops_the_app_before_it_connects(
    variable: str,
    real: str,
    source: str,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    if source == "environment":
        monkeypatch.setenv(variable, "5")
    else:
        (tmp_path / ".env").write_text(f"{variable}=5\n")
    started: list[str] = []
    app = app_with_startup(make_settings, started)
    with pytest.raises(SettingsError) as caught, TestClient(app):
        pass  # pragma: no cover - startup refused
    assert f"{variable}: did you mean {real}?" in str(caught.value)
    assert started == []  # refused at startup, before the app's own startup code


def test_a_variable_of_an_undeclared_pool_is_a_warning_and_the_app_serves(
    make_settings: SettingsFactory,
    database_server: DatabaseServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("DBPOOL_ANALYTICS_URL", database_server.url)
    monkeypatch.setenv("DBPOOL_TEST_TMPDIR", "/tmp")  # the plugin's own: no word about it
    started: list[str] = []
    app = app_with_startup(make_settings, started)
    with caplog.at_level("WARNING", logger="fastapi_dbpool"), TestClient(app) as client:
        assert client.get("/one").json() == 1
    assert started == ["startup"]
    assert "DBPOOL_ANALYTICS_URL is set (environment or .env) but this app has no pool" in (
        caplog.text
    )
    assert "DBPOOL_TEST_TMPDIR" not in caplog.text
