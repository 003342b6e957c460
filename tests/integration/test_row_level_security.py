"""Row-level security: a request context (role and settings) applied per transaction; two
tenants interleaved on one connection never see each other's rows, and none sees nothing."""

import re
import secrets
from collections.abc import Iterator
from typing import Annotated, Any

import psycopg
import pytest
from fastapi import Depends, FastAPI, Header
from fastapi.testclient import TestClient
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fastapi_dbpool import ConnDep, PoolSettings, create_pool_lifespan, get_conn_with, pool_router
from fastapi_dbpool.options import SessionContext
from fastapi_dbpool.testing import DatabaseServer

from .conftest import ClientFor, SettingsFactory


async def tenant_context(x_tenant: Annotated[str | None, Header()] = None) -> SessionContext | None:
    """The app's own dependency: here a header, in a real app the authenticated user."""
    return None if x_tenant is None else SessionContext(settings={"app.tenant_id": x_tenant})


TenantConn = Annotated[AsyncConnection[Any], Depends(get_conn_with(context=tenant_context))]


@pytest.fixture
def notes_table(database_server: DatabaseServer) -> str:
    table = f"notes_{secrets.token_hex(4)}"
    with psycopg.connect(database_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (tenant text NOT NULL, body text NOT NULL)")
        conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        conn.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")  # the owner too
        # nullif: once a connection has had the setting (even SET LOCAL), PostgreSQL answers
        # '' rather than NULL for it; without nullif, '' would be a tenant of its own.
        conn.execute(
            f"CREATE POLICY tenant_only ON {table} "
            "USING (tenant = nullif(current_setting('app.tenant_id', true), '')) "
            "WITH CHECK (tenant = nullif(current_setting('app.tenant_id', true), ''))"
        )
    return table


def tenants_app(settings_factory: SettingsFactory, table: str) -> FastAPI:
    app = FastAPI(lifespan=create_pool_lifespan(settings_factory(min_size=1, max_size=1)))

    @app.post("/notes/{body}")
    async def add(body: str, conn: TenantConn) -> None:
        await conn.execute(
            f"INSERT INTO {table} (tenant, body) "
            "VALUES (coalesce(nullif(current_setting('app.tenant_id', true), ''), 'none'), %s)",
            (body,),
        )

    @app.get("/notes")
    async def notes(conn: TenantConn) -> dict[str, Any]:
        cur = await conn.execute(f"SELECT body FROM {table} ORDER BY body")
        rows = await cur.fetchall()
        return {"pid": conn.info.backend_pid, "notes": [row[0] for row in rows]}

    return app


def test_two_tenants_on_one_connection_never_see_each_others_rows(
    make_settings: SettingsFactory, client_for: ClientFor, notes_table: str
) -> None:
    client = client_for(tenants_app(make_settings, notes_table))
    for round_ in range(3):  # interleaved: A, B, A, B ... on the pool's single connection
        for tenant in ("a", "b"):
            added = client.post(f"/notes/{tenant}{round_}", headers={"x-tenant": tenant})
            assert added.status_code == 200
    seen_a = client.get("/notes", headers={"x-tenant": "a"}).json()
    seen_b = client.get("/notes", headers={"x-tenant": "b"}).json()
    seen_none = client.get("/notes").json()
    assert seen_a["pid"] == seen_b["pid"] == seen_none["pid"]  # one backend for all of them
    assert seen_a["notes"] == ["a0", "a1", "a2"]
    assert seen_b["notes"] == ["b0", "b1", "b2"]
    assert seen_none["notes"] == []  # no context: the default-deny policy shows nothing
    refused = client.post("/notes/sneaky")  # no tenant: the policy's check refuses the write
    assert client.get("/notes").json()["notes"] == []
    assert refused.status_code == 500


def test_a_role_that_bypasses_rls_is_refused(
    database_server: DatabaseServer, notes_table: str, unique_app_name: str
) -> None:
    # The superuser bypasses every policy: a context applied as it would protect nothing.
    settings = PoolSettings(
        url=database_server.admin_url, application_name=unique_app_name, min_size=1, max_size=1
    )
    app = FastAPI(lifespan=create_pool_lifespan(settings))

    @app.get("/notes")
    async def notes(conn: TenantConn) -> None:
        await conn.execute("SELECT 1")

    with (
        TestClient(app) as client,
        pytest.raises(RuntimeError, match=r"bypasses row-level security \(superuser"),
    ):
        client.get("/notes", headers={"x-tenant": "a"})


def admin_in_app_database(server: DatabaseServer) -> psycopg.Connection[Any]:
    """The superuser (who bypasses every policy) in the app's database."""
    dbname = conninfo_to_dict(server.url)["dbname"]
    return psycopg.connect(make_conninfo(server.admin_url, dbname=dbname), autocommit=True)


@pytest.fixture
def bypass_role(database_server: DatabaseServer) -> Iterator[str]:
    """A role that bypasses row-level security, which the app's login role may SET ROLE to."""
    role = f"bypass_{secrets.token_hex(4)}"
    app_user = conninfo_to_dict(database_server.url)["user"]
    with admin_in_app_database(database_server) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN BYPASSRLS").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(str(app_user)))
        )
    yield role
    with admin_in_app_database(database_server) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("role_setting", ["role", "ROLE"])  # names ignore case
