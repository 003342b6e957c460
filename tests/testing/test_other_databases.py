"""A test run never touches a database it did not create (issue #21, item 6).

A new project whose .env names a second pool (DBPOOL_POOLS=analytics, DBPOOL_ANALYTICS_URL)
pointing at a real database outside the test run: the app's startup code INSERTs there, its
shutdown code DELETEs, its route writes. Under plain pytest, every pool the environment names is
redirected to the test's own database; a pool whose URL was given in code (read before the test)
is refused before it connects and before any of the app's startup code runs. The outside
database is checked afterwards: its rows as they were, and not one session opened on it.
"""

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from fastapi_dbpool import PoolSettings
from fastapi_dbpool.testing import DatabaseServer
from fastapi_dbpool.testing._databases import with_database
from fastapi_dbpool.testing._fixtures import _point_environment_at
from fastapi_dbpool.testing._server import _memory_dir

APP = """
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from psycopg import AsyncConnection

from fastapi_dbpool import create_pool_lifespan, get_conn_for
from fastapi_dbpool.session import transaction


@asynccontextmanager
async def startup(app: Any) -> AsyncIterator[None]:
    async with transaction(app.state.dbpools.get("analytics")) as conn:
        await conn.execute("INSERT INTO events (what) VALUES ('startup')")
    yield
    async with transaction(app.state.dbpools.get("analytics")) as conn:
        await conn.execute("DELETE FROM events")


app = FastAPI(lifespan=create_pool_lifespan(lifespan=startup))
Analytics = Annotated[AsyncConnection[Any], Depends(get_conn_for("analytics"))]


@app.post("/events/{what}")
async def record(what: str, conn: Analytics) -> dict[str, Any]:
    await conn.execute("INSERT INTO events (what) VALUES (%s)", (what,))
    cur = await conn.execute("SELECT count(*) FROM events")
    return {"events": (await cur.fetchone())[0]}
"""

SCHEMA = "CREATE TABLE events (id serial PRIMARY KEY, what text NOT NULL);\n"

CONFTEST = """
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dbpool_schema() -> Path:
    return Path(__file__).parent / "schema.sql"
"""

INI = """
[pytest]
dbpool_app = app:app
pythonpath = .
"""

# The app as written, its pools from the environment and .env: redirected, so the test passes.
TEST_FROM_ENVIRONMENT = """
def test_records_an_event(dbpool_test_client):
    answer = dbpool_test_client.post("/events/test")
    assert answer.status_code == 200
    assert answer.json() == {"events": 2}  # the startup row and this one, in its own database
"""

# The app built from dbpool_settings, under a TestClient of the test's own: its named pools,
# read from .env at startup, are redirected all the same.
TEST_OWN_CLIENT = """
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app import record, startup
from fastapi_dbpool import create_pool_lifespan


def test_records_an_event_with_its_own_client(dbpool_settings):
    app = FastAPI(lifespan=create_pool_lifespan(dbpool_settings, lifespan=startup))
    app.post("/events/{what}")(record)
    with TestClient(app) as client:
        answer = client.post("/events/test")
    assert answer.status_code == 200
    assert answer.json() == {"events": 2}
"""

# The app built with a URL in code, read before the test: nothing may reach it.
TEST_FROM_CODE = """
import os

import pytest
from fastapi import FastAPI

from app import startup
from fastapi_dbpool import PoolSettings, create_pool_lifespan

OUTSIDE = os.environ["OUTSIDE_URL"]


@pytest.fixture(params=["default", "analytics"])
def dbpool_app(request):
    if request.param == "default":
        lifespan = create_pool_lifespan(PoolSettings(url=OUTSIDE), lifespan=startup)
    else:
        analytics = PoolSettings.for_pool("analytics", url=OUTSIDE)
        lifespan = create_pool_lifespan(pools={"analytics": analytics}, lifespan=startup)
    return FastAPI(lifespan=lifespan)


def test_never_starts(dbpool_test_client):
    raise AssertionError("the app started on a database the test did not create")
"""


