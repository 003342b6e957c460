"""DBPOOL_AUTOCOMMIT and DBPOOL_<NAME>_AUTOCOMMIT reach psycopg's connect."""

import pytest

from fastapi_dbpool import PoolSettings

URL = "postgresql://app:secret@db.internal:5432/app"


def test_autocommit_is_off_by_default() -> None:
    assert "autocommit" not in PoolSettings(url=URL).connect_kwargs()


def test_autocommit_from_the_environment_of_a_named_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBPOOL_CHECKPOINTS_URL", URL)
    monkeypatch.setenv("DBPOOL_CHECKPOINTS_AUTOCOMMIT", "true")
    assert PoolSettings.for_pool("checkpoints").connect_kwargs()["autocommit"] is True


def test_autocommit_of_the_default_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBPOOL_AUTOCOMMIT", "true")
    assert PoolSettings(url=URL).connect_kwargs()["autocommit"] is True
