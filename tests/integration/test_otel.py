"""fastapi_dbpool.otel: the pool's OpenTelemetry metrics, read by the SDK from a real pool."""

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from fastapi_dbpool import otel
from fastapi_dbpool._timings import HISTOGRAM_BOUNDS
from fastapi_dbpool.testing import DatabaseServer

from .conftest import ClientFor, SettingsFactory, build_app

# The semantic conventions' connection pool metrics: name -> unit.
SPEC = {
    "db.client.connection.count": "{connection}",
    "db.client.connection.idle.max": "{connection}",
    "db.client.connection.idle.min": "{connection}",
    "db.client.connection.max": "{connection}",
    "db.client.connection.pending_requests": "{request}",
    "db.client.connection.timeouts": "{timeout}",
    "db.client.connection.create_time": "s",
    "db.client.connection.wait_time": "s",
    "db.client.connection.use_time": "s",
}


def collect(reader: InMemoryMetricReader) -> dict[str, tuple[str, list[Any]]]:
    """name: (unit, data points) of every metric the reader collects now."""
    data = reader.get_metrics_data()
    found: dict[str, tuple[str, list[Any]]] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = (metric.unit or "", list(metric.data.data_points))
    return found


def value(points: list[Any], state: str | None = None) -> float:
    """The value of the one point (of that db.client.connection.state, if given)."""
    matches = [p for p in points if p.attributes.get("db.client.connection.state") == state]
    assert len(matches) == 1, matches
    return float(matches[0].value)


