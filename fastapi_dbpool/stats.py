"""The /pool/stats and /health/db bodies: pydantic models used as response models."""

from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from fastapi_dbpool._advice import Advice, advice_of
from fastapi_dbpool._health import HealthReason
from fastapi_dbpool._sync_pool import SyncPool
from fastapi_dbpool._timings import Timings
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.pools import Databases

__all__ = [
    "AppPoolStats",
    "Health",
    "PoolCounters",
    "PoolHealth",
    "PoolStats",
    "Unavailable",
]


class PoolCounters(BaseModel):
    """psycopg-pool's own counters, under its own names, every one present even at 0."""

    pool_min: int = Field(description="min_size of the pool.")
    pool_max: int = Field(description="max_size of the pool.")
    pool_size: int = Field(description="Connections the pool holds now, in use or idle.")
    pool_available: int = Field(description="Idle connections ready to be handed out.")
    requests_waiting: int = Field(description="Requests waiting for a connection now.")
    requests_num: int = Field(0, description="Connection requests since the pool opened.")
    requests_queued: int = Field(0, description="Requests that had to wait for a connection.")
    requests_wait_ms: int = Field(0, description="Total time requests spent waiting (ms).")
    requests_errors: int = Field(0, description="Requests that failed: timeout, queue full.")
    usage_ms: int = Field(
        0,
        description="Total time connections were in use (ms): psycopg-pool's count for "
        "pool.connection(), plus this package's checkouts (unless DBPOOL_METRICS=false).",
    )
    returns_bad: int = Field(0, description="Connections returned broken or in a bad state.")
    connections_num: int = Field(0, description="Connections opened since the pool opened.")
    connections_ms: int = Field(0, description="Total time spent opening connections (ms).")
    connections_errors: int = Field(0, description="Failed connection attempts.")
    connections_lost: int = Field(0, description="Connections found broken by a check.")


class Unavailable(BaseModel):
    """503 answers given by this package, by cause."""

    pool_timeout: int = 0
    queue_full: int = 0
    pool_closed: int = 0
    connection_lost: int = 0


class PoolStats(BaseModel):
    """A snapshot of the pool: the friendly view first, then psycopg-pool's counters."""

    name: str = Field(description="The pool's name (DBPOOL_NAME).")
    status: Literal["open", "closed"]
    replica: bool = Field(False, description="Reads are routed here (DBPOOL_<NAME>_REPLICA).")
    required: bool = Field(True, description="/health/db is 503 when this pool is down.")
    serving: bool = Field(
        True, description="False while a replica that could not serve is skipped by reads."
    )
    fallbacks: int = Field(0, description="Reads this replica could not take in time.")
    total: int = Field(description="Connections open now (pool_size).")
    free: int = Field(description="Idle connections (pool_available).")
    in_use: int = Field(description="Connections lent to requests (total - free).")
    waiting: int = Field(description="Requests waiting for a connection (requests_waiting).")
    counters: PoolCounters
    unavailable: Unavailable = Field(description="503 answers by cause.")
    timings: Timings | None = Field(
        None, description="Checkout wait and hold times; absent with DBPOOL_METRICS=false."
    )
    advice: Advice | None = Field(
        None, description="Sizing verdict from the timings; absent with DBPOOL_METRICS=false."
    )


class AppPoolStats(PoolStats):
    """/pool/stats: the default pool at the top, and every pool by name when there are more."""

    pools: dict[str, PoolStats] | None = Field(
        None,
        description="Every pool of the app by name, the default one included; absent when the "
        "app has only the default pool.",
    )

    @model_serializer(mode="wrap")
    def _without_absent_pools(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("pools") is None:
            data.pop("pools", None)
        return data


class PoolHealth(BaseModel):
    """One pool's answer to the health check."""

    status: Literal["ok", "unavailable"]
    required: bool = Field(description="Whether this pool being down makes /health/db 503.")
    reason: HealthReason | None = Field(
        None,
        description="Why the pool is unavailable: timeout (no answer within "
        "DBPOOL_HEALTH_TIMEOUT), pool_timeout (every connection busy), queue_full, pool_closed, "
        "unreachable (the connection was lost), cannot_connect (new connections fail: server down, "
        "password refused), not_serving (a replica "
        "that reads skip until it answers).",
    )
    latency_ms: float | None = Field(None, description="Round trip of the check query.")


class Health(BaseModel):
    """The /health/db body: fixed statuses and reasons, never a server message."""

    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="ok: every pool answers; degraded: only pools that are not required fail "
        "(200); unavailable: a required pool fails (503)."
    )
    reason: HealthReason | None = Field(
        None,
        description="Why the default (or first failing required) pool is unavailable, as in pools.",
    )
    latency_ms: float | None = Field(None, description="Round trip of the default pool's check.")
    pools: dict[str, PoolHealth] | None = Field(
        None, description="Each pool's answer, by name, when the app has more than one."
    )


def snapshot(database: DatabasePool) -> PoolStats:
    """Read the pool's counters without resetting them (get_stats, not pop_stats)."""
    counters = PoolCounters.model_validate(database.pool.get_stats())
    timings = None
    if database.recorder is not None:
        timings = database.recorder.snapshot()
        # get_conn's checkouts use getconn/putconn, which psycopg-pool does not time.
        counters.usage_ms += int(database.recorder.hold.sum_ms)
    advice = advice_of(database, timings) if timings is not None else None
    return PoolStats(
        name=database.settings.name,
        status="closed" if database.pool.closed else "open",
        replica=database.settings.replica,
        required=database.settings.is_required,
        serving=not database.down,
        fallbacks=database.fallbacks,
        **_friendly(counters),
        counters=counters,
        unavailable=Unavailable.model_validate(dict(database.unavailable)),
        timings=timings,
        advice=advice,
    )


def snapshot_sync(sync: SyncPool) -> PoolStats:
    """The sync pool of get_sync_conn: psycopg-pool's counters and the 503s, no timings."""
    counters = PoolCounters.model_validate(sync.stats())
    return PoolStats(
        name=sync.name,
        status="closed" if sync.pool.closed else "open",
        required=False,
        **_friendly(counters),
        counters=counters,
        unavailable=Unavailable.model_validate(dict(sync.unavailable)),
    )


def _friendly(counters: PoolCounters) -> dict[str, int]:
    """The friendly view of psycopg-pool's counters: total, free, in_use, waiting."""
    return {
        "total": counters.pool_size,
        "free": counters.pool_available,
        "in_use": max(0, counters.pool_size - counters.pool_available),
        "waiting": counters.requests_waiting,
    }


def snapshot_all(databases: Databases) -> AppPoolStats:
    """Every pool's snapshot, by name, the default pool's also at the top; get_sync_conn's
    pools (the pool's name plus ":sync") once a def endpoint opened them."""
    pools = {database.settings.name: snapshot(database) for database in databases}
    pools.update({sync.name: snapshot_sync(sync) for sync in databases.sync.values()})
    default = pools[databases.default.settings.name]
    return AppPoolStats(**dict(default), pools=pools if len(pools) > 1 else None)
