"""Behind PgBouncer in transaction mode: psycopg's defaults break, DBPOOL_PGBOUNCER does not."""

import asyncio
import secrets
from collections import Counter

import psycopg
import pytest
from fastapi.testclient import TestClient

from fastapi_dbpool import PoolSettings, SettingsError
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.session import transaction
from fastapi_dbpool.testing import DatabaseServer
from tests.integration.conftest import build_app
from tests.integration.test_request_transaction import kept as was_kept
from tests.integration.test_request_transaction import writes_app
from tests.integration.test_row_level_security import (
    notes_table,  # noqa: F401 - a fixture
    tenants_app,
)
from tests.integration.test_transaction_options import options_app

pytestmark = pytest.mark.slow


async def hammer(settings: PoolSettings, tasks: int = 400) -> Counter[str]:
    """tasks concurrent transactions, each running one query 6 times (psycopg prepares it
    after prepare_threshold=5): the outcome of each, by exception class."""
    database = DatabasePool(settings)
    await database.open()
    outcomes: Counter[str] = Counter()

    async def one(n: int) -> None:
        try:
            async with transaction(database) as conn:
                for i in range(6):
                    await conn.execute("SELECT %s::int + %s::int", (n, i))
            outcomes["ok"] += 1
        except psycopg.Error as exc:
            outcomes[type(exc).__name__] += 1

    try:
        await asyncio.gather(*(one(n) for n in range(tasks)))
    finally:
        await database.close()
    return outcomes


def settings_for(url: str, app_name: str, **overrides: object) -> PoolSettings:
    values: dict[str, object] = {
        "url": url,
        "application_name": app_name,
        "min_size": 4,
        "max_size": 8,
        "timeout": 10,
    }
    values.update(overrides)
    return PoolSettings(**values)


def test_psycopg_defaults_fail_behind_pgbouncer_transaction_mode(
    pgbouncer_url: str, unique_app_name: str
) -> None:
    outcomes = asyncio.run(hammer(settings_for(pgbouncer_url, unique_app_name)))
    failures = sum(count for name, count in outcomes.items() if name != "ok")
    # Prepared statements do not follow a client across server connections.
    assert failures > 0, outcomes
    assert set(outcomes) - {"ok"} <= {"DuplicatePreparedStatement", "InvalidSqlStatementName"}


def test_pgbouncer_setting_makes_every_transaction_succeed(
    pgbouncer_url: str, unique_app_name: str
) -> None:
    outcomes = asyncio.run(hammer(settings_for(pgbouncer_url, unique_app_name, pgbouncer=True)))
    assert outcomes == Counter({"ok": 400})


def test_router_and_get_conn_work_behind_pgbouncer(
    pgbouncer_url: str, unique_app_name: str
) -> None:
    settings = settings_for(pgbouncer_url, unique_app_name, pgbouncer=True, min_size=1)
    with TestClient(build_app(settings)) as client:
        assert client.get("/health/db").status_code == 200
        assert client.get("/value").json() == {"value": 1}
        stats = client.get("/pool/stats").json()
        assert stats["counters"]["pool_max"] == 8


def test_per_connection_options_are_refused_with_pgbouncer(pgbouncer_url: str) -> None:
    with pytest.raises(
        SettingsError, match=r"statement_timeout cannot be applied behind PgBouncer \(pgbouncer="
    ):
        PoolSettings(url=pgbouncer_url, pgbouncer=True, statement_timeout=1.0)


@pytest.mark.parametrize("route", ["alias", "mixed"])
@pytest.mark.parametrize("shape", ["block_first", "loop", "pipeline"])
def test_one_transaction_per_request_behind_pgbouncer(
    pgbouncer_url: str,
    unique_app_name: str,
    database_server: DatabaseServer,
    route: str,
    shape: str,
) -> None:
    def factory(**overrides: object) -> PoolSettings:
        return settings_for(pgbouncer_url, unique_app_name, pgbouncer=True, min_size=1)

    with psycopg.connect(database_server.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id bigint PRIMARY KEY, note text NOT NULL)")
    kept, dropped = secrets.randbelow(2**60), secrets.randbelow(2**60)
    with TestClient(writes_app(factory)) as client:
        assert client.post(f"/{route}/{shape}/{kept}").status_code == 200
        failed = client.post(f"/{route}/{shape}/{dropped}", params={"fail": "http"})
        assert failed.status_code == 409
    assert all(was_kept(database_server.url, kept, shape))
    assert not any(was_kept(database_server.url, dropped, shape))


def test_route_options_hold_and_leave_nothing_behind_pgbouncer(
    pgbouncer_url: str, unique_app_name: str, database_server: DatabaseServer
) -> None:
    def factory(**overrides: object) -> PoolSettings:
        return settings_for(pgbouncer_url, unique_app_name, pgbouncer=True, min_size=1)

    with TestClient(options_app(factory)) as client:
        for _ in range(5):
            inside = client.get("/report").json()
            assert inside[:5] == ["serializable", "on", "on", "2500ms", "500ms"]
            # Whichever server connection PgBouncer gives next: nothing of the options left.
            assert client.get("/plain").json()[:5] == ["read committed", "off", "off", "0", "0"]


def test_tenants_stay_apart_behind_pgbouncer(
    pgbouncer_url: str,
    unique_app_name: str,
    notes_table: str,  # noqa: F811 - the fixture
) -> None:
    def factory(**overrides: object) -> PoolSettings:
        return settings_for(pgbouncer_url, unique_app_name, pgbouncer=True, min_size=1)

    with TestClient(tenants_app(factory, notes_table)) as client:
        for round_ in range(3):
            for tenant in ("a", "b"):
                headers = {"x-tenant": tenant}
                assert client.post(f"/notes/{tenant}{round_}", headers=headers).status_code == 200
        assert client.get("/notes", headers={"x-tenant": "a"}).json()["notes"] == ["a0", "a1", "a2"]
        assert client.get("/notes", headers={"x-tenant": "b"}).json()["notes"] == ["b0", "b1", "b2"]
        assert client.get("/notes").json()["notes"] == []
