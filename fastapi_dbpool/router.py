"""pool_router: GET /health/db, /pool/stats, /pool/metrics and /pool/dashboard, for every pool."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from fastapi_dbpool import _dashboard, _endpoints
from fastapi_dbpool.dependencies import get_databases
from fastapi_dbpool.pools import Databases
from fastapi_dbpool.stats import AppPoolStats, Health, snapshot_all

__all__ = [
    "pool_router",
]

pool_router = APIRouter(tags=["database"])

_Databases = Annotated[Databases, Depends(get_databases)]


@pool_router.get(
    "/health/db",
    response_model=Health,
    responses={503: {"model": Health, "description": "A required pool cannot serve now."}},
    summary="Check that the database answers through each pool",
)
async def health_db(databases: _Databases) -> JSONResponse:
    """200 when every required pool runs a trivial query within its DBPOOL_HEALTH_TIMEOUT,
    else 503. Pools that are not required (replicas, by default) only make it "degraded"."""
    return await _endpoints.health(databases)


@pool_router.get(
    "/health/ready",
    response_model=Health,
    responses={503: {"model": Health, "description": "Draining, or a required pool is down."}},
    summary="Readiness: whether this instance should get traffic",
)
async def health_ready(databases: _Databases) -> JSONResponse:
    """503 from the first SIGTERM on while the app drains (DBPOOL_DRAIN_SECONDS), else the same
    answer as /health/db. Use /health/db (or a route with no database) for liveness."""
    return await _endpoints.ready(databases)


@pool_router.get("/pool/stats", response_model=AppPoolStats, summary="Pool counters")
async def pool_stats(databases: _Databases) -> AppPoolStats:
    """Each pool's state and psycopg-pool's counters; reading them resets nothing."""
    return snapshot_all(databases)


@pool_router.get(
    "/pool/metrics",
    response_class=PlainTextResponse,
    responses={501: {"description": "prometheus_client is not installed."}},
    summary="Pool metrics in the Prometheus text format",
)
async def pool_metrics(databases: _Databases) -> Response:
    """Gauges, counters and histograms of every pool, labelled by pool name."""
    return _endpoints.metrics_text(databases)


@pool_router.get(
    "/pool/dashboard", response_class=HTMLResponse, summary="A live page of every pool"
)
async def pool_dashboard() -> HTMLResponse:
    """A self-contained page (no external asset) that polls /pool/stats and draws each pool."""
    return _dashboard.response()
