"""The connection budget: one startup line, and a warning when workers x max_size is too many."""

import logging

import pytest
from fastapi.testclient import TestClient

from fastapi_dbpool import PoolSettings
from fastapi_dbpool.testing import DatabaseServer
from tests.integration.conftest import build_app


def start_and_read_log(
    database_server: DatabaseServer, name: str, caplog: pytest.LogCaptureFixture
) -> list[logging.LogRecord]:
    caplog.set_level(logging.INFO, logger="fastapi_dbpool")
    settings = PoolSettings(url=database_server.url, application_name=name, min_size=1)
    with TestClient(build_app(settings)):
        pass
    return [r for r in caplog.records if "connections the server allows" in r.getMessage()]


def test_budget_line_at_startup(
    database_server: DatabaseServer,
    unique_app_name: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    (record,) = start_and_read_log(database_server, unique_app_name, caplog)
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert "DBPOOL_MAX_SIZE 10 x 2 worker(s) (WEB_CONCURRENCY) = 20 of the" in message
    assert "max_connections" in message


def test_budget_warns_when_workers_could_exhaust_the_server(
    database_server: DatabaseServer,
    unique_app_name: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "100")  # 100 x 10 > max_connections (200 here)
    (record,) = start_and_read_log(database_server, unique_app_name, caplog)
    assert record.levelno == logging.WARNING
    assert "too many; lower DBPOOL_MAX_SIZE or the worker count" in record.getMessage()
