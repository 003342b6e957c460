"""Transactions retried on serialization failures and deadlocks (SQLSTATE 40001, 40P01).

PostgreSQL aborts one of two conflicting serializable (or repeatable read) transactions and
expects the application to run it again. ``retry_transaction`` runs ``work`` in a transaction
of its own and, when the server aborts it for one of those reasons (at a statement or at
COMMIT), rolls back and runs it again, up to ``attempts`` times with jittered backoff.

``work`` must be safe to run more than once: it is the unit that is repeated, so it must not
do what cannot be undone (send a message, call another service) before it returns. It cannot
be the request's own ``get_conn`` transaction, whose work may already have been answered for;
take ``DatabaseDep`` in the endpoint and call this instead.
"""

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg import errors as pg_errors

from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.options import Isolation, TransactionOptions
from fastapi_dbpool.session import transaction

__all__ = [
    "RETRYABLE",
    "retry_transaction",
]

logger = logging.getLogger("fastapi_dbpool")

T = TypeVar("T")
RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


async def retry_transaction(
    database: DatabasePool,
    work: Callable[[AsyncConnection[Any]], Awaitable[T]],
    *,
    attempts: int = 5,
    isolation: Isolation | None = "serializable",
    backoff: float = 0.02,
    max_backoff: float = 1.0,
    options: TransactionOptions | None = None,
) -> T:
    """work(conn) in a transaction, run again (up to attempts times) when the server aborts
    it for a serialization failure or a deadlock; the last such error is raised after that.

    Before attempt n+1 it sleeps backoff * 2**(n-1) seconds, jittered by ±50 %, never more
    than max_backoff seconds."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    for name, value in (("backoff", backoff), ("max_backoff", max_backoff)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a number of seconds, 0 or more, not {value!r}")
    options = options or TransactionOptions(isolation=isolation)
    for attempt in range(1, attempts + 1):
        try:
            async with transaction(database, "retry_transaction", options=options) as conn:
                return await work(conn)
        except Exception as exc:
            cause = _retryable(exc)
            if cause is None or attempt == attempts:
                raise
            delay = backoff_delay(attempt, backoff, max_backoff)
            logger.info(
                "transaction aborted (%s, SQLSTATE %s), attempt %d of %d; again in %.0f ms",
                type(cause).__name__,
                cause.sqlstate,
                attempt,
                attempts,
                delay * 1000,
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def backoff_delay(attempt: int, backoff: float, max_backoff: float) -> float:
    """Seconds to sleep after the attempt-th failure: backoff doubled each time, jittered
    by ±50 %, at most max_backoff (and no float overflow however many attempts). At the cap
    the jitter stays (a third of max_backoff to all of it), so that writers that collided
    do not all come back at once."""
    base = min(backoff * 2.0 ** min(attempt - 1, 64), max_backoff / 1.5)
    return base * (0.5 + random.random())


def _retryable(exc: BaseException) -> psycopg.Error | None:
    """The serialization failure or deadlock behind exc (a COMMIT's comes wrapped in 500)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RETRYABLE):
            return seen
        seen = seen.__cause__
    return None
