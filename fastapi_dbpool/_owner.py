"""Who may use a lent connection: the code that borrowed it, until it is given back.

A checkout *claims* the connection in the borrower's context (``contextvars``): the request's
task, and everything that inherits its context — a ``def`` endpoint's worker thread, tasks
it starts, the response body, background tasks. Giving the connection back *ends* the claim
before anything else happens to it (rollback, restore, ``putconn``). Every statement,
commit and rollback psycopg sends goes through ``Connection.wait``, under the connection's
lock; the package's connection classes call ``check`` there, so code that still holds a
connection its request gave back gets ``ConnectionReleased`` instead of running on a
connection that the pool may have lent to another request.

The package's own work after the end of a claim (rolling back, restoring, psycopg-pool's
reset) runs inside ``core()``, which no borrower's context sees: a context copied earlier
(the worker thread of a cancelled ``def`` endpoint) or a task that runs later (a
``StreamingResponse`` body) does not have it.
"""

from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType

import psycopg

from fastapi_dbpool._root import DBPoolError

__all__ = ["Claim", "ConnectionReleased", "check", "claim", "core", "in_core", "release"]


class ConnectionReleased(DBPoolError, psycopg.InterfaceError):
    """A statement on a connection after its request (or block) gave it back to the pool."""


_RELEASED = (
    "this connection was given back to its pool when its request's transaction ended (the "
    "endpoint returned, raised or was cancelled): nothing may run on it any more, since another "
    "request may hold it now. A response body that reads the database needs get_stream_conn; "
    "background work needs a connection of its own (fastapi_dbpool.session.transaction); a "
    "def endpoint cancelled by a timeout must stop using its connection"
)


class Claim:
    """One borrower's hold on one connection; ended when the connection is given back."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = False


# id(connection) -> the claim this context holds on it. Never changed in place: a context
# copied from this one (a thread, a task) keeps the mapping it was copied with.
_NONE: Mapping[int, Claim] = MappingProxyType({})
_claims: ContextVar[Mapping[int, Claim]] = ContextVar("fastapi_dbpool_claims", default=_NONE)
_in_core: ContextVar[bool] = ContextVar("fastapi_dbpool_core", default=False)


def claim(conn: object) -> Claim:
    """Claim conn for the current context (and every context copied from it from now on)."""
    new = Claim()
    claims = _claims.get()
    _claims.set({**claims, id(conn): new} if claims else {id(conn): new})
    return new


def release(held: Claim | None) -> None:
    """End a claim: from now on its contexts may not use the connection."""
    if held is not None:
        held.ended = True


class core:  # lower case: it reads as a function, ``with core():``
    """The package's own work on a connection whose claim has ended (rollback, restore,
    putconn): allowed in this context only, for the duration of the block."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _in_core.set(True)

    def __exit__(self, *exc: object) -> None:
        _in_core.reset(self._token)


def in_core() -> bool:
    """Whether the current context runs the package's own work (inside ``core()``)."""
    return _in_core.get()


def check(conn: object) -> None:
    """Raise ConnectionReleased if the current context's claim on conn has ended."""
    held = _claims.get().get(id(conn))
    if held is not None and held.ended and not _in_core.get():
        raise ConnectionReleased(_RELEASED)
