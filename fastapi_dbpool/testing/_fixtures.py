"""The fresh-database fixtures: a database per test with the schema in it, the app, clients."""

import importlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from starlette.types import ASGIApp

from fastapi_dbpool._only_database import only as only_database
from fastapi_dbpool.settings import ENV_PREFIX, PoolSettings, environment_variables
from fastapi_dbpool.testing._asgi import lifespan_client
from fastapi_dbpool.testing._databases import TemplateDatabases, Templates
from fastapi_dbpool.testing._schema import URL_ENV_VARS, SchemaSource
from fastapi_dbpool.testing._server import TEST_ADMIN_URL_ENV, TEST_URL_ENV, DatabaseServer

if TYPE_CHECKING:  # the testing extra's: imported by the fixtures that use them, so that
    # the plugin (loaded whenever the package is) needs nothing beyond the package itself
    import httpx2
    from starlette.testclient import TestClient

APP_INI = "dbpool_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        APP_INI,
        "the app the dbpool_client fixtures serve, as module:attribute (e.g. myapp.main:app); "
        "or override the dbpool_app fixture",
        default="",
    )


@pytest.fixture(scope="session")
def dbpool_schema() -> SchemaSource:
    """The schema every test database starts with; override it in your conftest.py.

    Return an SQL file or a directory of ``*.sql`` files (run in name order), a callable
    taking a ``psycopg.Connection``, a ``MigrationsCommand``, or None (an empty database).
    """
    return None


@pytest.fixture(scope="session")
def dbpool_templates(database_server: DatabaseServer) -> Iterator[Templates]:
    """The session's (and xdist worker's) template databases, one per schema source."""
    templates = Templates(database_server)
    try:
        yield templates
    finally:
        templates.close()


@pytest.fixture
def dbpool_template(dbpool_templates: Templates, dbpool_schema: SchemaSource) -> TemplateDatabases:
    """The template holding this test's dbpool_schema, built on its first use."""
    return dbpool_templates.for_schema(dbpool_schema)


@pytest.fixture
def dbpool_database(
    dbpool_template: TemplateDatabases, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The URL of a database of this test's own, cloned from the template; dropped after.

    For the test, every pool URL variable of the environment and .env points at it, and an
    app whose pool would connect to another database is refused at startup."""
    name = dbpool_template.create()
    url = dbpool_template.url(name)
    try:
        _point_environment_at(monkeypatch, url)
        with only_database(url):
            yield url
    finally:
        dbpool_template.drop(name)


@pytest.fixture
def dbpool_settings(dbpool_database: str, unique_app_name: str) -> PoolSettings:
    """PoolSettings for this test's database: small, quick to fail, tagged with the test."""
    return PoolSettings(
        url=dbpool_database,
        application_name=unique_app_name,
        min_size=1,
        max_size=4,
        open_timeout=10.0,
        close_timeout=5.0,
    )


@pytest.fixture
def dbpool_app(request: pytest.FixtureRequest) -> ASGIApp:
    """The app under test: the ini option dbpool_app (module:attribute), unless overridden."""
    spec = str(request.config.getini(APP_INI) or "")
    if not spec:
        pytest.fail(
            "no app for the dbpool clients: override the dbpool_app fixture in conftest.py "
            f'(return your app) or set {APP_INI} = "mypackage.main:app" in your pytest '
            "configuration",
            pytrace=False,
        )
    return load_app(spec)


def load_app(spec: str) -> ASGIApp:
    """Import module:attribute (the attribute may be dotted)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise pytest.UsageError(
            f"{APP_INI} must be module:attribute (e.g. myapp.main:app), not {spec!r}"
        )
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


def _point_environment_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Every pool the environment or .env names, at the test's database: DBPOOL_URL and
    DATABASE_URL, DBPOOL_<NAME>_URL of each pool of DBPOOL_POOLS (replicas included) and any
    other DBPOOL_<NAME>_URL set, so that apps reading their settings at startup
    (pool_lifespan) find the test's database for every pool."""
    names = set(URL_ENV_VARS)
    for name, value in environment_variables().items():
        upper = name.upper()
        if upper == "DBPOOL_POOLS":
            pools = [pool.strip().upper() for pool in value.split(",") if pool.strip()]
            names.update(f"{ENV_PREFIX}{pool}_URL" for pool in pools)
        elif upper.endswith("_URL") and upper not in _NOT_POOLS:
            names.add(name if name in os.environ else upper)  # the environment beats .env
    for name in names:
        monkeypatch.setenv(name, url)


# DBPOOL_*_URL variables that are the plugin's own, not a pool's.
_NOT_POOLS = frozenset({TEST_URL_ENV, TEST_ADMIN_URL_ENV})


@pytest.fixture
async def dbpool_client(
    dbpool_app: ASGIApp,
    dbpool_database: str,
    monkeypatch: pytest.MonkeyPatch,
    anyio_backend: Any,
) -> AsyncIterator["httpx2.AsyncClient"]:
    """An httpx2.AsyncClient on dbpool_app, its lifespan running, DBPOOL_URL at this test's
    database. Async tests run with anyio's pytest plugin (installed with Starlette)."""
    backend = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if backend != "asyncio":
        pytest.skip(
            f"psycopg's async pool runs on asyncio, not {backend}: define an anyio_backend "
            'fixture returning "asyncio" in your conftest.py'
        )
    _point_environment_at(monkeypatch, dbpool_database)
    with only_database(dbpool_database):  # any other, refused before the app's startup
        async with lifespan_client(dbpool_app) as client:
            yield client


@pytest.fixture
def dbpool_test_client(
    dbpool_app: ASGIApp, dbpool_database: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator["TestClient"]:
    """Starlette's TestClient on dbpool_app (lifespan running), for synchronous tests."""
    from starlette.testclient import TestClient

    _point_environment_at(monkeypatch, dbpool_database)
    with only_database(dbpool_database), TestClient(dbpool_app) as client:
        yield client
