"""The app's own connection set-up: a configure hook, a reset hook and a password provider.

They run inside psycopg-pool's connection attempt (a failure counts as a failed connection,
retried with backoff, and startup's probe runs them too, so it fails fast), on the pool's
workers, never on the checkout path: a pool without them uses PooledConnection as it is.
"""

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

from fastapi_dbpool._root import DBPoolError
from fastapi_dbpool.connection import PooledConnection
from fastapi_dbpool.settings import PoolSettings

logger = logging.getLogger("fastapi_dbpool")

Conn = AsyncConnection[Any]
ConnectionHook = Callable[[Conn], Awaitable[None]]
PasswordProvider = Callable[[], "str | Awaitable[str]"]

# Passwords a provider returned lately, kept to redact them from messages.
_SECRETS_KEPT = 32


class Secrets(Protocol):
    """What the hooks read of their pool (a DatabasePool): its settings, and its secrets."""

    @property
    def settings(self) -> PoolSettings: ...
    def redact(self, text: str) -> str: ...
    def keep_secret(self, secret: str, most: int) -> None: ...


class ConnectionSetupError(DBPoolError, psycopg.OperationalError):
    """A configure hook or a password provider failed; the message names it, never a secret."""


def connection_class(database: Secrets) -> type[PooledConnection]:
    """The pool's connection class: PooledConnection itself, or one that runs the password
    provider and the configure hook as part of connecting."""
    settings = database.settings
    configure: ConnectionHook | None = settings.configure
    provider: PasswordProvider | None = settings.password_provider
    if configure is None and provider is None:
        return PooledConnection

    class SetUpConnection(PooledConnection):
        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> "SetUpConnection":
            if provider is not None:
                kwargs["password"] = await _password(database, provider)
            conn = await super().connect(conninfo, **kwargs)
            if configure is not None:
                try:
                    await _configure(database, configure, conn)
                except BaseException:
                    await conn.close()
                    raise
            return conn

    return SetUpConnection


def reset_hook(database: Secrets) -> ConnectionHook | None:
    """psycopg-pool's reset callback: RESET ALL (DBPOOL_RESET_SESSION) and the app's reset
    hook, or None (connections then go back without a worker's round trip)."""
    settings = database.settings
    hook: ConnectionHook | None = settings.reset
    configure: ConnectionHook | None = settings.configure
    if hook is None and not settings.reset_session:
        return None

    async def reset(conn: Conn) -> None:
        if settings.reset_session:
            await conn.set_autocommit(True)  # one round trip, no BEGIN/COMMIT around it
            await conn.execute("RESET ALL")
            await conn.set_autocommit(False)
            if configure is not None:  # RESET ALL undid its SETs too: set them again
                await _run(database, "configure", configure, conn)
        if hook is not None:
            await _run(database, "reset", hook, conn)

    return reset


def describe(hook: object) -> str:
    """module:name of a hook, for messages."""
    module = getattr(hook, "__module__", None) or "?"
    name = getattr(hook, "__qualname__", None) or type(hook).__qualname__
    return f"{module}:{name}"


async def _configure(database: Secrets, hook: ConnectionHook, conn: Conn) -> None:
    await _run(database, "configure", hook, conn)


class HookTimeout(DBPoolError, TimeoutError):
    """A hook or a password provider took longer than DBPOOL_HOOK_TIMEOUT."""


async def _bounded(database: Secrets, work: Awaitable[Any]) -> Any:
    """work, within DBPOOL_HOOK_TIMEOUT: a hook that never returns must not hold a connection
    attempt, the pool or the app's startup for ever."""
    settings = database.settings
    try:
        return await asyncio.wait_for(work, settings.hook_timeout)
    except asyncio.TimeoutError:
        raise HookTimeout(
            f"it did not return within {settings.env_var('hook_timeout')} "
            f"({settings.hook_timeout} s)"
        ) from None


async def _run(database: Secrets, field: str, hook: ConnectionHook, conn: Conn) -> None:
    """Run hook on conn; what it leaves in a transaction is committed (its SETs, type lookups);
    a failure is logged and raised naming the hook and the pool, never a secret."""
    try:
        await _bounded(database, hook(conn))
        status = conn.pgconn.transaction_status
        if status == TransactionStatus.INTRANS:
            await conn.commit()
        elif status == TransactionStatus.INERROR:
            raise psycopg.ProgrammingError("it left the connection in a failed transaction")
    except Exception as exc:
        raise _failed(database, field, hook, exc) from None


async def _password(database: Secrets, provider: PasswordProvider) -> str:
    try:
        if inspect.iscoroutinefunction(provider):
            value = await _bounded(database, provider())
        else:  # a sync provider may block (an HTTP call for a token): never on the event loop
            value = await _bounded(database, asyncio.to_thread(provider))
            if inspect.isawaitable(value):
                value = await _bounded(database, value)
        return accepted_password(database, value)
    except Exception as exc:
        raise _failed(database, "password_provider", provider, exc) from None


def accepted_password(database: Secrets, value: object) -> str:
    """A provider's answer, checked, and redacted from now on."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"it returned {type(value).__name__}, not a non-empty str")
    database.keep_secret(value, _SECRETS_KEPT)
    return value


def failure_message(database: Secrets, field: str, hook: object, exc: Exception) -> str:
    """What failed, naming the setting, the hook and the pool; never a secret."""
    settings = database.settings
    return (
        f"pool {settings.name!r}: {settings.env_var(field)} {describe(hook)} failed: "
        f"{database.redact(f'{type(exc).__name__}: {exc}')}"
    )


def _failed(
    database: Secrets, field: str, hook: object, exc: Exception
) -> ConnectionSetupError:
    message = failure_message(database, field, hook, exc)
    logger.error("%s; the connection is discarded", message)
    return ConnectionSetupError(message)
