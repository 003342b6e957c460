"""GET /pool/metrics: the pool in the Prometheus text format (needs prometheus_client).

Values are read from the pool at scrape time by a collector, into a registry made for the
scrape: nothing global, nothing on the request path.
"""

from collections.abc import Iterator, Sequence

from fastapi_dbpool._advice import advice_of
from fastapi_dbpool._summary import connections_in_use
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


def render(databases: Sequence[DatabasePool]) -> bytes:
    """The exposition text for these pools, one sample per pool and metric."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_PoolCollector(databases))
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
        def __init__(self, databases: Sequence[DatabasePool]) -> None:
            self._databases = databases

        def collect(self) -> Iterator[Metric]:
            pools = [
                (database, database.settings.name, database.pool.get_stats())
                for database in self._databases
            ]
            connections = GaugeMetricFamily(
                "dbpool_connections",
                "Connections held by the pool, by state.",
                labels=["pool", "state"],
            )
            for _, name, stats in pools:
                connections.add_metric([name, "idle"], stats.get("pool_available", 0))
                connections.add_metric([name, "in_use"], connections_in_use(stats))
            yield connections
            for metric, doc, key, family in _FROM_STATS:
                single = family(metric, doc, labels=["pool"])
                for _, name, stats in pools:
                    single.add_metric([name], stats.get(key, 0))
                yield single
            serving = GaugeMetricFamily(
                "dbpool_serving", "1 while the pool serves, 0 while reads skip it.", labels=["pool"]
            )
            fallbacks = CounterMetricFamily(
                "dbpool_replica_fallbacks",
                "Reads a replica could not take in time, sent elsewhere.",
                labels=["pool"],
            )
            unavailable = CounterMetricFamily(
                "dbpool_unavailable", "503 answers, by cause.", labels=["pool", "cause"]
            )
            for database, name, _ in pools:
                serving.add_metric([name], 0 if database.down else 1)
                fallbacks.add_metric([name], database.fallbacks)
                for cause, count in database.unavailable.items():
                    unavailable.add_metric([name, cause], count)
            yield serving
            yield fallbacks
            yield unavailable
            saturated = GaugeMetricFamily(
                "dbpool_saturated",
                "1 while the sizing advice says saturated (see /pool/stats advice).",
                labels=["pool"],
            )
            needed = GaugeMetricFamily(
                "dbpool_connections_needed",
                "Connections the recent load would keep busy had nobody waited (Little's law).",
                labels=["pool"],
            )
            for database, name, _ in pools:
                advice = advice_of(database)
                if advice is not None:
                    saturated.add_metric([name], 1 if advice.verdict == "saturated" else 0)
                    needed.add_metric([name], advice.figures["connections_needed"])
            if saturated.samples:
                yield saturated
                yield needed
            for metric, doc, attribute in (
                ("dbpool_acquire_wait_seconds", "Time requests waited for a connection.", "wait"),
                ("dbpool_hold_seconds", "Time requests held their connection.", "hold"),
            ):
                histogram = HistogramMetricFamily(metric, doc, labels=["pool"])
                for database, name, _ in pools:
                    if database.recorder is None:
                        continue
                    distribution = getattr(database.recorder, attribute)
                    histogram.add_metric(
                        [name],
                        buckets=distribution.histogram(),
                        sum_value=distribution.sum_ms / 1000,
                    )
                if histogram.samples:
                    yield histogram
