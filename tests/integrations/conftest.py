"""Each test gets a fresh, empty database of its own (the plugin's dbpool_database), so a
library's own tables and migrations start from nothing, as in a new deployment."""

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI

from fastapi_dbpool import PoolSettings
from tests.integration.conftest import client_for

__all__ = ["client_for"]  # the fixture, shared with tests/integration

SettingsFactory = Callable[..., PoolSettings]
PoolsLifespan = Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]


@pytest.fixture
def make_settings(dbpool_database: str, unique_app_name: str) -> SettingsFactory:
    """PoolSettings for this test's database, small and quick to fail."""

    def make(**overrides: Any) -> PoolSettings:
        values: dict[str, Any] = {
            "url": dbpool_database,
            "application_name": unique_app_name,
            "min_size": 1,
            "max_size": 4,
            "timeout": 2.0,
            "open_timeout": 10.0,
            "close_timeout": 5.0,
        }
        values.update(overrides)
        return PoolSettings(**values)

    return make


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The database's own answer, outside the app (autocommit)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []
