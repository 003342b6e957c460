"""Checkout timings in /pool/stats, and slow holders named by route."""

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from fastapi_dbpool.testing import DatabaseServer

from .conftest import ClientFor, SettingsFactory, build_app


def test_hold_and_wait_percentiles_on_a_known_workload(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=1, timeout=5.0)))
    for _ in range(5):
        assert client.get("/sleep", params={"seconds": 0.2}).status_code == 200
    timings = client.get("/pool/stats").json()["timings"]
    hold = timings["hold_ms"]["window"]
    assert hold["count"] == 5
    assert 190 <= hold["p50"] <= 400
    assert timings["acquire_wait_ms"]["window"]["p50"] < 50  # nobody waited

    # Three at once on one connection: they wait about 0, 300 and 600 ms.
    with ThreadPoolExecutor(3) as executor:
        responses = list(
            executor.map(lambda _: client.get("/sleep", params={"seconds": 0.3}), range(3))
        )
    assert [r.status_code for r in responses] == [200, 200, 200]
    timings = client.get("/pool/stats").json()["timings"]
    assert 500 <= timings["acquire_wait_ms"]["window"]["max"] <= 1500
    assert timings["max_in_use"] == 1
    assert timings["max_waiting"] >= 2
    since = timings["hold_ms"]["since_start"]
    assert since["count"] == 8
    assert 190 <= since["p50"] <= 500


def test_slow_holder_is_reported_once_with_its_route(
    make_settings: SettingsFactory, client_for: ClientFor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapi_dbpool")
    client = client_for(build_app(make_settings(leak_threshold=0.3)))
    assert client.get("/value").status_code == 200
    assert client.get("/sleep", params={"seconds": 0.8}).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "has held a connection" in r.getMessage()]
    assert len(warnings) == 1
    assert "GET /sleep has held a connection for 0." in warnings[0]
    assert client.get("/pool/stats").json()["timings"]["slow_holders"] == 1


def test_metrics_off_records_nothing(make_settings: SettingsFactory, client_for: ClientFor) -> None:
    client = client_for(build_app(make_settings(metrics=False)))
    assert client.get("/value").status_code == 200
    assert client.get("/pool/stats").json()["timings"] is None


def test_advice_flips_to_saturated_under_exhaustion(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=1, timeout=0.3)))
    with ThreadPoolExecutor(3) as executor:
        list(executor.map(lambda _: client.get("/sleep", params={"seconds": 0.6}), range(3)))
    advice = client.get("/pool/stats").json()["advice"]
    assert advice["verdict"] == "saturated"
    assert "raise max_size" in advice["message"]  # given in code: named as the field
    assert advice["figures"]["shed_503"] >= 1


def test_advice_says_over_provisioned_for_an_oversized_idle_pool(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=8)))
    for _ in range(5):
        assert client.get("/value").status_code == 200  # one at a time: 1 connection is enough
    advice = client.get("/pool/stats").json()["advice"]
    assert advice["verdict"] == "over-provisioned"
    assert advice["figures"]["max_in_use"] == 1


def test_advice_is_ok_when_the_pool_fits(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=2, timeout=5.0)))
    with ThreadPoolExecutor(2) as executor:
        list(executor.map(lambda _: client.get("/sleep", params={"seconds": 0.3}), range(2)))
    assert client.get("/pool/stats").json()["advice"]["verdict"] == "ok"


def test_periodic_summary_line_has_no_secrets(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    caplog: pytest.LogCaptureFixture,
    database_server: DatabaseServer,
) -> None:
    import time

    caplog.set_level(logging.INFO, logger="fastapi_dbpool")
    client = client_for(build_app(make_settings(log_stats_interval=0.2)))
    assert client.get("/value").status_code == 200
    time.sleep(0.5)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pool=")]
    assert lines, "no summary line was logged"
    assert "total=" in lines[-1] and "wait_p95_ms=" in lines[-1] and "unavailable=0" in lines[-1]
    if database_server.password:
        assert database_server.password not in caplog.text


def test_advice_says_saturated_for_a_queue_that_sheds_nothing(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    # A timeout long enough that nobody is shed, and that the old rule (p95 wait above a tenth
    # of DBPOOL_TIMEOUT) would not fire: only the queue says it.
    client = client_for(build_app(make_settings(min_size=1, max_size=1, timeout=20.0)))
    with ThreadPoolExecutor(4) as executor:
        statuses = list(
            executor.map(
                lambda _: client.get("/sleep", params={"seconds": 0.2}).status_code, range(8)
            )
        )
    assert statuses == [200] * 8
    advice = client.get("/pool/stats").json()["advice"]
    assert advice["verdict"] == "saturated", advice
    assert advice["figures"]["shed_503"] == 0
    assert advice["figures"]["waited_share"] >= 0.5
    assert advice["figures"]["connections_needed"] > 1
