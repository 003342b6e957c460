"""pool_router: GET /health/db and GET /pool/stats."""

from time import perf_counter
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from fastapi_dbpool import metrics
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.dependencies import get_database
from fastapi_dbpool.stats import Health, PoolStats, snapshot

pool_router = APIRouter(tags=["database"])

_Database = Annotated[DatabasePool, Depends(get_database)]


@pool_router.get(
    "/health/db",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database cannot serve now."}},
    summary="Check that the database answers through the pool",
)
async def health_db(database: _Database) -> JSONResponse:
    """200 when a trivial query runs through the pool within DBPOOL_HEALTH_TIMEOUT, else 503."""
    started = perf_counter()
    reason = await database.ping()
    if reason is not None:
        body = Health(status="unavailable", reason=reason)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    latency_ms = round((perf_counter() - started) * 1000, 2)
    return JSONResponse(Health(status="ok", latency_ms=latency_ms).model_dump(exclude_none=True))


@pool_router.get("/pool/stats", response_model=PoolStats, summary="Pool counters")
async def pool_stats(database: _Database) -> PoolStats:
    """The pool's state and psycopg-pool's counters; reading them resets nothing."""
    return snapshot(database)


@pool_router.get(
    "/pool/metrics",
    response_class=PlainTextResponse,
    responses={501: {"description": "prometheus_client is not installed."}},
    summary="Pool metrics in the Prometheus text format",
)
async def pool_metrics(database: _Database) -> Response:
    """Gauges, counters and histograms of the pool, labelled by pool name."""
    if not metrics.available:
        return PlainTextResponse(metrics.INSTALL_HINT + "\n", status_code=501)
    return Response(metrics.render(database), media_type="text/plain; version=0.0.4; charset=utf-8")