@pytest.fixture
def outside(database_server: DatabaseServer) -> Iterator[str]:
    """A database outside the test run (on another server than the run's own), with a row."""
    name = f"outside_{secrets.token_hex(4)}"
    with psycopg.connect(database_server.admin_url, autocommit=True) as admin:
        owner = sql.Identifier(str(psycopg.conninfo.conninfo_to_dict(database_server.url)["user"]))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), owner))
    url = with_database(database_server.url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO events (what) VALUES ('canary')")
    try:
        yield url
    finally:
        with psycopg.connect(database_server.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def sessions_opened(admin_url: str, url: str) -> int:
    """How many sessions were ever opened on url's database, once none is open any more (a
    backend leaves pg_stat_activity after its statistics are flushed)."""
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        deadline = time.monotonic() + 10
        while True:
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            cur = admin.execute(query, (dbname,))
            row = cur.fetchone()
            if (row and row[0] == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        cur = admin.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (dbname,))
        row = cur.fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def project(tmp_path: Path, outside: str) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "app.py").write_text(APP)
    (root / "schema.sql").write_text(SCHEMA)
    (root / "conftest.py").write_text(CONFTEST)
    (root / "pytest.ini").write_text(INI)
    (root / "test_from_environment.py").write_text(TEST_FROM_ENVIRONMENT)
    (root / "test_from_code.py").write_text(TEST_FROM_CODE)
    (root / "test_own_client.py").write_text(TEST_OWN_CLIENT)
    # The developer's .env: the app's real pools (the default one is the test's anyway).
    (root / ".env").write_text(
        f"DBPOOL_URL={outside}\nDBPOOL_POOLS=analytics\nDBPOOL_ANALYTICS_URL={outside}\n"
    )
    return root


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A TMPDIR of the run's own (traversable, as the embedded server needs when root)."""
    path = Path(tempfile.mkdtemp(prefix="otherdb-tmp-", dir=_memory_dir()))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_test_run_never_touches_a_database_it_did_not_create(
    project: Path, private_tmp: Path, outside: str, database_server: DatabaseServer
) -> None:
    before = sessions_opened(database_server.admin_url, outside)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "DBPOOL_")) and key not in ("DATABASE_URL", "PYTHONPATH")
    }
    env.update(
        TMPDIR=str(private_tmp),
        DBPOOL_TEST_TMPDIR=str(private_tmp),
        DOCKER_HOST="unix:///nonexistent/docker.sock",  # no Docker: the embedded server
        OUTSIDE_URL=outside,
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rE"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout[-6000:] + result.stderr[-3000:]
    assert "2 passed, 2 errors" in result.stdout, output
    # Refused by name, before connecting; the password never shown.
    for pool in ("fastapi_dbpool", "analytics"):
        assert f"the pool {pool!r} would connect to the database 'outside_" in result.stdout, output
    password = psycopg.conninfo.conninfo_to_dict(outside)["password"]
    assert str(password) not in result.stdout + result.stderr

    assert sessions_opened(database_server.admin_url, outside) == before  # never connected
    with psycopg.connect(outside, autocommit=True) as conn:
        rows = conn.execute("SELECT what FROM events ORDER BY id").fetchall()
    assert rows == [("canary",)]  # no startup row, no test row, no shutdown DELETE


def test_every_pool_url_variable_is_pointed_at_the_tests_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "DBPOOL_POOLS=analytics, replica\ndbpool_replica_url=postgresql://prod/replica\n"
    )
    monkeypatch.setenv("DBPOOL_TEST_URL", "postgresql://tests/server")  # the plugin's own
    monkeypatch.setenv("DBPOOL_TEST_ADMIN_URL", "postgresql://tests/admin")
    monkeypatch.setenv("dbpool_other_url", "postgresql://prod/other")  # any case, as read
    monkeypatch.delenv("DBPOOL_ANALYTICS_URL", raising=False)
    _point_environment_at(monkeypatch, "postgresql://tests/mine")
    for name in ("DBPOOL_URL", "DATABASE_URL", "DBPOOL_ANALYTICS_URL", "DBPOOL_REPLICA_URL"):
        assert os.environ[name] == "postgresql://tests/mine", name
    assert os.environ["dbpool_other_url"] == "postgresql://tests/mine"  # noqa: SIM112
    assert os.environ["DBPOOL_TEST_URL"] == "postgresql://tests/server"
    assert os.environ["DBPOOL_TEST_ADMIN_URL"] == "postgresql://tests/admin"
    assert PoolSettings.for_pool("replica").conninfo() == "postgresql://tests/mine"
