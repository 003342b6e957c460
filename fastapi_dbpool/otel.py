"""OpenTelemetry metrics of the pools, under the semantic conventions' names (the otel extra).

``instrument(app)`` before the app starts: the lifespan then hands it the pools before it opens
them. Gauges and counters are read from the pools when the MeterProvider collects (the figures
/pool/stats and /pool/metrics show); the three histograms are recorded where the package already
times each checkout and each new connection. Nothing here is imported unless the app asks for it.
``trace_queries=True`` also traces every statement (opentelemetry-instrumentation-psycopg), one
connection at a time as the pool makes it: an instrumentation set up after the pools opened, or
per request, misses connections or traces only their first request.
"""

import weakref
from collections.abc import Callable, Iterable, Iterator
from time import monotonic
from typing import Any, Protocol

from fastapi_dbpool import __version__
from fastapi_dbpool._root import UsageError
from fastapi_dbpool._summary import connections_in_use
from fastapi_dbpool._timings import HISTOGRAM_BOUNDS, Distribution
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.lifespan import BEFORE_OPEN_KEY
from fastapi_dbpool.pools import Databases

__all__ = [
    "instrument",
]

INSTALL_HINT = 'OpenTelemetry metrics need opentelemetry-api: pip install "fastapi-dbpool[otel]"'

try:
    from opentelemetry.metrics import (
        CallbackOptions,
        Histogram,
        Meter,
        MeterProvider,
        Observation,
        get_meter,
    )
    from opentelemetry.trace import TracerProvider
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(INSTALL_HINT) from exc

TRACING_HINT = (
    "trace_queries needs opentelemetry-instrumentation-psycopg (0.61b0 or later): "
    'pip install "fastapi-dbpool[integrations]" or that package alone'
)

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
Attributes = dict[str, str]


class _App(Protocol):
    state: Any


class _Instruments:
    """The instruments of one MeterProvider, shared by every app that reports through it: a
    meter keeps the first instrument of each name (and its callbacks), so a second app's would
    be dropped."""

    def __init__(self, provider: MeterProvider | None) -> None:
        meter = get_meter("fastapi_dbpool", __version__, provider)
        self.apps: weakref.WeakSet[PoolInstruments] = weakref.WeakSet()
        self.create_time = _histogram(meter, "create_time", "The time it took to create a new "
                                      "connection.")  # fmt: skip
        self.wait_time = _histogram(meter, "wait_time", "The time it took to obtain an open "
                                    "connection from the pool.")  # fmt: skip
        self.use_time = _histogram(meter, "use_time", "The time between borrowing a connection "
                                   "and returning it to the pool.")  # fmt: skip
        for name, unit, description, read in (
            ("count", "{connection}", "The number of connections that are currently in state "
             "described by the state attribute.", self._count),
            ("idle.max", "{connection}", "The maximum number of idle open connections allowed.",
             self._stat("pool_max")),  # max_size: psycopg-pool has no bound of idle ones
            ("idle.min", "{connection}", "The minimum number of idle open connections allowed.",
             self._stat("pool_min")),  # min_size: the connections the pool keeps open
            ("max", "{connection}", "The maximum number of open connections allowed.",
             self._stat("pool_max")),
            ("pending_requests", "{request}", "The number of current pending requests for an "
             "open connection.", self._stat("requests_waiting")),
        ):  # fmt: skip
            meter.create_observable_up_down_counter(
                f"db.client.connection.{name}", [read], unit=unit, description=description
            )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            [self._timeouts],
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain "
            "a connection from the pool.",
        )

    def _open(self) -> Iterator[tuple[DatabasePool, Attributes, dict[str, int]]]:
        for app in list(self.apps):
            yield from app.open_pools()

    def _count(self, options: CallbackOptions) -> Iterator[Observation]:
        for _, attributes, stats in self._open():
            yield Observation(stats.get("pool_available", 0), {**attributes, STATE: "idle"})
            yield Observation(connections_in_use(stats), {**attributes, STATE: "used"})

    def _stat(self, key: str) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def read(options: CallbackOptions) -> Iterator[Observation]:
            for _, attributes, stats in self._open():
                yield Observation(stats.get(key, 0), attributes)

        return read

    def _timeouts(self, options: CallbackOptions) -> Iterator[Observation]:
        for database, attributes, _ in self._open():
            yield Observation(database.unavailable["pool_timeout"], attributes)


class _Global:
    """The key of the global MeterProvider, whether the application has set it yet or not."""


_GLOBAL = _Global()
# One _Instruments per MeterProvider, as long as the provider lives.
_SHARED: "weakref.WeakKeyDictionary[object, _Instruments]" = weakref.WeakKeyDictionary()


