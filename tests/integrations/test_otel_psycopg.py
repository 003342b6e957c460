"""opentelemetry-instrumentation-psycopg: a span per statement, on connections of our pools."""

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fastapi_dbpool import ConnDep, create_pool_lifespan, otel
from fastapi_dbpool.errors import TransactionRefused
from tests.integration.conftest import ClientFor
from tests.integrations.conftest import SettingsFactory

MARK = "SELECT 'traced' AS marker"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def traced(exporter: InMemorySpanExporter) -> int:
    """Spans of MARK statements exported so far."""
    return sum(
        1
        for span in exporter.get_finished_spans()
        if MARK in str((span.attributes or {}).get("db.statement", ""))
    )


def marker_app(settings: Any, **lifespan: Any) -> FastAPI:
    app = FastAPI(lifespan=create_pool_lifespan(settings, **lifespan))

    @app.get("/marker")
    async def marker(conn: ConnDep) -> dict[str, int]:
        await conn.execute(MARK)
        return {"pid": conn.info.backend_pid}

    return app


def test_a_statement_span_is_a_child_of_the_current_span(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    app = FastAPI(lifespan=create_pool_lifespan(make_settings(max_size=1)))
    otel.instrument(app, trace_queries=True, tracer_provider=provider)

    @app.get("/marker")
    async def marker(conn: ConnDep) -> None:
        with provider.get_tracer("test").start_as_current_span("request"):
            await conn.execute(MARK)

    client_for(app).get("/marker")
    spans = {span.name: span for span in exporter.get_finished_spans()}
    statement = next(span for span in spans.values() if span.name != "request")
    assert statement.parent is not None
    assert statement.parent.span_id == spans["request"].context.span_id


def test_trace_queries_traces_every_request_on_a_reused_connection(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    app = marker_app(make_settings(max_size=1))
    otel.instrument(app, trace_queries=True, tracer_provider=provider)
    client = client_for(app)
    pids = {client.get("/marker").json()["pid"] for _ in range(3)}
    assert len(pids) == 1  # one connection, lent three times
    assert traced(exporter) == 3


def test_instrument_connection_per_request_traces_only_the_first(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first way: the pool puts back the connection's cursor_factory when it is given back,
    but the instrumentation's own flag stays, so it declines to instrument it again."""
    app = FastAPI(lifespan=create_pool_lifespan(make_settings(max_size=1)))

    @app.get("/marker")
    async def marker(conn: ConnDep) -> None:
        PsycopgInstrumentor.instrument_connection(conn, tracer_provider=provider)
        await conn.execute(MARK)

    client = client_for(app)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            client.get("/marker")
    assert traced(exporter) == 1
    assert "already instrumented" in caplog.text


@pytest.fixture
def instrumentor() -> Iterator[PsycopgInstrumentor]:
    instrumentor = PsycopgInstrumentor()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()  # it patches psycopg for the whole process


def test_instrument_in_the_lifespan_misses_the_open_pools(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    instrumentor: PsycopgInstrumentor,
) -> None:
    """The first way: instrument() patches connect(), and the pools connected already."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        instrumentor.instrument(tracer_provider=provider)
        yield

    client = client_for(marker_app(make_settings(max_size=1), lifespan=lifespan))
    client.get("/marker")
    assert traced(exporter) == 0


def test_instrument_before_the_app_starts_traces(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    instrumentor: PsycopgInstrumentor,
) -> None:
    instrumentor.instrument(tracer_provider=provider)
    client = client_for(marker_app(make_settings(max_size=1)))
    for _ in range(2):
        client.get("/marker")
    assert traced(exporter) == 2


@pytest.mark.parametrize("state", ["instrumented", "uninstrumented"])
def test_the_pools_connections_keep_the_packages_class(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    instrumentor: PsycopgInstrumentor,
    state: str,
) -> None:
    """instrument() wraps psycopg's connect(), and uninstrument() leaves a connect() that makes
    psycopg's own class (seen with 0.61b0): the pool's connections must stay the package's,
    with its rules (commit() refused inside a request, the owner's checks)."""
    instrumentor.instrument(tracer_provider=provider)
    if state == "uninstrumented":
        instrumentor.uninstrument()  # as a test suite's teardown does
    app = FastAPI(lifespan=create_pool_lifespan(make_settings(max_size=1)))

    @app.get("/commit")
    async def commit(conn: ConnDep) -> dict[str, str]:
        await conn.execute(MARK)
        kind = type(conn).__name__
        try:
            await conn.commit()
        except TransactionRefused:
            return {"class": kind, "commit": "refused"}
        return {"class": kind, "commit": "ran"}

    client = client_for(app)
    assert client.get("/commit").json() == {"class": "PooledConnection", "commit": "refused"}
    assert traced(exporter) == (1 if state == "instrumented" else 0)