def test_a_bypass_role_given_as_a_setting_is_refused_after_a_first_request(
    role_setting: str,
    make_settings: SettingsFactory,
    client_for: ClientFor,
    database_server: DatabaseServer,
    notes_table: str,
    bypass_role: str,
) -> None:
    # The role that takes effect is checked, however the context sets it: the refusal must
    # not be remembered by SessionContext.role alone (None in both requests here).
    with admin_in_app_database(database_server) as conn:
        conn.execute(f"GRANT SELECT ON {notes_table} TO {bypass_role}")
        conn.execute(f"INSERT INTO {notes_table} VALUES ('a', 'a0'), ('b', 'b0')")

    async def context(
        x_tenant: Annotated[str, Header()], x_role: Annotated[str | None, Header()] = None
    ) -> SessionContext:
        settings = {"app.tenant_id": x_tenant}
        if x_role is not None:
            settings[role_setting] = x_role
        return SessionContext(settings=settings)

    app = FastAPI(lifespan=create_pool_lifespan(make_settings(min_size=1, max_size=1)))

    @app.get("/notes")
    async def notes(
        conn: Annotated[AsyncConnection[Any], Depends(get_conn_with(context=context))],
    ) -> list[str]:
        cur = await conn.execute(f"SELECT body FROM {notes_table} ORDER BY body")
        return [row[0] for row in await cur.fetchall()]

    client = client_for(app)
    first = client.get("/notes", headers={"x-tenant": "a"})
    assert (first.status_code, first.json()) == (200, ["a0"])
    bypassing = client.get("/notes", headers={"x-tenant": "a", "x-role": bypass_role})
    assert bypassing.status_code == 500, bypassing.text  # not 200 with ["a0", "b0"]
    again = client.get("/notes", headers={"x-tenant": "b"})  # the connection came back clean
    assert (again.status_code, again.json()) == (200, ["b0"])


