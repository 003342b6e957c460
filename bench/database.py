"""The one PostgreSQL of a run: an embedded throwaway server, or a DSN given; the users table."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from fastapi_dbpool.testing import EmbeddedPostgres

USERS = 10_000
# Connect per request at c=256 opens 256 backends next to every variant's idle pool.
MAX_CONNECTIONS = 400

SEED = f"""
DROP TABLE IF EXISTS bench_users;
CREATE TABLE bench_users (
    id    integer PRIMARY KEY,
    name  text NOT NULL,
    email text NOT NULL UNIQUE
);
INSERT INTO bench_users
    SELECT i, 'User ' || i, 'user' || i || '@example.com' FROM generate_series(1, {USERS}) AS i;
ANALYZE bench_users;
"""


@dataclass
class Database:
    url: str
    source: str  # "embedded" or "dsn"
    bin_dir: Path | None
    version: str = ""
    settings: dict[str, str] | None = None

    def pgbench(self) -> str:
        if self.bin_dir is not None and (self.bin_dir / "pgbench").exists():
            return str(self.bin_dir / "pgbench")
        found = shutil.which("pgbench")
        if found is None:
            raise RuntimeError("pgbench not found: apt-get install -y postgresql-client")
        return found

    def libpq_env(self) -> dict[str, str]:
        """PG* variables for the libpq tools (pgbench), from the URL."""
        info = conninfo_to_dict(self.url)
        env = dict(os.environ)
        for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
                         ("password", "PGPASSWORD"), ("dbname", "PGDATABASE")):  # fmt: skip
            if info.get(key):
                env[var] = str(info[key])
        return env


def _tune(server: EmbeddedPostgres) -> None:
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}")
        # The test cluster logs every connection; production rarely does, and variant 6 would
        # write a million lines.
        conn.execute("ALTER SYSTEM SET log_connections = 'off'")
        conn.execute("ALTER SYSTEM SET log_disconnections = 'off'")
    server.stop()
    server.start()


@contextmanager
def database(dsn: str | None) -> Iterator[Database]:
    """The server of the run, with bench_users seeded; an embedded one is stopped on exit."""
    server: EmbeddedPostgres | None = None
    try:
        if dsn:
            db = Database(dsn, "dsn", None)
        else:
            server = EmbeddedPostgres()
            server.start()
            _tune(server)
            db = Database(server.url, "embedded", server.bin)
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute(SEED)
            row = conn.execute("SHOW server_version").fetchone()
            db.version = row[0] if row else "?"
            db.settings = {
                name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in (
                    "max_connections",
                    "shared_buffers",
                    "password_encryption",
                    "fsync",
                    "synchronous_commit",
                )
            }
        yield db
    finally:
        if server is not None:
            server.close()


def _pgbench(db: Database, *args: str, timeout: float) -> dict[str, float]:
    result = subprocess.run(
        [db.pgbench(), *args], env=db.libpq_env(), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed: {result.stderr[-2000:]}")
    out: dict[str, float] = {}
    for line in result.stdout.splitlines():
        if line.startswith("tps = "):
            out["tps"] = float(line.split()[2])
        elif line.startswith("latency average = "):
            out["latency_ms"] = float(line.split()[3])
        elif line.startswith("average connection time = "):
            out["connect_ms"] = float(line.split()[4])
    return out


def ceiling(
    db: Database, seconds: int, clients: int, work_dir: Path
) -> dict[str, dict[str, float]]:
    """pgbench: the database's own ceiling for the endpoint's query, with and without connects."""
    script = work_dir / "pgbench-users.sql"
    script.write_text(
        f"\\set id random(1, {USERS})\nSELECT id, name, email FROM bench_users WHERE id = :id;\n"
    )
    common = ["-n", "-c", str(clients), "-j", "2", "-T", str(seconds)]
    timeout = seconds + 60
    results = {}
    _pgbench(db, "-i", "-q", "-s", "1", timeout=120)
    try:
        results["select_only_S"] = _pgbench(db, "-S", "-M", "prepared", *common, timeout=timeout)
    finally:
        _pgbench(db, "-i", "-I", "d", timeout=60)  # drop the pgbench_* tables again
    results["users_prepared"] = _pgbench(db, "-f", str(script), "-M", "prepared", *common,
                                         timeout=timeout)  # fmt: skip
    results["users_simple"] = _pgbench(db, "-f", str(script), *common, timeout=timeout)
    results["users_connect_each"] = _pgbench(db, "-f", str(script), "-C", *common,
                                             timeout=timeout)  # fmt: skip
    return results