class PoolInstruments:
    """One app's pools, reported through the semantic conventions' instruments.

    instrument(app) makes one per app; for pools opened without the lifespan, make one and
    attach() the pools before they open."""

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        checkout_histograms: bool = True,
        query_tracer: Callable[[Any], Any] | None = None,
    ) -> None:
        key = _GLOBAL if meter_provider is None else meter_provider
        instruments = _SHARED.get(key)
        if instruments is None:
            instruments = _SHARED[key] = _Instruments(meter_provider)
        instruments.apps.add(self)
        self._instruments = instruments
        self._checkout_histograms = checkout_histograms
        self._query_tracer = query_tracer
        self._databases: list[DatabasePool] = []
        self._attributes: dict[str, Attributes] = {}

    def attach(self, databases: Databases | Iterable[DatabasePool]) -> None:
        """Report these pools from now on, in place of the ones attached before.

        Call it before the pools open: the histograms hook into each pool's checkout timings
        and connection class, which must not change while connections are lent."""
        pools = list(databases)
        for database in pools:
            if not database.pool.closed:
                raise UsageError(
                    f"pool {database.settings.name!r} is open: attach OpenTelemetry before the "
                    "pools open (fastapi_dbpool.otel.instrument(app) before the app starts)"
                )
        instruments = self._instruments
        self._databases = pools
        self._attributes = {}
        for database in pools:
            attributes = {POOL_NAME: database.settings.name}
            self._attributes[database.settings.name] = attributes
            pool = database.pool
            pool.connection_class = _timed(
                pool.connection_class, instruments.create_time, attributes, self._query_tracer
            )
            recorder = database.recorder
            # DBPOOL_METRICS=false: no checkout timings to hook.
            if recorder is not None and self._checkout_histograms:
                recorder.wait = _Recorded(instruments.wait_time, attributes)
                recorder.hold = _Recorded(instruments.use_time, attributes)

    def open_pools(self) -> Iterator[tuple[DatabasePool, Attributes, dict[str, int]]]:
        """(pool, its attributes, its psycopg-pool stats) of every attached pool open now."""
        for database in self._databases:
            if not database.pool.closed:
                name = database.settings.name
                yield database, self._attributes[name], database.pool.get_stats()


def instrument(
    app: _App,
    meter_provider: MeterProvider | None = None,
    *,
    checkout_histograms: bool = True,
    trace_queries: bool = False,
    tracer_provider: TracerProvider | None = None,
) -> PoolInstruments:
    """Report app's pools through OpenTelemetry: call it before the app starts.

    meter_provider: the global one (opentelemetry.metrics.set_meter_provider) by default.
    checkout_histograms=False leaves out wait_time and use_time, the only instruments that
    cost something per checkout (two samples through the SDK, see docs/observability.md).
    trace_queries=True: a span per statement on every connection of the async pools, through
    tracer_provider (the global one by default)."""
    tracer = _query_tracer(tracer_provider) if trace_queries else None
    hooks: list[Callable[[Databases], None]] = list(getattr(app.state, BEFORE_OPEN_KEY, ()))
    if any(isinstance(getattr(hook, "__self__", None), PoolInstruments) for hook in hooks):
        raise UsageError("fastapi_dbpool.otel.instrument(app) was already called for this app")
    instruments = PoolInstruments(meter_provider, checkout_histograms, tracer)
    setattr(app.state, BEFORE_OPEN_KEY, [*hooks, instruments.attach])
    return instruments


def _histogram(meter: Meter, name: str, description: str) -> Histogram:
    return meter.create_histogram(
        f"db.client.connection.{name}",
        unit="s",
        description=description,
        explicit_bucket_boundaries_advisory=HISTOGRAM_BOUNDS,  # as /pool/metrics' buckets
    )


class _Recorded(Distribution):
    """A Distribution (ms) that also records each duration into a histogram (s)."""

    def __init__(self, histogram: Histogram, attributes: Attributes) -> None:
        super().__init__()
        self._record = histogram.record
        self._attributes = attributes

    def add(self, ms: float) -> None:
        super().add(ms)
        self._record(ms / 1000, self._attributes)


def _query_tracer(tracer_provider: TracerProvider | None) -> Callable[[Any], Any]:
    """What instruments one new connection for psycopg's OpenTelemetry tracing."""
    try:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    except ImportError as exc:
        raise ImportError(TRACING_HINT) from exc

    def trace(conn: Any) -> Any:
        return PsycopgInstrumentor.instrument_connection(conn, tracer_provider=tracer_provider)

    return trace


def _timed(
    cls: type[Any],
    histogram: Histogram,
    attributes: Attributes,
    trace: Callable[[Any], Any] | None = None,
) -> type[Any]:
    """cls, whose connect() also records how long making the connection took (and traces the
    connection's statements, if asked). Before the pool's configure callback: the traced
    cursor_factory is then part of what the pool restores on every return."""

    class Timed(cls):  # type: ignore[misc]
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:
            started = monotonic()
            conn = await super().connect(*args, **kwargs)
            histogram.record(monotonic() - started, attributes)
            if trace is not None:
                trace(conn)
            return conn

    Timed.__name__ = Timed.__qualname__ = cls.__name__
    return Timed
