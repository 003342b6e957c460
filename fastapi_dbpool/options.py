"""Per-route transaction options: isolation, read only, deferrable, statement and lock timeouts.

All of them end with the transaction, so nothing reaches the next request that draws the
connection, and all work behind PgBouncer in transaction mode: isolation, read only and
deferrable go into psycopg's own ``BEGIN`` (no round trip of their own); the timeouts are one
``set_config(..., true)`` statement, the only round trip the options can add.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import AsyncConnection, IsolationLevel

Isolation = Literal["read committed", "repeatable read", "serializable"]

_LEVELS: dict[str, IsolationLevel] = {
    "read committed": IsolationLevel.READ_COMMITTED,
    "repeatable read": IsolationLevel.REPEATABLE_READ,
    "serializable": IsolationLevel.SERIALIZABLE,
}


@dataclass(frozen=True)
class TransactionOptions:
    """What a route asks of its transaction; None keeps the pool's (the server's) default."""

    isolation: Isolation | None = None
    read_only: bool | None = None
    deferrable: bool | None = None
    statement_timeout: float | None = None  # seconds
    lock_timeout: float | None = None  # seconds

    def __post_init__(self) -> None:
        if self.isolation is not None and self.isolation not in _LEVELS:
            raise ValueError(
                f"isolation must be one of {', '.join(map(repr, _LEVELS))}, not {self.isolation!r}"
            )
        for name in ("statement_timeout", "lock_timeout"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")

    def __bool__(self) -> bool:
        """Whether any option is set: without one, a session can join the request's
        transaction (a block inside another, get_conn_with() beside get_conn)."""
        return any(
            value is not None
            for value in (
                self.isolation,
                self.read_only,
                self.deferrable,
                self.statement_timeout,
                self.lock_timeout,
            )
        )

    async def apply(
        self, conn: AsyncConnection[Any], context: "SessionContext | None" = None
    ) -> None:
        """Set the options (and the request's context) on an idle connection, ahead of its
        transaction: one statement at most."""
        if self.isolation is not None:
            await conn.set_isolation_level(_LEVELS[self.isolation])
        if self.read_only is not None:
            await conn.set_read_only(self.read_only)
        if self.deferrable is not None:
            await conn.set_deferrable(self.deferrable)
        settings = {
            name: f"{math.ceil(value * 1000)}ms"
            for name, value in (
                ("statement_timeout", self.statement_timeout),
                ("lock_timeout", self.lock_timeout),
            )
            if value is not None
        }
        if context is not None:
            if context.role is not None:
                settings["role"] = context.role  # SET LOCAL ROLE, as a parameter
            settings.update(context.settings)
        if settings:  # transaction-local (is_local = true): gone at COMMIT or ROLLBACK
            calls = ", ".join(f"set_config('{name}', %s, true)" for name in settings)
            await conn.execute(f"SELECT {calls}", list(settings.values()))


@dataclass(frozen=True)
class SessionContext:
    """Who the request acts as, for row-level security: a role to SET LOCAL, and settings
    (``app.tenant_id``, ``request.jwt.claims``, ...) set for the transaction only.

    Return one from a dependency of your own (reading the authenticated user) and pass it as
    ``get_conn_with(context=that_dependency)``; None applies nothing, which row-level policies
    written default-deny answer with no rows."""

    role: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)


NO_OPTIONS = TransactionOptions()
