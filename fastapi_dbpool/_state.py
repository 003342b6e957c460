"""Where the lifespan keeps the app's pools, and how a request finds them.

The lifespan writes these keys (into the lifespan state and ``app.state``); the dependencies
and the router read them. Neither imports the other.
"""

from typing import Any

from starlette.requests import HTTPConnection

from fastapi_dbpool._root import UsageError
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.pools import Databases
from fastapi_dbpool.session import Leases

STATE_KEY = "dbpool"  # the default DatabasePool
POOLS_KEY = "dbpools"  # every pool, as Databases
# The request's connections by pool, shared by its dependencies (one connection per pool).
LEASES_KEY = "fastapi_dbpool.leases"

NO_POOL = (
    "no database pool on this app: create it with FastAPI(lifespan=pool_lifespan) "
    "or FastAPI(lifespan=create_pool_lifespan(settings))"
)


def _from_state(request: HTTPConnection, key: str) -> Any:
    """What the lifespan put under key: in the request's state, else the app's."""
    state = request.scope.get("state")  # the lifespan state, read without making a State
    value = state.get(key) if state else None
    return value if value is not None else getattr(request.app.state, key, None)


def database_of(request: HTTPConnection) -> DatabasePool:
    """The app's default pool; a clear error when the app has no pool lifespan."""
    database = _from_state(request, STATE_KEY)
    if not isinstance(database, DatabasePool):
        raise UsageError(NO_POOL)
    return database


def databases_of(request: HTTPConnection) -> Databases:
    """Every pool of the app, by name (a DatabasePool put on the state by hand: a set of one)."""
    databases = _from_state(request, POOLS_KEY)
    if databases is None:
        return Databases([database_of(request)])
    return databases  # type: ignore[no-any-return]


def named_pool(request: HTTPConnection, name: str) -> DatabasePool:
    """The pool called name, or an error naming the pools the app has."""
    try:
        return databases_of(request).get(name)
    except LookupError as exc:
        raise UsageError(str(exc)) from None


def leases_of(request: HTTPConnection) -> Leases:
    """The connections this request holds, by pool: every session of the request shares them."""
    scope = request.scope
    leases: Leases | None = scope.get(LEASES_KEY)
    if leases is None:
        leases = scope[LEASES_KEY] = {}
    return leases