def test_metrics_follow_the_semantic_conventions(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    reader = InMemoryMetricReader()
    app = build_app(make_settings(name="orders", min_size=1, max_size=1, timeout=0.3))
    otel.instrument(app, meter_provider=MeterProvider(metric_readers=[reader]))
    client = client_for(app)
    for _ in range(3):
        assert client.get("/value").status_code == 200

    sleep = {"params": {"seconds": 1}}
    holder = threading.Thread(target=client.get, args=("/sleep",), kwargs=sleep)
    holder.start()
    deadline = time.monotonic() + 5
    while value(collect(reader)["db.client.connection.count"][1], state="used") != 1:
        assert time.monotonic() < deadline, "the sleeping request never held the connection"
        time.sleep(0.02)
    metrics = collect(reader)
    assert value(metrics["db.client.connection.count"][1], state="idle") == 0
    assert client.get("/value").status_code == 503  # the only connection is held: a timeout
    holder.join()

    metrics = collect(reader)
    assert {name: unit for name, (unit, _) in metrics.items()} == SPEC
    for _, points in metrics.values():
        assert all(p.attributes["db.client.connection.pool.name"] == "orders" for p in points)
    count = metrics["db.client.connection.count"][1]
    assert {p.attributes["db.client.connection.state"] for p in count} == {"idle", "used"}
    assert value(count, state="idle") == 1 and value(count, state="used") == 0
    assert value(metrics["db.client.connection.max"][1]) == 1
    assert value(metrics["db.client.connection.idle.max"][1]) == 1
    assert value(metrics["db.client.connection.idle.min"][1]) == 1
    assert value(metrics["db.client.connection.pending_requests"][1]) == 0
    assert value(metrics["db.client.connection.timeouts"][1]) == 1

    def histogram(name: str) -> HistogramDataPoint:
        (point,) = metrics[f"db.client.connection.{name}"][1]
        assert isinstance(point, HistogramDataPoint)
        assert tuple(point.explicit_bounds) == HISTOGRAM_BOUNDS
        return point

    use, wait, create = histogram("use_time"), histogram("wait_time"), histogram("create_time")
    assert use.count == 4  # three quick requests and the sleeping one (the 503 had none)
    assert 1.0 <= use.max < 5 and use.sum < 6
    assert wait.count == 5  # the failed wait counts too, as in /pool/stats
    assert 0.25 <= wait.max < 2  # the 503 waited DBPOOL_TIMEOUT (0.3 s)
    assert create.count >= 1 and 0 < create.max < 5  # the connection made at open


@pytest.mark.parametrize("off", ["DBPOOL_METRICS=false", "checkout_histograms=False"])
def test_without_checkout_histograms_the_pool_is_still_reported(
    make_settings: SettingsFactory, client_for: ClientFor, off: str
) -> None:
    reader = InMemoryMetricReader()
    app = build_app(make_settings(metrics=off != "DBPOOL_METRICS=false", min_size=2))
    otel.instrument(
        app,
        meter_provider=MeterProvider(metric_readers=[reader]),
        checkout_histograms=off != "checkout_histograms=False",
    )
    assert client_for(app).get("/value").status_code == 200
    metrics = collect(reader)
    assert "db.client.connection.use_time" not in metrics
    assert "db.client.connection.wait_time" not in metrics
    assert value(metrics["db.client.connection.count"][1], state="idle") == 2
    (create,) = metrics["db.client.connection.create_time"][1]
    assert create.count >= 2


def test_two_apps_report_through_one_meter_provider(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    for name, size in (("first", 1), ("second", 2)):
        app = build_app(make_settings(name=name, min_size=size, max_size=3))
        otel.instrument(app, meter_provider=provider)
        assert client_for(app).get("/value").status_code == 200
    metrics = collect(reader)
    maxima = {p.attributes[otel.POOL_NAME]: p.value for p in metrics["db.client.connection.max"][1]}
    assert maxima == {"first": 3, "second": 3}
    minima = metrics["db.client.connection.idle.min"][1]
    assert {p.attributes[otel.POOL_NAME]: p.value for p in minima} == {"first": 1, "second": 2}
    uses = metrics["db.client.connection.use_time"][1]
    assert {p.attributes[otel.POOL_NAME]: p.count for p in uses} == {"first": 1, "second": 1}


def test_instrument_twice_is_refused(make_settings: SettingsFactory) -> None:
    app = build_app(make_settings())
    otel.instrument(app, meter_provider=MeterProvider())
    with pytest.raises(RuntimeError, match="already called"):
        otel.instrument(app, meter_provider=MeterProvider())


# Run in a fresh interpreter: the global MeterProvider can be set only once per process, and
# opentelemetry is refused to fastapi_dbpool's own imports there. FastAPI itself imports
# opentelemetry (its own telemetry, since 0.16x), so the refusal is by importer: the modules it
# already loaded are dropped, and any later import of opentelemetry from a fastapi_dbpool
# module fails and is noted.
SCRIPT = """
import json, os, sys

refused = []

class Refuser:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] != "opentelemetry":
            return None
        frame = sys._getframe(1)
        while frame is not None and "importlib" in frame.f_globals.get("__name__", ""):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__", "") if frame is not None else ""
        if importer.partition(".")[0] == "fastapi_dbpool":
            refused.append(f"{importer} -> {name}")
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

from fastapi import FastAPI
from fastapi.testclient import TestClient

def forget_opentelemetry():
    for name in [name for name in sys.modules if name.partition(".")[0] == "opentelemetry"]:
        del sys.modules[name]

if os.environ["REFUSE"] == "1":
    forget_opentelemetry()
    sys.meta_path.insert(0, Refuser())

from fastapi_dbpool import ConnDep, PoolSettings, create_pool_lifespan, pool_router

def make_app():
    settings = PoolSettings(url=os.environ["URL"], min_size=1, max_size=2)
    app = FastAPI(lifespan=create_pool_lifespan(settings))
    app.include_router(pool_router)

    @app.get("/value")
    async def read(conn: ConnDep) -> int:
        return (await (await conn.execute("SELECT 1")).fetchone())[0]

    return app

def names():
    data = reader.get_metrics_data()
    return sorted({m.name for r in (data.resource_metrics if data else [])
                   for s in r.scope_metrics for m in s.metrics if m.name.startswith("db.")})

def run(app, collected):
    paths = ("/value", "/value", "/pool/stats", "/pool/metrics")
    with TestClient(app) as client:
        out["statuses"] += [client.get(path).status_code for path in paths]
        if collected:
            out[collected] = names()  # while the pool is open

out = {"statuses": []}
if os.environ["REFUSE"] == "0":
    from fastapi_dbpool import otel
    from opentelemetry.metrics import set_meter_provider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    instrumented = make_app()
    otel.instrument(instrumented)  # the global MeterProvider, before the SDK sets it
    reader = InMemoryMetricReader()
    set_meter_provider(MeterProvider(metric_readers=[reader]))
run(make_app(), "" if os.environ["REFUSE"] == "1" else "without_instrument")
if os.environ["REFUSE"] == "1":
    out["refused"] = list(refused)
    out["otel_loaded"] = "fastapi_dbpool.otel" in sys.modules
    forget_opentelemetry()  # in case FastAPI imported some of it again
    try:
        import fastapi_dbpool.otel
    except ImportError as exc:
        out["error"] = str(exc)
else:
    run(instrumented, "with_instrument")
print(json.dumps(out))
"""


def run_script(database_server: DatabaseServer, refuse: bool) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, "URL": database_server.url, "REFUSE": "1" if refuse else "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_the_package_serves_without_importing_opentelemetry(
    database_server: DatabaseServer,
) -> None:
    result = run_script(database_server, refuse=True)
    assert result["statuses"] == [200, 200, 200, 200]
    assert result["refused"] == []  # not even an import attempted and caught
    assert result["otel_loaded"] is False
    assert 'pip install "fastapi-dbpool[otel]"' in result["error"]


def test_nothing_is_recorded_until_instrument_is_called(database_server: DatabaseServer) -> None:
    result = run_script(database_server, refuse=False)
    assert result["statuses"] == [200] * 8
    assert result["without_instrument"] == []
    assert set(result["with_instrument"]) == set(SPEC)
