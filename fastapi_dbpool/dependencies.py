"""The FastAPI dependencies: get_conn, get_read_conn, get_conn_for, get_stream_conn, get_pool,
get_database, and their Annotated aliases.

Each one finds the pool the lifespan opened and hands the request to a session
(``session.transaction``, ``session.autocommit``, ``Databases.read``); nothing else happens
here.

When the session ends: FastAPI runs the exit of a plain ``yield`` dependency after the
response is sent. get_conn is a plain coroutine that enters its session on the exit stack
FastAPI closes before the response (the one of ``Depends(scope="function")``), so even a plain
``Depends(get_conn)`` commits before the response. One dependency level, not two (measured:
a level costs about 5 % of a one-query request), and the aliases are get_conn itself, so
``app.dependency_overrides[get_conn]`` replaces them too.
"""

import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Annotated, Any

from fastapi import Depends
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from starlette.requests import HTTPConnection

from fastapi_dbpool._root import UsageError
from fastapi_dbpool._state import database_of, databases_of, leases_of, named_pool
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.options import Isolation, SessionContext, TransactionOptions
from fastapi_dbpool.pools import Databases
from fastapi_dbpool.session import autocommit, transaction

__all__ = [
    "ConnDep",
    "ConnDependency",
    "DatabaseDep",
    "PoolDep",
    "ReadConnDep",
    "StreamConnDep",
    "get_conn",
    "get_conn_for",
    "get_conn_with",
    "get_database",
    "get_database_for",
    "get_databases",
    "get_pool",
    "get_read_conn",
    "get_stream_conn",
]

Conn = AsyncConnection[Any]

# FastAPI's exit stack of scope="function" dependencies, in the request scope (0.121 and later).
_FUNCTION_STACK = "fastapi_function_astack"
_NOT_IN_FASTAPI = (
    "this dependency needs FastAPI's function-scoped exit stack (FastAPI 0.121 or later, in "
    "a route); outside a route, use fastapi_dbpool.session.transaction(database) instead"
)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# The dependencies are coroutines on purpose: FastAPI runs a plain `def` dependency in a
# worker thread, which cost about 60 us per request here (measured in-process).


async def get_database(request: HTTPConnection) -> DatabasePool:
    """The default DatabasePool the app's lifespan opened."""
    return database_of(request)


async def get_databases(request: HTTPConnection) -> Databases:
    """Every pool of the app, by name (the default one and those of DBPOOL_POOLS)."""
    return databases_of(request)


async def get_pool(request: HTTPConnection) -> AsyncConnectionPool[Conn]:
    """The app's psycopg AsyncConnectionPool, for endpoints that manage connections themselves."""
    return database_of(request).pool


def _before_response(request: HTTPConnection) -> AsyncExitStack:
    """The exit stack FastAPI closes when the endpoint has returned, before the response."""
    stack = request.scope.get(_FUNCTION_STACK)
    if not isinstance(stack, AsyncExitStack):
        raise UsageError(_NOT_IN_FASTAPI)
    return stack


async def get_conn(request: HTTPConnection) -> Conn:
    """A pooled connection in a transaction, committed before the response is sent.

    The transaction commits when the endpoint returns and rolls back when it raises, whatever
    the endpoint ran (a ``conn.transaction()`` block is a savepoint inside it); the connection
    is back in the pool before the response body is written, so a failed commit answers 500 and
    slow clients hold no connection. Pool timeouts, a full queue and lost connections answer
    503 with Retry-After. Every dependency of one request on one pool shares one connection.
    With DBPOOL_READ_ONLY_GETS, a GET, HEAD or OPTIONS request gets get_read_conn's
    connection instead (autocommit, read only: one round trip per statement).
    """
    session = _request_session(database_of(request), request)
    return await _before_response(request).enter_async_context(session)


def _request_session(
    database: DatabasePool, request: HTTPConnection
) -> AbstractAsyncContextManager[Conn]:
    """get_conn's session on database: the request's transaction, or, with
    DBPOOL_READ_ONLY_GETS on a GET, HEAD or OPTIONS request, a read on a read-only connection
    (a write answers 500)."""
    if database.settings.read_only_gets and request.scope.get("method") in _SAFE_METHODS:
        return autocommit(database, request.scope, leases=leases_of(request))
    return transaction(database, request.scope, leases=leases_of(request))


async def get_read_conn(request: HTTPConnection) -> Conn:
    """A pooled connection in autocommit, for reads: one round trip per query, no BEGIN/COMMIT.

    From a replica when the app has some (DBPOOL_<NAME>_REPLICA=true), the least busy first;
    from the default pool when none has one within its DBPOOL_<NAME>_FALLBACK_TIMEOUT. In a
    request that also uses get_conn, the same connection as get_conn, in its transaction (so
    the read sees the request's writes, and the request holds one connection, not two).
    """
    databases = databases_of(request)
    leases = leases_of(request)
    session: AbstractAsyncContextManager[Conn]
    if databases.replicas:
        session = databases.read(request.scope, leases, _writes_to_default(request, databases))
    else:  # the common case: no routing to do
        session = autocommit(databases.default, request.scope, leases=leases)
    return await _before_response(request).enter_async_context(session)