def test_a_setting_name_is_data_never_sql(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    database_server: DatabaseServer,
    notes_table: str,
) -> None:
    # A name copied from a claim: pasted into the SQL, its quote would set tenant b's id.
    with admin_in_app_database(database_server) as conn:
        conn.execute(f"INSERT INTO {notes_table} VALUES ('a', 'a0'), ('b', 'b0')")
    sneaky = "app.x', 'a', true), set_config('app.tenant_id', 'b', true), set_config('app.y"
    with pytest.raises(ValueError, match=r"setting name .*app\.x', 'a'.*dot-qualified"):
        SessionContext(settings={"app.tenant_id": "a", sneaky: "c"})

    # Past the declaration's check (a context built around it), the server sees the name as
    # data: an unknown parameter, refused, never tenant b's rows.
    context = SessionContext(settings={"app.tenant_id": "a"})
    object.__setattr__(context, "settings", {"app.tenant_id": "a", sneaky: "c"})

    async def tenant() -> SessionContext:
        return context

    app = FastAPI(lifespan=create_pool_lifespan(make_settings(min_size=1, max_size=1)))

    @app.get("/notes")
    async def notes(
        conn: Annotated[AsyncConnection[Any], Depends(get_conn_with(context=tenant))],
    ) -> list[str]:
        cur = await conn.execute(f"SELECT body FROM {notes_table} ORDER BY body")
        return [row[0] for row in await cur.fetchall()]

    answer = client_for(app).get("/notes")
    assert answer.status_code == 500, answer.text  # not 200 with ["b0"]


@pytest.mark.parametrize(
    "name",
    ["tenant_id'", "app.tenant id", "app.", ".tenant", "app..tenant", "app.1tenant", "", "a;b"],
)
def test_a_setting_name_postgresql_would_refuse_is_refused_when_declared(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        SessionContext(settings={name: "x"})


@pytest.mark.parametrize("name", ["app.tenant_id", "request.jwt.claims", "app.t$1", "role"])
def test_a_setting_name_postgresql_accepts_is_accepted(name: str) -> None:
    assert SessionContext(settings={name: "x"}).settings == {name: "x"}


def test_one_setting_given_twice_is_refused() -> None:
    # Setting names are case-insensitive in PostgreSQL: the later would silently win.
    with pytest.raises(ValueError, match=r"'app\.Tenant_id' and 'app\.tenant_id'"):
        SessionContext(settings={"app.tenant_id": "a", "app.Tenant_id": "b"})


def test_a_setting_value_that_is_not_text_is_refused_when_declared() -> None:
    with pytest.raises(TypeError, match=r"setting 'app\.tenant_id' must be a str, not int"):
        SessionContext(settings={"app.tenant_id": 7})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"role must be a str, not int"):
        SessionContext(role=7)  # type: ignore[arg-type]


def test_a_refused_bypass_gives_its_connection_back(
    database_server: DatabaseServer, notes_table: str, unique_app_name: str
) -> None:
    """The refusal happens after the checkout (and after the options and the context were
    applied, in a transaction): the pool's only connection must come back, rolled back and
    reset, or every later request of the pool waits for it and answers 503."""
    settings = PoolSettings(
        url=database_server.admin_url,
        application_name=unique_app_name,
        min_size=1,
        max_size=1,
        timeout=1.0,
    )
    app = FastAPI(lifespan=create_pool_lifespan(settings))
    app.include_router(pool_router)
    strict = get_conn_with(isolation="serializable", context=tenant_context)

    @app.get("/notes")
    async def notes(conn: TenantConn) -> None:
        await conn.execute("SELECT 1")

    @app.get("/strict")
    async def strict_notes(conn: Annotated[AsyncConnection[Any], Depends(strict)]) -> None:
        await conn.execute("SELECT 1")

    @app.get("/plain")
    async def plain(conn: ConnDep) -> int:
        await conn.execute("SELECT 1")
        return conn.info.backend_pid

    with TestClient(app, raise_server_exceptions=False) as client:
        before = client.get("/plain").json()
        refused = [
            client.get(path, headers={"x-tenant": "a"}) for path in ("/notes", "/strict") * 2
        ]
        assert [answer.status_code for answer in refused] == [500] * 4
        after = client.get("/plain")
        stats = client.get("/pool/stats").json()
    assert after.status_code == 200
    assert after.json() == before  # the same backend: given back in order, not discarded
    assert stats["in_use"] == 0
