"""While the pytest plugin runs an app for a test: the one database the app's pools may use.

The plugin points every pool the environment names at the test's own database; a pool whose
URL came from code (settings built before the test) would still reach another one. The
lifespan calls check() with every pool's settings before any pool connects and before the
app's own startup code runs, so a test never touches a database it did not create.
"""

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from psycopg.conninfo import conninfo_to_dict

from fastapi_dbpool._root import UsageError
from fastapi_dbpool.settings import PoolSettings, env_var

_WHERE = ("host", "hostaddr", "port", "dbname")

# The test's database URL while the plugin runs an app; process-wide, as Starlette's
# TestClient runs the lifespan in a thread of its own (where a ContextVar would not reach).
_only: list[str] = []


# What libpq reads when the URL leaves a part out (DATABASE_URL=postgresql:// and PG*).
_LIBPQ_ENV = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE"}


def _where(conninfo: str) -> tuple[str, ...]:
    params = conninfo_to_dict(conninfo)
    return tuple(
        str(params.get(key) or os.environ.get(_LIBPQ_ENV[key]) or "") for key in _WHERE
    )


@contextmanager
def only(url: str) -> Iterator[None]:
    """Within the block, an app's pools may connect to url's database only."""
    _only.append(url)
    try:
        yield
    finally:
        _only.remove(url)


def check(pools: Iterable[PoolSettings]) -> None:
    """Refuse, before connecting, a pool that would reach another database than the test's."""
    if not _only:
        return
    url = _only[-1]
    wanted = _where(url)
    for settings in pools:
        if _where(settings.conninfo()) == wanted:
            continue
        got = conninfo_to_dict(settings.conninfo()).get("dbname")
        variable = env_var("url", settings.env_prefix())
        raise UsageError(
            f"the pool {settings.name!r} would connect to the database {got!r}, not this "
            f"test's {conninfo_to_dict(url).get('dbname')!r}; refused before connecting and "
            "before the app's startup code. Its URL was given in code or read before the test "
            f"(not from {variable} at startup, which the plugin points at the test's "
            "database): use pool_lifespan, create_pool_lifespan(a function returning "
            "PoolSettings), pools=[names] read from DBPOOL_<NAME>_URL, or build the app from "
            "the dbpool_settings fixture"
        )
