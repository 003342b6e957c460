"""A database per test: schema sources, clones that share nothing, names, the ASGI lifespan."""

import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx2
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fastapi_dbpool import PoolSettings, create_pool_lifespan
from fastapi_dbpool._only_database import only as only_database
from fastapi_dbpool.errors import PoolStartupError
from fastapi_dbpool.testing import (
    DatabaseServer,
    MigrationsCommand,
    Observer,
    SchemaSource,
    TemplateDatabases,
    lifespan_client,
    python_command,
)
from fastapi_dbpool.testing._databases import name_prefix


@pytest.fixture
def templates(database_server: DatabaseServer) -> Iterator[list[TemplateDatabases]]:
    """Template factories made by the test; each dropped after it."""
    made: list[TemplateDatabases] = []
    yield made
    for databases in made:
        databases.close()


def tables_of_a_clone(
    server: DatabaseServer, made: list[TemplateDatabases], schema: SchemaSource
) -> list[str]:
    databases = TemplateDatabases(server)
    made.append(databases)
    databases.build(schema)
    name = databases.create()
    try:
        with psycopg.connect(databases.url(name)) as conn:
            rows = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall()
        return [row[0] for row in rows]
    finally:
        databases.drop(name)


def test_schema_from_an_sql_file(
    database_server: DatabaseServer, templates: list[TemplateDatabases], tmp_path: Path
) -> None:
    schema = tmp_path / "schema.sql"
    schema.write_text("CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n")
    assert tables_of_a_clone(database_server, templates, schema) == ["a", "b"]


def test_schema_from_a_directory_runs_its_files_in_name_order(
    database_server: DatabaseServer, templates: list[TemplateDatabases], tmp_path: Path
) -> None:
    (tmp_path / "002_b.sql").write_text("CREATE TABLE b (a_id int REFERENCES a (id));")
    (tmp_path / "001_a.sql").write_text("CREATE TABLE a (id int PRIMARY KEY);")
    (tmp_path / "notes.txt").write_text("not SQL")
    assert tables_of_a_clone(database_server, templates, str(tmp_path)) == ["a", "b"]


def test_schema_from_a_callable_runs_as_the_application_role(
    database_server: DatabaseServer, templates: list[TemplateDatabases]
) -> None:
    def schema(conn: "psycopg.Connection[Any]") -> None:
        conn.execute("CREATE TABLE made_by_callable (id int)")

    assert tables_of_a_clone(database_server, templates, schema) == ["made_by_callable"]
    databases = templates[-1]
    with psycopg.connect(database_server.url) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
            (databases.template,),
        ).fetchone()
        assert owner == (conn.info.user,)


MIGRATE = (
    "import os, sys, psycopg\n"
    "assert os.environ['DBPOOL_URL'] == os.environ['DATABASE_URL'] == sys.argv[1]\n"
    "with psycopg.connect(os.environ['DATABASE_URL']) as conn:\n"
    "    conn.execute('CREATE TABLE migrated (id int)')\n"
)


def test_schema_from_a_migrations_command(
    database_server: DatabaseServer, templates: list[TemplateDatabases]
) -> None:
    command = python_command("-c", MIGRATE, "{url}")
    assert tables_of_a_clone(database_server, templates, command) == ["migrated"]


ALEMBIC_ENV = """
import os
from alembic import context
from sqlalchemy import create_engine

# The plugin sets DATABASE_URL (and DBPOOL_URL) to the database being built.
url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
with create_engine(url).connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
"""

ALEMBIC_REVISION = """
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None


def upgrade():
    op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True))
"""


def test_schema_from_real_alembic_migrations(
    database_server: DatabaseServer, templates: list[TemplateDatabases], tmp_path: Path
) -> None:
    """docs/testing.md's Alembic source, run for real: alembic upgrade head on the template."""
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    (tmp_path / "migrations" / "env.py").write_text(ALEMBIC_ENV)
    (tmp_path / "migrations" / "versions" / "0001_accounts.py").write_text(ALEMBIC_REVISION)
    command = python_command("-m", "alembic", "upgrade", "head", cwd=tmp_path)
    assert tables_of_a_clone(database_server, templates, command) == [
        "accounts",
        "alembic_version",
    ]


