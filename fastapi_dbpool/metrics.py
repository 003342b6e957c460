"""GET /pool/metrics: the pool in the Prometheus text format (needs prometheus_client).

Values are read from the pool at scrape time by a collector, into a registry made for the
scrape: nothing global, nothing on the request path.
"""

from collections.abc import Iterator

from fastapi_dbpool.database import DatabasePool

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - exercised only without the extra
    available = False
else:
    available = True

INSTALL_HINT = 'Prometheus metrics need prometheus_client: pip install "fastapi-dbpool[metrics]"'


def render(database: DatabasePool) -> bytes:
    """The exposition text for one pool."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_PoolCollector(database))
    return bytes(generate_latest(registry))


if available:
    # One sample per pool, straight from psycopg-pool's counters: name, help, key, type.
    _FROM_STATS: tuple[
        tuple[str, str, str, type[GaugeMetricFamily] | type[CounterMetricFamily]], ...
    ] = (
        ("dbpool_connections_max", "max_size of the pool.", "pool_max", GaugeMetricFamily),
        (
            "dbpool_requests_waiting",
            "Requests waiting for a connection.",
            "requests_waiting",
            GaugeMetricFamily,
        ),
        ("dbpool_checkouts", "Connection requests.", "requests_num", CounterMetricFamily),
        (
            "dbpool_connections_opened",
            "Connections opened.",
            "connections_num",
            CounterMetricFamily,
        ),
        (
            "dbpool_connection_errors",
            "Failed connection attempts.",
            "connections_errors",
            CounterMetricFamily,
        ),
        (
            "dbpool_connections_lost",
            "Connections found broken by a check.",
            "connections_lost",
            CounterMetricFamily,
        ),
    )

    class _PoolCollector(Collector):
        def __init__(self, database: DatabasePool) -> None:
            self._database = database

        def collect(self) -> Iterator[Metric]:
            database, name = self._database, self._database.settings.name
            stats = database.pool.get_stats()
            size, free = stats.get("pool_size", 0), stats.get("pool_available", 0)

            connections = GaugeMetricFamily(
                "dbpool_connections",
                "Connections held by the pool, by state.",
                labels=["pool", "state"],
            )
            connections.add_metric([name, "idle"], free)
            connections.add_metric([name, "in_use"], max(0, size - free))
            yield connections
            for metric, doc, key, family in _FROM_STATS:
                single = family(metric, doc, labels=["pool"])
                single.add_metric([name], stats.get(key, 0))
                yield single
            unavailable = CounterMetricFamily(
                "dbpool_unavailable", "503 answers, by cause.", labels=["pool", "cause"]
            )
            for cause, count in database.unavailable.items():
                unavailable.add_metric([name, cause], count)
            yield unavailable
            recorder = database.recorder
            if recorder is None:
                return
            for metric, doc, distribution in (
                (
                    "dbpool_acquire_wait_seconds",
                    "Time requests waited for a connection.",
                    recorder.wait,
                ),
                ("dbpool_hold_seconds", "Time requests held their connection.", recorder.hold),
            ):
                histogram = HistogramMetricFamily(metric, doc, labels=["pool"])
                histogram.add_metric(
                    [name], buckets=distribution.histogram(), sum_value=distribution.sum_ms / 1000
                )
                yield histogram
