"""retry_transaction: two real conflicting serializable transactions; without a retry one of
them fails, with it both land, exactly once each."""

import asyncio
import re
import secrets
import time
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.errors import CommitFailed
from fastapi_dbpool.options import TransactionOptions
from fastapi_dbpool.retry import backoff_delay, retry_transaction
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


async def always_conflicting(conn: AsyncConnection[Any]) -> None:
    """The server's own serialization failure (SQLSTATE 40001), every time."""
    await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")


def test_the_backoff_is_capped(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> float:
        database = DatabasePool(make_settings(min_size=1, max_size=1))
        await database.open()
        try:
            started = time.monotonic()
            with pytest.raises(psycopg.errors.SerializationFailure):
                await retry_transaction(
                    database, always_conflicting, attempts=12, backoff=0.02, max_backoff=0.05
                )
            return time.monotonic() - started
        finally:
            await database.close()

    with caplog.at_level("INFO", logger="fastapi_dbpool"):
        elapsed = asyncio.run(run())
    delays = [int(ms) for ms in re.findall(r"again in (\d+) ms", caplog.text)]
    assert len(delays) == 11  # between the 12 attempts
    assert max(delays) <= 50  # uncapped, the 11th would wait 10 to 30 s
    assert elapsed < 11 * 0.05 + 5  # the sleeps, and the round trips with slack


def test_the_delay_never_passes_the_cap_nor_overflows() -> None:
    assert all(0.01 <= backoff_delay(1, 0.02, 1.0) <= 0.03 for _ in range(100))
    assert all(backoff_delay(n, 0.02, 1.0) <= 1.0 for n in (10, 100, 2000) for _ in range(100))
    capped = [backoff_delay(2000, 0.02, 1.0) for _ in range(100)]
    assert min(capped) >= 1 / 3 and max(capped) <= 1.0  # the cap, still jittered
    assert len(set(capped)) > 1
    with pytest.raises(ValueError, match="max_backoff must be a number of seconds"):
        asyncio.run(retry_transaction(None, always_conflicting, max_backoff=-1))  # type: ignore[arg-type]
