"""Per-route transaction options: isolation, read only, deferrable, statement and lock timeouts.

All of them end with the transaction, so nothing reaches the next request that draws the
connection, and all work behind PgBouncer in transaction mode: isolation, read only and
deferrable go into psycopg's own ``BEGIN`` (no round trip of their own); the timeouts are one
``set_config(..., true)`` statement, the only round trip the options can add.
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import AsyncConnection, IsolationLevel

__all__ = [
    "Isolation",
    "SessionContext",
    "TransactionOptions",
]

Isolation = Literal["read committed", "repeatable read", "serializable"]

_LEVELS: dict[str, IsolationLevel] = {
    "read committed": IsolationLevel.READ_COMMITTED,
    "repeatable read": IsolationLevel.REPEATABLE_READ,
    "serializable": IsolationLevel.SERIALIZABLE,
}


# PostgreSQL keeps statement_timeout and lock_timeout as int milliseconds: INT_MAX at most.
MAX_TIMEOUT_MS = 2**31 - 1


def _ms(seconds: float) -> int:
    """seconds as the whole milliseconds sent to PostgreSQL (rounded up: never shorter)."""
    return math.ceil(seconds * 1000)


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
            if value is not None and _ms(value) > MAX_TIMEOUT_MS:
                raise ValueError(
                    f"{name} must be at most {MAX_TIMEOUT_MS / 1000} seconds (about 24.8 days, "
                    f"PostgreSQL's limit: a whole number of milliseconds), not {value!r}: give "
                    f"a smaller {name}, or none for no timeout"
                )

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
            name: f"{_ms(value)}ms"
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
            # Names and values both go as parameters: data, never SQL text.
            calls = ", ".join("set_config(%s, %s, true)" for _ in settings)
            params = [part for item in settings.items() for part in item]
            await conn.execute(f"SELECT {calls}", params)


# What PostgreSQL accepts as a setting's name: a custom one is dot-qualified, each part an
# identifier (a letter, an underscore or a non-ASCII character first, then digits and $ too:
# guc.c's valid_custom_variable_name); a built-in one (role, search_path) is a plain word.
_NAME_PART = r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*"
_CUSTOM_NAME = re.compile(rf"{_NAME_PART}(?:\.{_NAME_PART})+")
_BUILT_IN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The settings that decide which role the transaction runs as (current_user).
_ROLE_SETTINGS = ("role", "session_authorization")

RoleKey = tuple[tuple[str, str], ...]


def _check_setting_name(name: object) -> None:
    if not isinstance(name, str) or not (
        _CUSTOM_NAME.fullmatch(name) or _BUILT_IN_NAME.fullmatch(name)
    ):
        raise ValueError(
            f"SessionContext setting name {name!r} is not one PostgreSQL accepts: a custom "
            "setting needs a dot-qualified name of identifiers (letters, digits, _ and $, "
            "not first), like 'app.tenant_id'; a built-in one is a plain word like 'role'. "
            "Names are fixed by the app, never copied from a request: put the request's data "
            "in the values"
        )


@dataclass(frozen=True)
class SessionContext:
    """Who the request acts as, for row-level security: a role to SET LOCAL, and settings
    (``app.tenant_id``, ``request.jwt.claims``, ...) set for the transaction only.

    Return one from a dependency of your own (reading the authenticated user) and pass it as
    ``get_conn_with(context=that_dependency)``; None applies nothing, which row-level policies
    written default-deny answer with no rows."""

    role: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role is not None and not isinstance(self.role, str):
            raise TypeError(f"SessionContext role must be a str, not {type(self.role).__name__}")
        seen: dict[str, str] = {}
        for name, value in self.settings.items():
            _check_setting_name(name)
            if not isinstance(value, str):
                raise TypeError(
                    f"SessionContext setting {name!r} must be a str, not "
                    f"{type(value).__name__}: PostgreSQL settings are text (str(...) it)"
                )
            earlier = seen.setdefault(name.lower(), name)
            if earlier != name:  # PostgreSQL's names ignore case: the later would win
                raise ValueError(
                    f"SessionContext sets one setting twice, as {name!r} and {earlier!r} "
                    "(setting names ignore case): give it once"
                )

    def role_key(self) -> RoleKey:
        """What decides the role this context's transaction runs as (current_user), in the
        order apply() sets it: the role, then a 'role' or 'session_authorization' among the
        settings. Two contexts with the same key run as the same role on a pool."""
        key: list[tuple[str, str]] = []
        if self.role is not None:
            key.append(("role", self.role))
        key.extend(
            (name.lower(), value)
            for name, value in self.settings.items()
            if name.lower() in _ROLE_SETTINGS
        )
        return tuple(key)


NO_OPTIONS = TransactionOptions()
