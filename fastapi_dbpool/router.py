"""pool_router: GET /health/db, GET /pool/stats and GET /pool/metrics, for every pool."""

import asyncio
from time import perf_counter
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from fastapi_dbpool import metrics
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.dependencies import get_databases
from fastapi_dbpool.health import ping
from fastapi_dbpool.pools import Databases
from fastapi_dbpool.stats import AppPoolStats, Health, PoolHealth, snapshot_all

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
    answers = await asyncio.gather(*(_check(database) for database in databases))
    pools = {
        database.settings.name: answer for database, answer in zip(databases, answers, strict=True)
    }
    default = pools[databases.default.settings.name]
    failing_required = [answer for answer in answers if answer.required and answer.reason]
    if failing_required:
        status, code = "unavailable", 503
        reason = default.reason if default.reason else failing_required[0].reason
    else:
        status = "degraded" if any(answer.reason for answer in answers) else "ok"
        code, reason = 200, None
    body = Health(
        status=status,
        reason=reason,
        latency_ms=default.latency_ms,
        pools=pools if len(pools) > 1 else None,
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=code)


async def _check(database: DatabasePool) -> PoolHealth:
    required = database.settings.is_required
    if database.down:  # a replica reads skip: its own pings say when it is back
        return PoolHealth(status="unavailable", required=required, reason="not_serving")
    started = perf_counter()
    reason = await ping(database)
    if reason is not None:
        return PoolHealth(status="unavailable", required=required, reason=reason)
    latency_ms = round((perf_counter() - started) * 1000, 2)
    return PoolHealth(status="ok", required=required, latency_ms=latency_ms)


@pool_router.get(
    "/health/ready",
    response_model=Health,
    responses={503: {"model": Health, "description": "Draining, or a required pool is down."}},
    summary="Readiness: whether this instance should get traffic",
)
async def health_ready(databases: _Databases) -> JSONResponse:
    """503 from the first SIGTERM on while the app drains (DBPOOL_DRAIN_SECONDS), else the same
    answer as /health/db. Use /health/db (or a route with no database) for liveness."""
    if databases.drain.draining:
        body = Health(status="unavailable", reason="draining")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return await health_db(databases)


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
    if not metrics.available:
        return PlainTextResponse(metrics.INSTALL_HINT + "\n", status_code=501)
    return Response(
        metrics.render(list(databases)), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
