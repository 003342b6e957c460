"""The variants under test: which app, which path, which environment."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Variant:
    key: str  # short name used in tables and JSON
    number: int  # the numbering; 0 is /ping
    title: str
    module: str
    path: str = "users"  # "users": GET /users/{random id}; "ping": GET /ping
    env: dict[str, str] = field(default_factory=dict)


VARIANTS: tuple[Variant, ...] = (
    Variant("ping", 0, "GET /ping, no database (framework ceiling)", "bench.apps.ping", "ping"),
    Variant("dbpool", 1, "fastapi_dbpool, Depends(get_conn), defaults", "bench.apps.dbpool"),
    Variant(
        "dbpool-nometrics",
        2,
        "fastapi_dbpool, DBPOOL_METRICS=false",
        "bench.apps.dbpool",
        env={"DBPOOL_METRICS": "false"},
    ),
    Variant("psycopg-pool", 3, "raw psycopg AsyncConnectionPool", "bench.apps.psycopg_pool"),
    Variant("asyncpg", 4, "asyncpg pool", "bench.apps.asyncpg_pool"),
    Variant("sqlalchemy", 5, "SQLAlchemy async engine (psycopg)", "bench.apps.sqlalchemy_async"),
    Variant("no-pool", 6, "no pool, connect per request", "bench.apps.no_pool"),
    Variant("sync", 7, "sync def + psycopg ConnectionPool", "bench.apps.sync_pool"),
    Variant("dbpool-read", 8, "fastapi_dbpool, ReadConnDep (autocommit)", "bench.apps.dbpool_read"),
    Variant(
        "psycopg-pool-autocommit",
        9,
        "raw psycopg AsyncConnectionPool, autocommit, prepare_threshold=0",
        "bench.apps.psycopg_pool_autocommit",
    ),
)

BY_KEY = {variant.key: variant for variant in VARIANTS}
