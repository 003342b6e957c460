"""retry_transaction: two real conflicting serializable transactions; without a retry one of
them fails, with it both land, exactly once each."""

import asyncio
import secrets
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.errors import CommitFailed
from fastapi_dbpool.options import TransactionOptions
from fastapi_dbpool.retry import retry_transaction
from fastapi_dbpool.session import transaction
from fastapi_dbpool.testing import DatabaseServer

from .conftest import SettingsFactory


class Barrier:
    """Both writers past their read before either writes (asyncio.Barrier is 3.11+)."""

    def __init__(self, parties: int) -> None:
        self._left = parties
        self._all_here = asyncio.Event()

    async def wait(self) -> None:
        self._left -= 1
        if self._left <= 0:
            self._all_here.set()
        await self._all_here.wait()


@pytest.fixture
def ledger(database_server: DatabaseServer) -> str:
    with psycopg.connect(database_server.url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ledger (id bigserial PRIMARY KEY, account text, seen int)"
        )
    return f"acct-{secrets.token_hex(4)}"


def writer(account: str, barrier: Barrier | None) -> Any:
    """Read the account's entries, wait for the other writer to read too, then add one: a
    write skew that serializable isolation must refuse to one of the two."""

    async def work(conn: AsyncConnection[Any]) -> int:
        cur = await conn.execute("SELECT count(*) FROM ledger WHERE account = %s", (account,))
        row = await cur.fetchone()
        seen = int(row[0]) if row else 0
        if barrier is not None:
            await barrier.wait()
        await conn.execute("INSERT INTO ledger (account, seen) VALUES (%s, %s)", (account, seen))
        return seen

    return work


async def run_two(settings_factory: SettingsFactory, account: str, retry: bool) -> list[Any]:
    database = DatabasePool(settings_factory(min_size=2, max_size=2))
    await database.open()
    barrier = Barrier(2)
    serializable = TransactionOptions(isolation="serializable")

    async def once() -> Any:
        if retry:
            # Only the first attempt waits at the barrier: a retry runs alone.
            attempts = {"n": 0}

            async def work(conn: AsyncConnection[Any]) -> int:
                attempts["n"] += 1
                return int(await writer(account, barrier if attempts["n"] == 1 else None)(conn))

            return await retry_transaction(database, work, attempts=3)
        async with transaction(database, options=serializable) as conn:
            return await writer(account, barrier)(conn)

    try:
        return list(await asyncio.gather(once(), once(), return_exceptions=True))
    finally:
        await database.close()


def entries(url: str, account: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT seen FROM ledger WHERE account = %s ORDER BY seen", (account,)
        ).fetchall()
    return [row[0] for row in rows]


def test_without_a_retry_one_of_two_conflicting_transactions_fails(
    make_settings: SettingsFactory, ledger: str, database_server: DatabaseServer
) -> None:
    outcomes = asyncio.run(run_two(make_settings, ledger, retry=False))
    failures = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert len(failures) == 1, outcomes
    failure = failures[0]
    assert isinstance(failure, psycopg.errors.SerializationFailure) or (
        isinstance(failure, CommitFailed)
        and isinstance(failure.__cause__, psycopg.errors.SerializationFailure)
    )
    assert entries(database_server.url, ledger) == [0]


def test_with_a_retry_both_land_exactly_once(
    make_settings: SettingsFactory, ledger: str, database_server: DatabaseServer
) -> None:
    outcomes = asyncio.run(run_two(make_settings, ledger, retry=True))
    assert sorted(outcomes) == [0, 1], outcomes  # the retried one saw the other's entry
    assert entries(database_server.url, ledger) == [0, 1]  # once each, nothing doubled