ConnDependency = Callable[..., Coroutine[Any, Any, Conn]]


def get_conn_for(name: str, *, read: bool = False) -> ConnDependency:
    """The dependency for a connection from the pool called name, e.g. "analytics".

    ``Depends(get_conn_for("analytics"))`` behaves as get_conn (a transaction, committed before
    the response), or as get_read_conn's autocommit with read=True, on that pool. One
    dependency per name and mode: FastAPI shares it within a request, and overrides apply.
    """
    return _conn_dependency(name, bool(read))


@functools.cache
def _conn_dependency(name: str, read: bool) -> ConnDependency:
    async def dependency(request: HTTPConnection) -> Conn:
        database = named_pool(request, name)
        session = (
            autocommit(database, request.scope, leases=leases_of(request))
            if read
            else _request_session(database, request)
        )
        return await _before_response(request).enter_async_context(session)

    dependency.__name__ = dependency.__qualname__ = f"get_conn_for_{name}"
    return dependency


def get_conn_with(
    *,
    isolation: Isolation | None = None,
    read_only: bool | None = None,
    deferrable: bool | None = None,
    statement_timeout: float | None = None,
    lock_timeout: float | None = None,
    pool: str | None = None,
    context: Callable[..., Any] | None = None,
) -> ConnDependency:
    """get_conn with options for this route's transaction, e.g.
    ``Depends(get_conn_with(read_only=True, statement_timeout=2.0))``.

    isolation: "read committed", "repeatable read" or "serializable"; read_only and deferrable
    as in SET TRANSACTION; statement_timeout and lock_timeout in seconds. Every option ends
    with the transaction (nothing reaches the next request on the same connection) and works
    behind PgBouncer. pool: a named pool instead of the default one. context: a dependency of
    yours returning a SessionContext (a role and settings for row-level security), applied at
    the start of the transaction. One dependency per set of options, so an Annotated alias of
    it can be overridden in tests like get_conn.
    """
    options = TransactionOptions(isolation, read_only, deferrable, statement_timeout, lock_timeout)
    return _conn_with(options, pool, context)


@functools.cache
def _conn_with(
    options: TransactionOptions, pool: str | None, context: Callable[..., Any] | None
) -> ConnDependency:
    async def enter(request: HTTPConnection, session_context: SessionContext | None) -> Conn:
        database = database_of(request) if pool is None else named_pool(request, pool)
        session = transaction(
            database,
            request.scope,
            leases=leases_of(request),
            options=options,
            context=session_context,
        )
        return await _before_response(request).enter_async_context(session)

    if context is None:

        async def dependency(request: HTTPConnection) -> Conn:
            return await enter(request, None)

    else:

        async def dependency(  # type: ignore[misc]
            request: HTTPConnection,
            session_context: Annotated[SessionContext | None, Depends(context)],
        ) -> Conn:
            return await enter(request, session_context)

    dependency.__name__ = dependency.__qualname__ = "get_conn_with"
    return dependency


@functools.cache
def get_database_for(
    name: str,
) -> Callable[[HTTPConnection], Coroutine[Any, Any, DatabasePool]]:
    """The dependency for the DatabasePool called name (one per name, like get_conn_for)."""

    async def dependency(request: HTTPConnection) -> DatabasePool:
        return named_pool(request, name)

    return dependency


async def get_stream_conn(request: HTTPConnection) -> AsyncIterator[Conn]:
    """A pooled connection held until the response has been sent, for streaming responses.

    The transaction commits after the last chunk is sent (an error then can only be logged),
    and the connection is taken for the whole response: use it only where the body itself
    reads from the database. It is a connection of its own, not shared with get_conn.
    """
    async with transaction(database_of(request), request.scope) as conn:
        yield conn


def _writes_to_default(request: HTTPConnection, databases: Databases) -> bool:
    """Whether the request's route also takes get_conn (the default pool's transaction):
    then its reads go to the primary too. Worked out once per route."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return False
    cache = databases.route_writes
    key = id(route)
    known = cache.get(key)
    if known is None or known[0] is not route:
        named = _conn_dependency(databases.default.settings.name, False)
        known = cache[key] = (route, _depends_on(dependant, (get_conn, named)))
    return known[1]


def _depends_on(dependant: Any, calls: tuple[Callable[..., Any], ...]) -> bool:
    return any(
        sub.call in calls or _depends_on(sub, calls)
        for sub in getattr(dependant, "dependencies", ())
    )


PoolDep = Annotated[AsyncConnectionPool[Conn], Depends(get_pool)]
ConnDep = Annotated[Conn, Depends(get_conn)]
ReadConnDep = Annotated[Conn, Depends(get_read_conn)]
StreamConnDep = Annotated[Conn, Depends(get_stream_conn)]
DatabaseDep = Annotated[DatabasePool, Depends(get_database)]
