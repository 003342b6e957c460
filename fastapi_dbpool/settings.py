"""PoolSettings: every pool option, its environment variable, its default and its checks."""

import difflib
import functools
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Annotated, Any, Literal

import psycopg
from dotenv import dotenv_values
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    AliasChoices,
    Field,
    ImportString,
    PrivateAttr,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fastapi_dbpool import _url
from fastapi_dbpool._redact import passwords_in, redact
from fastapi_dbpool._root import DBPoolError
from fastapi_dbpool.rows import FACTORIES, RowFactoryName

__all__ = [
    "CheckMode",
    "PoolSettings",
    "SettingsError",
    "env_var",
]

ENV_PREFIX = "DBPOOL_"
logger = logging.getLogger("fastapi_dbpool")

CheckMode = Literal["always", "idle", "never"]
_POOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# PostgreSQL's timeouts are int milliseconds: INT_MAX at most, about 24.8 days.
_MAX_TIMEOUT = (2**31 - 1) / 1000


class SettingsError(DBPoolError, ValueError):
    """Invalid pool settings; the message names each environment variable and how to fix it."""


class PoolSettings(BaseSettings):
    """Settings of one connection pool, read from the environment (``DBPOOL_*``) and ``.env``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
        populate_by_name=True,
        validate_default=True,
    )

    url: SecretStr = Field(
        # Not "url" itself: a bare URL variable, which some platforms set, must not be read.
        validation_alias=AliasChoices("DBPOOL_URL", "DATABASE_URL"),
        description="PostgreSQL connection string (URI or key=value); "
        "read from DBPOOL_URL, else DATABASE_URL.",
    )
    password: SecretStr | None = Field(None, description="Password, if you keep it out of the URL.")
    name: str = Field("fastapi_dbpool", min_length=1, description="Pool name, in logs and stats.")
    application_name: str = Field(
        "fastapi_dbpool",
        max_length=63,
        description="application_name of every connection (see pg_stat_activity), "
        "unless the URL sets one.",
    )
    min_size: int = Field(2, ge=0, description="Connections kept open even when idle.")
    max_size: int = Field(10, ge=1, description="Most connections the pool opens.")
    max_waiting: int = Field(
        0,
        ge=0,
        description="Most requests queued for a connection; more get 503 at once. 0: no cap.",
    )
    timeout: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a request waits for a connection before it gets 503.",
    )
    max_idle: float = Field(
        600.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds an idle connection above min_size stays open.",
    )
    max_lifetime: float = Field(
        3600.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds after which a connection is replaced.",
    )
    reconnect_timeout: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a failing connection attempt is retried (with backoff) before the "
        "pool gives up on it and reconnects afresh every second; short, so that recovery "
        "after an outage does not wait on a long backoff.",
    )
    num_workers: int = Field(
        3, ge=1, description="Background workers that open and close connections."
    )
    check: CheckMode = Field(
        "idle",
        description="Check a connection at checkout: always, never, or only when it has been "
        "idle longer than check_idle_after (a round trip saved on busy connections).",
    )
    check_idle_after: float = Field(
        1.0,
        ge=0,
        allow_inf_nan=False,
        description="With check=idle: seconds of idleness after which a connection is checked.",
    )
    open_timeout: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds startup waits for min_size connections.",
    )
    fail_fast: bool = Field(
        True,
        description="Refuse to start when the database cannot be reached; if false, start "
        "degraded (health 503) and connect when the database comes up.",
    )
    connect_timeout: int = Field(
        5, ge=1, description="Seconds libpq waits for one connection attempt (connect_timeout)."
    )
    keepalives_idle: int = Field(
        30,
        ge=1,
        description="Seconds of silence before TCP keepalive probes start, so a connection "
        "to a vanished server or through a dropped network path is found dead.",
    )
    tcp_user_timeout: float | None = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds sent data may stay unacknowledged before the connection is "
        "dropped (libpq tcp_user_timeout, Linux); unset: the OS default (minutes).",
    )
    statement_timeout: float | None = Field(
        None,
        gt=0,
        le=_MAX_TIMEOUT,
        allow_inf_nan=False,
        description="Seconds after which the server cancels a statement; unset: server default.",
    )
    idle_in_transaction_timeout: float | None = Field(
        None,
        gt=0,
        le=_MAX_TIMEOUT,
        allow_inf_nan=False,
        description="Seconds after which the server ends a session idle in a transaction.",
    )
    prepare_threshold: int | None = Field(
        5,
        ge=0,
        description="Executions before psycopg prepares a statement server-side; "
        "unset (empty) disables prepared statements (needed behind PgBouncer transaction mode).",
    )
    row_factory: RowFactoryName | Callable[..., Any] = Field(
        "tuple",
        description="Rows of every connection the pool lends: tuple (psycopg's default), dict, "
        "namedtuple, or record (by position and by column name, like asyncpg's Record); from "
        "code, any psycopg row factory.",
    )
    pgbouncer: bool = Field(
        False,
        description="The URL points at PgBouncer in transaction mode: no server-side prepared "
        "statements, and no per-connection startup options (set timeouts on the role instead).",
    )
    autocommit: bool = Field(
        False,
        description="Connections in autocommit while idle, for a pool lent to a library that "
        "runs statements which refuse a transaction block (LangGraph's setup(): CREATE INDEX "
        "CONCURRENTLY); get_conn still runs each request in one transaction.",
    )
    read_only_gets: bool = Field(
        False,
        description="GET, HEAD and OPTIONS requests through get_conn run as reads: autocommit, "
        "one round trip per statement, no BEGIN/COMMIT. The pool's connections are read only "
        "by default (a startup option, no round trip), so a write in such a request answers "
        "500 and writes nothing; every other transaction says BEGIN READ WRITE. get_pool users "
        "and hooks that write set read_only = False themselves. Not behind PgBouncer.",
    )
    metrics: bool = Field(
        True,
        description="Time every checkout (wait and hold percentiles, high-water marks, "
        "slow holders) for /pool/stats; false skips the recording.",
    )
    leak_threshold: float | None = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a request may hold a connection before a warning names its "
        "route (once per checkout); unset (empty) turns the check off.",
    )
    log_stats_interval: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Every this many seconds, log one summary line of the pool (sizes, "
        "waiting, p95 wait and hold, 503s); unset: no summary.",
    )
    pools: Annotated[list[str], NoDecode] = Field(
        [],
        description="Names of further pools, comma-separated (e.g. replica,analytics); each "
        "reads its own DBPOOL_<NAME>_* variables (DBPOOL_REPLICA_URL, ...). Default pool only.",
    )
    replica: bool = Field(
        False,
        description="This pool is a read replica: get_read_conn sends reads to it (least busy "
        "replica first) and falls back to the default pool when no replica can serve in time.",
    )
    fallback_timeout: float = Field(
        0.5,
        gt=0,
        allow_inf_nan=False,
        description="With replica=true: seconds a read waits for this replica before trying "
        "the next one, then the default pool.",
    )
    required: bool | None = Field(
        None,
        description="/health/db answers 503 when this pool is down, and startup fails when it "
        "cannot connect (with fail_fast); unset: true, except for replicas.",
    )
    deadline: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a request may hold a connection while a statement still waits for "
        "the server; past it the connection is cut (no wait on a frozen network, no cancel "
        "request) and the request answers 504. Unset: statement_timeout + 10 s, or 300 s "
        "without a statement_timeout.",
    )
    drain_seconds: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="On SIGTERM, answer /health/ready 503 at once but keep serving for this many "
        "seconds before shutting down, so a load balancer moves traffic first; 0: no drain. "
        "Default pool only.",
    )
    health_timeout: float = Field(
        2.0, gt=0, allow_inf_nan=False, description="Seconds /health/db waits before answering 503."
    )
    close_timeout: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds shutdown waits for the pool's workers before closing anyway.",
    )
    retry_after: int = Field(1, ge=0, description="Retry-After seconds sent with 503 answers.")
    configure: ImportString[Callable[..., Any]] | None = Field(
        None,
        description="Your coroutine run on every new connection before the pool lends it "
        "(register types and adapters, SET search_path, prepare statements), as "
        "module:function or, from code, the function; what it leaves in a transaction is "
        "committed. A failure discards the connection (and fails startup).",
    )
    reset: ImportString[Callable[..., Any]] | None = Field(
        None,
        description="Your coroutine run on every connection given back, in the pool's worker "
        "(off the request path), as module:function or the function; a failure discards the "
        "connection.",
    )
    password_provider: ImportString[Callable[..., Any]] | None = Field(
        None,
        description="A function (sync or async) returning the password of each new connection, "
        "for short-lived credentials (RDS IAM, Azure AD, Vault), as module:function or the "
        "function; its answers are secrets, redacted like the URL's password.",
    )
    hook_timeout: float = Field(
        10.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Seconds the configure and reset hooks and the password provider may take "
        "for one connection; past it the connection is discarded, as a failed connection "
        "attempt (a failed startup, at startup), and the error names the hook.",
    )
    reset_session: bool = Field(
        False,
        description="Run RESET ALL on every connection given back (in psycopg-pool's worker, "
        "off the request path, one round trip), so a session-level SET made by one request "
        "never reaches the next; the connection's Python attributes are restored either way.",
    )

    _code_fields: frozenset[str] = PrivateAttr(frozenset())

    def __init__(self, **values: Any) -> None:
        code_fields = frozenset(_ALIASES.get(key, key) for key in values)
        token = _CODE_FIELDS.set(code_fields)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc, type(self).env_prefix())) from None
        finally:
            _CODE_FIELDS.reset(token)
        self._code_fields = code_fields

    @classmethod
    def env_prefix(cls) -> str:
        """The prefix of this class's environment variables: DBPOOL_, or DBPOOL_<NAME>_."""
        return str(cls.model_config.get("env_prefix", ENV_PREFIX))

    @classmethod
    def for_pool(cls, name: str, **values: Any) -> "PoolSettings":
        """Settings of the named pool name, read from DBPOOL_<NAME>_* and .env.

        ``PoolSettings.for_pool("replica")`` reads DBPOOL_REPLICA_URL, DBPOOL_REPLICA_MAX_SIZE,
        and so on; values given here win over the environment.
        """
        return _named_settings(_pool_name(name))(**values)

    def env_var(self, field: str) -> str:
        """How messages name field: its environment variable (DBPOOL_MAX_SIZE, or
        DBPOOL_REPLICA_MAX_SIZE for the pool named replica), or the field itself (max_size) when
        the value was given in code, where there is no variable to fix."""
        if field in self._code_fields:
            return field
        return env_var(field, self.env_prefix())

    @property
    def effective_deadline(self) -> float:
        """deadline, or what it defaults to: past statement_timeout, a healthy server has
        answered 504 already; only a server or network that does not answer reaches it."""
        if self.deadline is not None:
            return self.deadline
        if self.statement_timeout is not None:
            return self.statement_timeout + 10.0
        return 300.0

    @property
    def is_required(self) -> bool:
        """Whether health and startup depend on this pool (required, else not a replica)."""
        return self.required if self.required is not None else not self.replica

    @field_validator(
        "prepare_threshold",
        "statement_timeout",
        "idle_in_transaction_timeout",
        "tcp_user_timeout",
        "leak_threshold",
        "log_stats_interval",
        "password",
        "configure",
        "reset",
        "password_provider",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("pools", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return [_pool_name(str(part)) for part in value]
        return value

    @field_validator("url")
    @classmethod
    def _parse_url(cls, value: SecretStr) -> SecretStr:
        conninfo = value.get_secret_value()
        if not conninfo.strip():
            raise ValueError("is empty")
        normalized, _ = _url.normalize(conninfo)
        shape = _url.problem(normalized) or _url.ssl_problem(normalized)
        if shape is not None:
            raise ValueError(f"is not a valid PostgreSQL connection string: {shape}")
        try:
            params = conninfo_to_dict(normalized)
        except psycopg.Error as exc:
            reason = _url.masked(redact(str(exc).strip(), passwords_in(conninfo)), conninfo)
            raise ValueError(
                f"is not a valid PostgreSQL connection string ({reason}); use "
                f"postgresql://user:password@host:5432/dbname and {_url.ENCODE_HINT}"
            ) from None
        ports = [port.strip() for port in str(params.get("port") or "").split(",")]
        if not all(port.isdigit() for port in ports if port):
            raise ValueError(
                "is not a valid PostgreSQL connection string: its port is not a number, "
                f"which happens when the password holds an unencoded / or :; {_url.ENCODE_HINT}"
            )
        return value

    @model_validator(mode="after")
    def _sizes_agree(self) -> "PoolSettings":
        if self.min_size > self.max_size:
            prefix = self.env_prefix()
            low, high = _name("min_size", prefix), _name("max_size", prefix)
            raise ValueError(
                f"{low} ({self.min_size}) is larger than {high} ({self.max_size}): lower {low} "
                f"or raise {high}"
            )
        return self

    @model_validator(mode="after")
    def _url_agrees(self) -> "PoolSettings":
        """A URL parameter that a DBPOOL_* setting also sets: the URL's value is used unless
        the setting was given too, with another value (refused, naming both)."""
        params = conninfo_to_dict(self.conninfo())
        prefix = self.env_prefix()
        for field, to_url in _URL_PARAMETERS.items():
            if field not in params:
                continue
            text = str(params[field]).strip()
            if not text.lstrip("-").isdigit():
                raise ValueError(
                    f"the URL's {field} parameter is not a whole number: fix it in "
                    f"{_name('url', prefix)}, or drop it there and set {_name(field, prefix)}"
                )
            value = getattr(self, field)
            if field in self.model_fields_set and value is not None and to_url(value) != int(text):
                raise ValueError(
                    f"{_name('url', prefix)} sets {field}={text} but {_name(field, prefix)} is "
                    f"{value}: keep one of them"
                )
        return self

    @model_validator(mode="after")
    def _one_password_source(self) -> "PoolSettings":
        if self.password is not None and self.password_provider is not None:
            prefix = self.env_prefix()
            raise ValueError(
                f"{_name('password', prefix)} and {_name('password_provider', prefix)} are "
                "both set: keep one of them (the provider's password wins over the URL's)"
            )
        return self

    @model_validator(mode="after")
    def _pgbouncer_compatible(self) -> "PoolSettings":
        if not self.pgbouncer:
            return self
        per_connection = [
            name
            for name in ("statement_timeout", "idle_in_transaction_timeout")
            if getattr(self, name) is not None
        ]
        if self.read_only_gets:
            prefix = self.env_prefix()
            raise ValueError(
                f"{_name('read_only_gets', prefix)} cannot be applied behind PgBouncer "
                f"({_name('pgbouncer', prefix)}=true): it makes connections read only with a "
                "startup option, which PgBouncer rejects. Unset it, and use get_read_conn for "
                "one-round-trip reads"
            )
        if per_connection:
            prefix = self.env_prefix()
            names = " and ".join(_name(name, prefix) for name in per_connection)
            raise ValueError(
                f"{names} cannot be applied behind PgBouncer "
                f"({_name('pgbouncer', prefix)}=true): it "
                "rejects per-connection startup options. Unset it and set the timeout on the "
                "database role instead: ALTER ROLE app SET statement_timeout = '5s'"
            )
        return self

    def conninfo(self) -> str:
        """The connection string, secret included: for psycopg only, never for output.

        SQLAlchemy's driver suffix (postgresql+asyncpg://) is dropped, asyncpg's ssl= is
        spelled sslmode=."""
        return _url.normalize(self.url.get_secret_value())[0]

    def url_driver(self) -> str | None:
        """The driver suffix the URL came with (asyncpg for postgresql+asyncpg://), if any."""
        return _url.normalize(self.url.get_secret_value())[1]

    def secrets(self) -> set[str]:
        """Every secret these settings hold, in the forms a message could show it."""
        found = passwords_in(self.url.get_secret_value()) | passwords_in(self.conninfo())
        if self.password is not None:
            found.add(self.password.get_secret_value())
        return found

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for psycopg's connect, on top of the URL."""
        url_params = conninfo_to_dict(self.conninfo())
        kwargs: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "keepalives": 1,
            "keepalives_idle": self.keepalives_idle,
            "keepalives_interval": max(1, self.keepalives_idle // 3),
            "keepalives_count": 3,
            # PgBouncer's transaction mode moves a client between server connections, where a
            # statement prepared on one does not exist (or already exists) on another.
            "prepare_threshold": None if self.pgbouncer else self.prepare_threshold,
        }
        if self.autocommit:
            kwargs["autocommit"] = True
        if self.row_factory != "tuple":
            factory = self.row_factory
            kwargs["row_factory"] = FACTORIES[factory] if isinstance(factory, str) else factory
        if self.tcp_user_timeout is not None:
            kwargs["tcp_user_timeout"] = _ms(self.tcp_user_timeout)
        for field in _URL_PARAMETERS:  # the URL's own value wins over a default (_url_agrees)
            if field in url_params:
                kwargs.pop(field, None)
        if "application_name" not in url_params:
            kwargs["application_name"] = self.application_name
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        options = [str(url_params["options"])] if url_params.get("options") else []
        if self.statement_timeout is not None:
            options.append(f"-c statement_timeout={_ms(self.statement_timeout)}")
        if self.idle_in_transaction_timeout is not None:
            options.append(
                f"-c idle_in_transaction_session_timeout={_ms(self.idle_in_transaction_timeout)}"
            )
        if self.read_only_gets:
            options.append("-c default_transaction_read_only=on")
        if options:
            kwargs["options"] = " ".join(options)
        return kwargs


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


# Settings that are also libpq parameters, and how a setting's value reads in the URL's units.
_URL_PARAMETERS: dict[str, Callable[[Any], int]] = {
    "connect_timeout": int,
    "keepalives_idle": int,
    "tcp_user_timeout": _ms,
}


# The fields given in code to the PoolSettings being validated now: messages name them as
# fields, not as environment variables.
_CODE_FIELDS: ContextVar[frozenset[str]] = ContextVar("_CODE_FIELDS", default=frozenset())
_ALIASES = {"DBPOOL_URL": "url", "DATABASE_URL": "url"}


def _name(field: str, prefix: str) -> str:
    """field as a message names it while settings are validated (see PoolSettings.env_var)."""
    return field if field in _CODE_FIELDS.get() else env_var(field, prefix)


def env_var(field: str, prefix: str = ENV_PREFIX) -> str:
    """The environment variable that sets a field (of the pool whose prefix is given)."""
    if field == "url" and prefix == ENV_PREFIX:
        return "DBPOOL_URL (or DATABASE_URL)"
    return f"{prefix}{field.upper()}"


def _pool_name(name: str) -> str:
    if not _POOL_NAME.fullmatch(name):
        raise SettingsError(
            f"pool name {name!r} is not usable in environment variable names: use letters, "
            "digits and _, starting with a letter (e.g. replica, analytics)"
        )
    clashes = [field for field in PoolSettings.model_fields if field.startswith(f"{name.lower()}_")]
    if clashes:
        raise SettingsError(
            f"pool name {name!r} clashes with {env_var(clashes[0])}: its variables "
            f"({ENV_PREFIX}{name.upper()}_*) would be read as the default pool's; choose "
            "another name"
        )
    return name


@functools.cache
def _named_settings(name: str) -> type[PoolSettings]:
    """A PoolSettings subclass reading DBPOOL_<NAME>_*; its name and application_name
    default to the pool's name."""
    prefix = f"{ENV_PREFIX}{name.upper()}_"
    model = create_model(
        f"PoolSettings_{name}",
        __base__=PoolSettings,
        url=(
            SecretStr,
            Field(
                validation_alias=AliasChoices(f"{prefix}URL"),
                description=f"PostgreSQL connection string of pool {name!r}.",
            ),
        ),
        name=(str, Field(name, min_length=1, description="Pool name, in logs and stats.")),
        application_name=(
            str,
            Field(f"fastapi_dbpool:{name}"[:63], max_length=63, description="application_name."),
        ),
    )
    model.model_config["env_prefix"] = prefix
    return model


def _explain(exc: ValidationError, prefix: str = ENV_PREFIX) -> str:
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if field in ("DBPOOL_URL", "DATABASE_URL", f"{prefix}URL"):
            field = "url"
        if not field:
            lines.append(message)
        elif error["type"] == "missing":
            lines.append(
                f"{_name(field, prefix)} is not set: set it to "
                "postgresql://user:password@host:5432/dbname"
            )
        else:
            lines.append(f"{_name(field, prefix)}{_fix(field, message, prefix)}")
    where = "" if prefix == ENV_PREFIX else f" ({prefix}*)"
    if _CODE_FIELDS.get() and prefix != ENV_PREFIX:
        where = f" (pool {prefix.removeprefix(ENV_PREFIX).removesuffix('_').lower()!r})"
    return f"invalid database pool settings{where}:\n  " + "\n  ".join(lines)


_HOOK_EXAMPLES = {
    "configure": "myapp.db:configure",
    "reset": "myapp.db:reset",
    "password_provider": "myapp.secrets:database_token",
}


def _fix(field: str, message: str, prefix: str) -> str:
    if field == "url":
        return f" {message}"
    if field in _HOOK_EXAMPLES:
        return (
            f": {message} (give module:function, e.g. "
            f"{_name(field, prefix)}={_HOOK_EXAMPLES[field]}, or pass the function from code)"
        )
    info = PoolSettings.model_fields.get(field)
    if info is None or info.default is None:
        return f": {message}"
    default = ",".join(info.default) if isinstance(info.default, list) else info.default
    return f": {message} (e.g. {_name(field, prefix)}={default}, the default)"


def environment_variables() -> dict[str, str]:
    """Every DBPOOL_* variable the settings would see, by name as written (any case, as
    pydantic-settings reads them): the .env file's, then the environment's, which win."""
    found: dict[str, str] = {}
    env_file = PoolSettings.model_config.get("env_file")
    if isinstance(env_file, str) and os.path.isfile(env_file):
        encoding = PoolSettings.model_config.get("env_file_encoding")
        for name, value in dotenv_values(env_file, encoding=encoding).items():
            if name.upper().startswith(ENV_PREFIX):
                found[name] = value or ""
    for name, value in os.environ.items():
        if name.upper().startswith(ENV_PREFIX):
            for same in [each for each in found if each.upper() == name.upper()]:
                del found[same]
            found[name] = value
    return found


# DBPOOL_* variables of the package's own that are no pool's setting: the pytest plugin's
# (fastapi_dbpool.testing._server; tests/unit/test_settings.py checks the two lists agree).
OWN_VARIABLES = frozenset(
    {"DBPOOL_TEST_URL", "DBPOOL_TEST_ADMIN_URL", "DBPOOL_TEST_PG_BIN", "DBPOOL_TEST_TMPDIR"}
)
_TYPO = 0.8  # difflib ratio from which an unknown variable is taken for a misspelt one


def check_variables(pools: Sequence[PoolSettings]) -> None:
    """Refuse a DBPOOL_* variable of the environment or .env that no pool of the app reads
    (pools: all of them, the default one first): a misspelt setting (DBPOOL_MAX_SIZ) would be
    ignored without a word. The error names each one and the closest real variable. A
    well-formed variable of a pool the app does not declare (DBPOOL_ANALYTICS_URL without
    analytics in DBPOOL_POOLS) may be another app's: a warning names it."""
    fields = [field.upper() for field in PoolSettings.model_fields]
    prefixes = list(dict.fromkeys(settings.env_prefix().upper() for settings in pools))
    known = {prefix + field for prefix in prefixes for field in fields} | OWN_VARIABLES
    choices = sorted(known - OWN_VARIABLES)
    refused: list[str] = []
    for name in sorted(environment_variables()):
        upper = name.upper()
        if upper in known:
            continue
        close = difflib.get_close_matches(upper, choices, n=1, cutoff=_TYPO)
        pool = _undeclared_pool(upper, fields)
        if close:
            refused.append(f"{name}: did you mean {close[0]}?")
        elif pool is not None:
            logger.warning(
                "%s is set (environment or .env) but this app has no pool %r (its pools: %s), "
                "so nothing reads it: add %s to %sPOOLS, or unset it",
                name,
                pool.lower(),
                ", ".join(repr(settings.name) for settings in pools),
                pool.lower(),
                ENV_PREFIX,
            )
        else:
            near = difflib.get_close_matches(upper, choices, n=1)
            hint = f"the closest is {near[0]}" if near else "see docs/configuration.md"
            refused.append(f"{name}: not a setting ({hint})")
    if refused:
        raise SettingsError(
            f"unknown {ENV_PREFIX}* variables (environment or .env), which no pool reads:\n  "
            + "\n  ".join(refused)
            + "\nfix their names, or remove them (every setting: docs/configuration.md)"
        )


def _undeclared_pool(upper: str, fields: list[str]) -> str | None:
    """NAME when upper is DBPOOL_<NAME>_<FIELD>, a setting of a pool called NAME."""
    rest = upper.removeprefix(ENV_PREFIX)
    for field in fields:
        name = rest.removesuffix(f"_{field}")
        if name != rest and _POOL_NAME.fullmatch(name):
            return name
    return None
