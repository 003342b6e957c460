"""A connection always goes back to its pool, whatever happens to the bookkeeping around it."""

import asyncio

import pytest

from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.session import transaction
from tests.integration.conftest import SettingsFactory


def test_a_failing_recorder_does_not_keep_the_connection(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> dict[str, int]:
        database = DatabasePool(make_settings(min_size=1, max_size=1))
        await database.open()
        try:
            assert database.recorder is not None

            def broken(token: int) -> None:
                raise RuntimeError("bookkeeping failed")

            monkeypatch.setattr(database.recorder, "released", broken)
            with pytest.raises(RuntimeError, match="bookkeeping failed"):
                async with transaction(database) as conn:
                    await conn.execute("SELECT 1")
            monkeypatch.undo()
            # The pool's only connection is back: the next checkout does not time out.
            async with transaction(database, timeout=1.0) as conn:
                await conn.execute("SELECT 1")
            return database.pool.get_stats()
        finally:
            await database.close()

    stats = asyncio.run(scenario())
    assert stats["pool_available"] == 1
    assert stats.get("requests_errors", 0) == 0
