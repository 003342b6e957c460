"""The answers of /health/db, /health/ready, /pool/stats and /pool/metrics, as Starlette
responses: shared by pool_router (FastAPI) and fastapi_dbpool.starlette (plain Starlette)."""

import asyncio
from time import perf_counter

from starlette.responses import JSONResponse, PlainTextResponse, Response

from fastapi_dbpool import _metrics
from fastapi_dbpool._health import ping
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.pools import Databases
from fastapi_dbpool.stats import Health, PoolHealth, snapshot_all

METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def health(databases: Databases) -> JSONResponse:
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


async def ready(databases: Databases) -> JSONResponse:
    """503 from the first SIGTERM on while the app drains (DBPOOL_DRAIN_SECONDS), else the same
    answer as /health/db."""
    if databases.drain.draining:
        body = Health(status="unavailable", reason="draining")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return await health(databases)


def metrics_text(databases: Databases) -> Response:
    """Every pool's metrics in the Prometheus text format; 501 without prometheus_client."""
    if not _metrics.available:
        return PlainTextResponse(_metrics.INSTALL_HINT + "\n", status_code=501)
    return Response(_metrics.render(list(databases)), media_type=METRICS_MEDIA_TYPE)


def stats(databases: Databases) -> JSONResponse:
    """Each pool's state and psycopg-pool's counters, as /pool/stats answers them."""
    return JSONResponse(snapshot_all(databases).model_dump(mode="json"))
