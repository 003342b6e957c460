"""A connection the server ended while it sat idle is discarded at checkout, without a round
trip and without failing the request that would have got it."""

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_dbpool.testing import Observer
from tests.integration.conftest import SettingsFactory, build_app


def test_connections_killed_while_idle_fail_no_request(
    make_settings: SettingsFactory,
    client_for: Callable[[FastAPI], TestClient],
    observer: Observer,
    unique_app_name: str,
) -> None:
    # check_idle_after is long: only the socket poll can find the dead connections.
    settings = make_settings(min_size=3, max_size=3, check="idle", check_idle_after=3600)
    client = client_for(build_app(settings))
    assert observer.wait_for_count(unique_app_name, 3) == 3
    assert observer.terminate(unique_app_name, state="idle") == 3
    observer.wait_for_count(unique_app_name, 0)
    responses = [client.get("/value") for _ in range(10)]
    stats = client.get("/pool/stats").json()
    assert [r.status_code for r in responses] == [200] * 10
    assert stats["unavailable"]["connection_lost"] == 0
    assert stats["counters"]["connections_lost"] >= 1
