"""get_conn_with: per-route transaction options, visible inside, gone on the next request."""

import secrets
from typing import Annotated, Any

import psycopg
import pytest
from fastapi import Depends, FastAPI
from psycopg import AsyncConnection

from fastapi_dbpool import ConnDep, create_pool_lifespan, get_conn_with
from fastapi_dbpool.options import TransactionOptions
from fastapi_dbpool.testing import DatabaseServer

from .conftest import ClientFor, SettingsFactory, row_exists

Conn = AsyncConnection[Any]
ReportConn = Annotated[
    Conn,
    Depends(
        get_conn_with(
            isolation="serializable",
            read_only=True,
            deferrable=True,
            statement_timeout=2.5,
            lock_timeout=0.5,
        )
    ),
]
QuickConn = Annotated[Conn, Depends(get_conn_with(statement_timeout=0.2))]
PatientConn = Annotated[Conn, Depends(get_conn_with(lock_timeout=0.2))]

SHOW = """
    SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'),
           current_setting('transaction_deferrable'), current_setting('statement_timeout'),
           current_setting('lock_timeout'), pg_backend_pid()
"""


async def settings_of(conn: Conn) -> list[Any]:
    cur = await conn.execute(SHOW)
    row = await cur.fetchone()
    return list(row) if row else []


def options_app(settings_factory: SettingsFactory) -> FastAPI:
    app = FastAPI(lifespan=create_pool_lifespan(settings_factory(min_size=1, max_size=1)))

    @app.get("/report")
    async def report(conn: ReportConn) -> list[Any]:
        return await settings_of(conn)

    @app.get("/plain")
    async def plain(conn: ConnDep) -> list[Any]:
        return await settings_of(conn)

    @app.post("/report/{item}")
    async def write_in_report(item: int, conn: ReportConn) -> None:
        await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'read only?')", (item,))

    @app.get("/quick")
    async def quick(conn: QuickConn) -> None:
        await conn.execute("SELECT pg_sleep(2)")

    @app.post("/lock/{item}")
    async def lock(item: int, conn: PatientConn) -> None:
        await conn.execute("SELECT id FROM items WHERE id = %s FOR UPDATE", (item,))

    return app


def test_each_option_holds_inside_and_is_gone_on_the_next_request(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(options_app(make_settings))
    inside = client.get("/report").json()
    after = client.get("/plain").json()
    assert inside[:5] == ["serializable", "on", "on", "2500ms", "500ms"]
    assert after[5] == inside[5]  # the same backend: only the end of the transaction reset it
    assert after[:5] == ["read committed", "off", "off", "0", "0"]


def test_a_write_in_a_read_only_route_is_refused_with_a_clear_500(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(options_app(make_settings))
    item = secrets.randbelow(2**62)
    response = client.post(f"/report/{item}")
    assert response.status_code == 500
    assert "read only (get_conn_with(read_only=True))" in response.json()["detail"]
    assert not row_exists(database_server.url, "items", item)


def test_a_routes_statement_timeout_answers_504(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(options_app(make_settings))
    response = client.get("/quick")
    assert response.status_code == 504
    assert client.get("/plain").json()[3] == "0"  # the next request has no timeout of it


def test_a_routes_lock_timeout_answers_504(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(options_app(make_settings))
    item = secrets.randbelow(2**62)
    with psycopg.connect(database_server.url) as holder:  # holds the row's lock meanwhile
        holder.execute("INSERT INTO items (id, note) VALUES (%s, 'locked')", (item,))
        holder.commit()
        holder.execute("SELECT id FROM items WHERE id = %s FOR UPDATE", (item,))
        response = client.post(f"/lock/{item}")
    assert response.status_code == 504
    assert "lock_timeout" in response.json()["detail"]
    assert client.get("/plain").json()[4] == "0"  # the next request has no lock timeout


def test_bad_options_fail_when_the_app_is_built() -> None:
    with pytest.raises(ValueError, match="isolation must be one of"):
        TransactionOptions(isolation="snapshot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="statement_timeout must be a positive number"):
        get_conn_with(statement_timeout=0)
    assert get_conn_with(read_only=True) is get_conn_with(read_only=True)  # one per options


@pytest.mark.parametrize("order", ["options_first", "plain_first"])
def test_a_route_with_two_transaction_dependencies_one_with_options_is_refused_either_way(
    make_settings: SettingsFactory, client_for: ClientFor, order: str
) -> None:
    """Declared in either order, a plain get_conn never runs silently under another
    dependency's options (it used to, with the options first: a 504 from a timeout it never
    asked for)."""
    app = FastAPI(lifespan=create_pool_lifespan(make_settings()))

    if order == "options_first":

        @app.get("/both")
        async def both(quick: QuickConn, conn: ConnDep) -> None:
            await conn.execute("SELECT pg_sleep(0.4)")

    else:

        @app.get("/both")
        async def both(conn: ConnDep, quick: QuickConn) -> None:  # type: ignore[misc]
            await conn.execute("SELECT pg_sleep(0.4)")

    response = client_for(app).get("/both")
    assert response.status_code == 500  # refused, not run under the other's timeout (504)


@pytest.mark.parametrize("option", ["statement_timeout", "lock_timeout"])
def test_a_timeout_above_postgresqls_limit_is_refused_when_declared(
    option: str, make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    # PostgreSQL's limit is INT_MAX milliseconds: 2147483.647 s, about 24.8 days.
    above: dict[str, Any] = {option: 2147483.648}
    with pytest.raises(ValueError, match=rf"{option} must be at most 2147483\.647 seconds"):
        get_conn_with(**above)
    a_month: dict[str, Any] = {option: 30 * 86400.0}
    with pytest.raises(ValueError, match=rf"{option} must be at most"):
        TransactionOptions(**a_month)
    # The largest one allowed is one the server takes.
    limit: dict[str, Any] = {option: 2147483.647}
    longest = Annotated[Conn, Depends(get_conn_with(**limit))]
    app = FastAPI(lifespan=create_pool_lifespan(make_settings(min_size=1, max_size=1)))

    @app.get("/longest")
    async def longest_route(conn: longest) -> str:
        cur = await conn.execute("SELECT current_setting(%s)", (option,))
        row = await cur.fetchone()
        return str(row[0]) if row else ""

    answer = client_for(app).get("/longest")
    assert (answer.status_code, answer.json()) == (200, "2147483647ms")


def test_read_only_is_a_guard_that_set_transaction_read_write_lifts(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    # What docs/transactions.md says: not a security boundary (a read-only role is one).
    app = FastAPI(lifespan=create_pool_lifespan(make_settings(min_size=1, max_size=1)))
    ReadOnly = Annotated[Conn, Depends(get_conn_with(read_only=True))]

    @app.post("/read-only/{item}")
    async def lifted(item: int, conn: ReadOnly) -> None:
        await conn.execute("SET TRANSACTION READ WRITE")
        await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'lifted')", (item,))

    @app.post("/report/{item}")
    async def not_lifted(item: int, conn: ReportConn) -> None:
        await conn.execute("SET TRANSACTION READ WRITE")
        await conn.execute("INSERT INTO items (id, note) VALUES (%s, 'lifted')", (item,))

    client = client_for(app)
    item = secrets.randbelow(2**62)
    assert client.post(f"/read-only/{item}").status_code == 200
    assert row_exists(database_server.url, "items", item)
    # With timeouts, their set_config() is the transaction's first query, after which the
    # server refuses the change: an accident of order, which the docs do not promise.
    other = secrets.randbelow(2**62)
    assert client.post(f"/report/{other}").status_code == 500
    assert not row_exists(database_server.url, "items", other)
