"""The same guarantees for a plain Starlette app, without FastAPI.

::

    from starlette.applications import Starlette
    from fastapi_dbpool import pool_lifespan
    from fastapi_dbpool.starlette import connection, exception_handlers, pool_routes

    async def create_user(request):
        async with connection(request) as conn:
            await conn.execute("INSERT INTO users (name) VALUES (%s)", ["Ada"])
        return JSONResponse({"created": True}, status_code=201)  # committed already

    app = Starlette(
        lifespan=pool_lifespan,
        routes=[Route("/users", create_user, methods=["POST"]), *pool_routes()],
        exception_handlers=exception_handlers,
    )

Nothing on this path imports FastAPI.
"""

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from fastapi_dbpool import _dashboard, _endpoints
from fastapi_dbpool._state import database_of, databases_of, leases_of, named_pool
from fastapi_dbpool.errors import DatabaseHTTPError
from fastapi_dbpool.options import Isolation, TransactionOptions
from fastapi_dbpool.session import autocommit, transaction

Conn = AsyncConnection[Any]

__all__ = ["connection", "exception_handlers", "pool_routes"]


@asynccontextmanager
async def connection(
    request: HTTPConnection,
    *,
    pool: str | None = None,
    read: bool = False,
    isolation: Isolation | None = None,
    read_only: bool | None = None,
    statement_timeout: float | None = None,
    lock_timeout: float | None = None,
) -> AsyncIterator[Conn]:
    """A pooled connection in a transaction that commits when the block ends and rolls back
    when it raises: ``async with connection(request) as conn:``.

    Leave the block before returning the response, and the commit is done before the client
    hears anything. A request holds one connection per pool, however many blocks it opens.
    Pool errors raise the same answers as get_conn (503 with Retry-After, 504, 500); add
    ``exception_handlers`` to the app for FastAPI's JSON bodies. read=True: autocommit, from a
    replica when the app has some (as get_read_conn). pool: a named pool. The other options
    are get_conn_with's.
    """
    leases = leases_of(request)
    session: AbstractAsyncContextManager[Conn]
    if read:
        databases = databases_of(request)
        if pool is None and databases.replicas:
            holds_primary = databases.default in leases
            session = databases.read(request.scope, leases, holds_primary)
        else:
            database = databases.default if pool is None else named_pool(request, pool)
            session = autocommit(database, request.scope, leases=leases)
    else:
        database = database_of(request) if pool is None else named_pool(request, pool)
        options = TransactionOptions(isolation, read_only, None, statement_timeout, lock_timeout)
        # Without options, a block inside another one joins its transaction.
        session = transaction(
            database, request.scope, leases=leases, options=options or None
        )
    async with session as conn:
        yield conn


async def _database_error(request: Request, exc: Exception) -> Response:
    """The JSON answer FastAPI gives the package's errors: {"detail": ...} and their headers."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


exception_handlers: Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    DatabaseHTTPError: _database_error
}
"""``Starlette(exception_handlers=exception_handlers)``: the package's 503/504/500 answers as
JSON, like a FastAPI app's (without it, Starlette answers them as plain text, same status and
headers)."""


def pool_routes() -> list[BaseRoute]:
    """GET /health/db, /health/ready, /pool/stats, /pool/metrics and /pool/dashboard, as
    pool_router serves them."""

    async def health_db(request: Request) -> Response:
        return await _endpoints.health(databases_of(request))

    async def health_ready(request: Request) -> Response:
        return await _endpoints.ready(databases_of(request))

    async def pool_stats(request: Request) -> Response:
        return _endpoints.stats(databases_of(request))

    async def pool_metrics(request: Request) -> Response:
        return _endpoints.metrics_text(databases_of(request))

    async def pool_dashboard(request: Request) -> Response:
        return _dashboard.response()

    return [
        Route("/health/db", health_db, methods=["GET"]),
        Route("/health/ready", health_ready, methods=["GET"]),
        Route("/pool/stats", pool_stats, methods=["GET"]),
        Route("/pool/metrics", pool_metrics, methods=["GET"]),
        Route("/pool/dashboard", pool_dashboard, methods=["GET"]),
    ]