def test_a_failing_command_shows_its_output_without_the_password(
    database_server: DatabaseServer, templates: list[TemplateDatabases]
) -> None:
    command = MigrationsCommand(
        [
            sys.executable,
            "-c",
            "import os, sys; sys.exit('cannot migrate ' + os.environ['DBPOOL_URL'])",
        ]
    )
    with pytest.raises(RuntimeError, match="failed \\(1\\)") as caught:
        tables_of_a_clone(database_server, templates, command)
    assert "cannot migrate postgresql://" in str(caught.value)
    if database_server.password:
        assert database_server.password not in str(caught.value)


def test_clones_share_no_rows_and_the_template_stays_empty(
    database_server: DatabaseServer, templates: list[TemplateDatabases]
) -> None:
    databases = TemplateDatabases(database_server)
    templates.append(databases)
    databases.build(lambda conn: conn.execute("CREATE TABLE t (v text)"))
    first, second = databases.create(), databases.create()
    try:
        with psycopg.connect(databases.url(first), autocommit=True) as conn:
            conn.execute("INSERT INTO t VALUES ('first')")
        with psycopg.connect(databases.url(second), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
        third = databases.create()  # cloned after the insert: still empty
        with psycopg.connect(databases.url(third), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
        databases.drop(third)
    finally:
        databases.drop(first)
        databases.drop(second)


def test_drop_closes_connections_a_test_left_open(
    database_server: DatabaseServer, templates: list[TemplateDatabases]
) -> None:
    databases = TemplateDatabases(database_server)
    templates.append(databases)
    databases.build(None)
    name = databases.create()
    left_open = psycopg.connect(databases.url(name))
    databases.drop(name)
    with psycopg.connect(database_server.admin_url) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        assert exists.fetchone() is None
    with pytest.raises(psycopg.OperationalError):
        left_open.execute("SELECT 1")
    left_open.close()


def test_names_carry_the_xdist_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    first, second = name_prefix(), name_prefix()
    assert first.startswith("dbpool_gw7_")
    assert first != second  # two sessions on one shared server never collide
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert name_prefix().startswith("dbpool_main_")


def test_dbpool_database_is_this_tests_own(
    dbpool_database: str, database_server: DatabaseServer
) -> None:
    with psycopg.connect(dbpool_database) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
    assert name is not None and name[0].startswith("dbpool_")
    with psycopg.connect(database_server.url) as conn:
        shared = conn.execute("SELECT current_database()").fetchone()
    assert shared != name


def state_app(settings: PoolSettings | type[PoolSettings]) -> Starlette:
    """A plain Starlette app whose own lifespan yields state next to the pool's."""

    @asynccontextmanager
    async def own(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hello"}

    async def show(request: Request) -> JSONResponse:
        pool = request.state.dbpool
        async with pool.pool.connection() as conn:
            cur = await conn.execute("SELECT current_database()")
            row = await cur.fetchone()
        return JSONResponse(
            {"greeting": request.state.greeting, "database": row[0] if row else None}
        )

    return Starlette(
        routes=[Route("/", show)], lifespan=create_pool_lifespan(settings, lifespan=own)
    )


@pytest.mark.anyio
async def test_lifespan_state_reaches_every_request(
    dbpool_settings: PoolSettings, dbpool_database: str
) -> None:
    async with lifespan_client(state_app(dbpool_settings)) as client:
        body = (await client.get("/")).json()
    assert body["greeting"] == "hello"
    assert body["database"] == psycopg.conninfo.conninfo_to_dict(dbpool_database)["dbname"]


@pytest.mark.anyio
async def test_an_app_whose_settings_were_read_before_the_test_is_refused(
    database_server: DatabaseServer, dbpool_database: str
) -> None:
    # Settings built at import time (here: the server's shared database), not at startup:
    # refused before the pool connects, and before the app's own startup code runs.
    started: list[str] = []

    @asynccontextmanager
    async def own(app: Starlette) -> AsyncIterator[None]:
        started.append("startup")
        yield

    app = Starlette(
        lifespan=create_pool_lifespan(
            PoolSettings(url=database_server.url, min_size=1, max_size=1), lifespan=own
        )
    )
    refused = pytest.raises(RuntimeError, match="not this test's 'dbpool_")
    with only_database(dbpool_database), refused:
        async with lifespan_client(app):
            pass  # pragma: no cover - refused at startup
    assert started == []
    with only_database(database_server.url):  # where it does connect: no complaint
        async with lifespan_client(app):
            pass
    assert started == ["startup"]


@pytest.mark.anyio
async def test_a_startup_failure_is_raised_as_the_app_raised_it(free_tcp_port: int) -> None:
    settings = PoolSettings(
        url=f"postgresql://nobody@127.0.0.1:{free_tcp_port}/none",
        open_timeout=0.5,
        connect_timeout=1,
    )
    with pytest.raises(PoolStartupError):
        async with lifespan_client(state_app(settings)):
            pass  # pragma: no cover - startup fails


async def test_dbpool_client_runs_without_a_marker(
    dbpool_client: httpx2.AsyncClient, dbpool_database: str
) -> None:
    """No @pytest.mark.anyio: the fixture brings anyio's runner, DBPOOL_URL and the lifespan."""
    body = (await dbpool_client.get("/")).json()
    assert body["database"] == psycopg.conninfo.conninfo_to_dict(dbpool_database)["dbname"]


@pytest.fixture
def dbpool_app() -> Starlette:
    return state_app(PoolSettings)  # settings read at startup, from DBPOOL_URL


def test_the_plugin_loads_without_the_testing_extras_http_clients() -> None:
    """pytest loads the plugin wherever the package is installed, [testing] or not."""
    blocked = "import sys\nfor name in ('httpx2', 'httpx'):\n    sys.modules[name] = None\n"
    code = blocked + "import fastapi_dbpool.testing.plugin, fastapi_dbpool.testing\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    broken = subprocess.run(
        [sys.executable, "-c", blocked + "import starlette.testclient"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert broken.returncode != 0  # the blocking works: a module that needs httpx2 fails


def test_a_role_without_createdb_is_told_which_setting_to_fix(
    database_server: DatabaseServer, observer: Observer
) -> None:
    if database_server.source == "env":
        pytest.skip("a server given by DBPOOL_TEST_URL may not let the tests create roles")
    role = f"nocreatedb_{secrets.token_hex(3)}"
    password = "p@ss:w%rd-" + secrets.token_hex(4)
    observer.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        parts = urlsplit(database_server.url)
        url = urlunsplit(
            parts._replace(
                netloc=f"{role}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
            )
        )
        limited = DatabaseServer(url=url, admin_url=url, password=password, source="env")
        databases = TemplateDatabases(limited)
        try:
            with pytest.raises(RuntimeError, match=r"CREATEDB.*DBPOOL_TEST_ADMIN_URL") as caught:
                databases.build(None)
            assert password not in str(caught.value)
        finally:
            databases.close()
    finally:
        observer.execute(f"DROP ROLE {role}")


def test_clones_still_come_after_the_server_restarts(
    controllable_server: DatabaseServer, dbpool_template: TemplateDatabases
) -> None:
    before = dbpool_template.create()
    controllable_server.restart()
    after = dbpool_template.create()  # the factory's own connection was cut: it reconnects
    with psycopg.connect(dbpool_template.url(after)) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (after,)
    dbpool_template.drop(before)
    dbpool_template.drop(after)
