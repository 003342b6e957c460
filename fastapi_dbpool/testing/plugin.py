"""pytest fixtures: a real PostgreSQL server, an observer of pg_stat_activity, and a fresh
database per test with the app and a client on it (fastapi_dbpool.testing._fixtures)."""

import re
import secrets
from collections.abc import Iterator

import pytest

from fastapi_dbpool.testing._fixtures import (  # noqa: F401 - fixtures pytest collects here
    dbpool_app,
    dbpool_client,
    dbpool_database,
    dbpool_schema,
    dbpool_settings,
    dbpool_template,
    dbpool_templates,
    dbpool_test_client,
    pytest_addoption,
)
from fastapi_dbpool.testing._observer import Observer
from fastapi_dbpool.testing._server import DatabaseServer, find_database_server


@pytest.fixture(scope="session")
def database_server() -> Iterator[DatabaseServer]:
    """A PostgreSQL server for the session: DBPOOL_TEST_URL, testcontainers, or embedded."""
    server = find_database_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def database_url(database_server: DatabaseServer) -> str:
    """DSN of the application role on the session's server."""
    return database_server.url


@pytest.fixture
def controllable_server(database_server: DatabaseServer) -> Iterator[DatabaseServer]:
    """The server, for tests that stop and start it; running again after the test."""
    if not database_server.controllable:
        pytest.skip(
            f"the {database_server.source} server cannot be stopped and started by tests "
            "(only the embedded one can: unset DBPOOL_TEST_URL)"
        )
    try:
        yield database_server
    finally:
        database_server.start()


@pytest.fixture
def observer(database_server: DatabaseServer) -> Iterator[Observer]:
    """A superuser connection outside any pool, for pg_stat_activity and pg_terminate_backend."""
    watcher = Observer(database_server.admin_url)
    try:
        yield watcher
    finally:
        watcher.close()


@pytest.fixture
def unique_app_name(request: pytest.FixtureRequest) -> str:
    """An application_name unique to this test (at most 63 bytes), to count its backends."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"t-{slug}-{secrets.token_hex(4)}"
