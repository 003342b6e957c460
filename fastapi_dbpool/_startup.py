"""Opening a pool: a probe connection first (a clear reason if it fails), then min_size
connections within DBPOOL_OPEN_TIMEOUT, then one line on the server's connection budget."""

import logging
import os

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import PoolTimeout

from fastapi_dbpool._health import Watched, mark_down
from fastapi_dbpool._hooks import ConnectionSetupError
from fastapi_dbpool.errors import PoolStartupError

logger = logging.getLogger("fastapi_dbpool")

_BUDGET_QUERY = """
    SELECT current_setting('max_connections')::int,
           current_setting('superuser_reserved_connections')::int
           + coalesce(current_setting('reserved_connections', true), '0')::int
"""


async def open_pool(database: Watched) -> None:
    """Open the pool; fail fast with a clear reason unless fail_fast is off or the pool is
    not required (then start degraded and connect when the database comes up)."""
    settings = database.settings
    strict = settings.fail_fast and settings.is_required
    driver = settings.url_driver()
    if driver is not None:
        logger.info(
            "pool %r: %s names the driver %s (SQLAlchemy's postgresql+%s://); psycopg connects "
            "with postgresql://",
            settings.name,
            settings.env_var("url"),
            driver,
            driver,
        )
    try:
        await _probe(database)
    except PoolStartupError as exc:
        if strict:
            raise
        why = f"{settings.env_var('fail_fast')}=false" if settings.is_required else "not required"
        logger.warning("%s; starting degraded (%s)", exc, why)
        await database.pool.open(wait=False)
        if settings.replica:
            mark_down(database)
        return
    await database.pool.open(wait=False)
    try:
        await database.pool.wait(timeout=settings.open_timeout)
    except PoolTimeout:
        if strict:
            await database.pool.close()
            raise PoolStartupError(
                f"could not open {settings.env_var('min_size')} ({settings.min_size}) "
                f"connections to {database.target()} within {settings.env_var('open_timeout')} "
                f"({settings.open_timeout} s): raise {settings.env_var('open_timeout')} or lower "
                f"{settings.env_var('min_size')}"
            ) from None
        logger.warning("pool %r did not fill in time; starting degraded", settings.name)
        return
    logger.info(
        "pool %r opened to %s (min_size=%d, max_size=%d)",
        settings.name,
        database.target(),
        settings.min_size,
        settings.max_size,
    )
    await _log_budget(database)


async def _probe(database: Watched) -> None:
    """One connection as the pool makes them (password provider and configure hook included)."""
    settings = database.settings
    try:
        conn = await database.pool.connection_class.connect(
            settings.conninfo(), **settings.connect_kwargs()
        )
    except ConnectionSetupError as exc:
        raise PoolStartupError(f"cannot open a connection to {database.target()}: {exc}") from None
    except psycopg.Error as exc:
        raise PoolStartupError(explain_connect_error(database, exc)) from None
    await conn.close()


def explain_connect_error(database: Watched, exc: psycopg.Error) -> str:
    """What went wrong connecting, and which setting to fix; never the password."""
    settings = database.settings
    url, password = settings.env_var("url"), settings.env_var("password")
    message = database.redact(str(exc).strip())
    lowered = message.lower()
    if settings.password_provider is not None and (
        "password authentication failed" in lowered or "no password supplied" in lowered
    ):
        hint = f"check what {settings.env_var('password_provider')} returns for this role"
    elif "password authentication failed" in lowered or "no password supplied" in lowered:
        hint = f"check the password in {url} (or {password})"
    elif "database" in lowered and "does not exist" in lowered:
        hint = f"create the database, or fix its name in {url}"
    elif "role" in lowered and "does not exist" in lowered:
        hint = f"create the role, or fix the user name in {url}"
    else:
        hint = f"check that PostgreSQL is running and reachable at the host and port of {url}"
    return f"cannot connect to {database.target()}: {message} ({hint})"


async def _log_budget(database: Watched) -> None:
    """One line: this pool's share of the connections the server allows; a warning if every
    worker's pool together could exceed it."""
    settings = database.settings
    try:
        async with database.pool.connection(timeout=settings.health_timeout) as conn:
            cur = conn.cursor(row_factory=tuple_row)  # whatever DBPOOL_ROW_FACTORY says
            await cur.execute(_BUDGET_QUERY)
            row = await cur.fetchone()
    except Exception as exc:  # a budget line is advice: never fail startup over it
        logger.debug("could not read max_connections: %s", database.redact(str(exc)))
        return
    if row is None:
        return
    max_connections, reserved = row
    allowed = max_connections - reserved
    workers_env = os.environ.get("WEB_CONCURRENCY", "")
    workers = int(workers_env) if workers_env.isdigit() and int(workers_env) > 0 else 1
    workers_note = "WEB_CONCURRENCY" if workers_env.isdigit() else "1 assumed: set WEB_CONCURRENCY"
    max_size = settings.env_var("max_size")
    total = workers * settings.max_size
    line = (
        f"pool {settings.name!r}: {max_size} {settings.max_size} x {workers} worker(s) "
        f"({workers_note}) = {total} of the {allowed} connections the server allows "
        f"(max_connections {max_connections} - {reserved} reserved)"
    )
    if settings.pgbouncer:
        logger.info("%s; behind PgBouncer the server sees PgBouncer's pool instead", line)
    elif total > allowed:
        logger.warning(
            "%s: too many; lower %s or the worker count, or put PgBouncer in front "
            "(docs/deployment.md)",
            line,
            max_size,
        )
    else:
        logger.info(line)
