"""A real PgBouncer 1.x in transaction mode on 127.0.0.1, in front of the run's PostgreSQL.

The same setup as the tests' ``pgbouncer_url`` fixture (tests/scaleout/conftest.py), its files
written by the same ``write_pgbouncer_config``: a userlist with the role's password in clear
(PgBouncer then speaks SCRAM to both sides), run as the unprivileged user of the embedded server
when we are root (PgBouncer refuses root), output to a log file, stopped in a finally.
"""

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.servers import HOST, free_port
from fastapi_dbpool.testing._pgbouncer import write_pgbouncer_config

RUNNER = "fastapi_dbpool_pg"  # the user EmbeddedPostgres runs the server as, when we are root
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


@dataclass
class PgBouncer:
    url: str  # the app's DSN, through PgBouncer (key=value, password included)
    admin_url: str  # PgBouncer's admin console (database "pgbouncer"), same role
    port: int
    pool_size: int
    max_client_conn: int
    log: Path
    version: str


def binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found is None:
        raise RuntimeError("pgbouncer is not installed: apt-get install -y pgbouncer")
    return found


def version() -> str:
    """First line of ``pgbouncer -V``, e.g. "PgBouncer 1.18.0"."""
    out = subprocess.run([binary(), "-V"], capture_output=True, text=True, timeout=10, check=False)
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (PgBouncer's immediate shutdown), SIGKILL if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


@contextmanager
def running(
    database_url: str, log_dir: Path, pool_size: int = 10, max_client_conn: int = 500
) -> Iterator[PgBouncer]:
    """PgBouncer on a free loopback port in front of database_url; stopped on exit.

    It logs to log_dir/pgbouncer.log (its stdout); its work dir, which holds the password, is
    deleted on exit.
    """
    target = conninfo_to_dict(database_url)
    password = target.get("password")
    if not password:
        raise RuntimeError("PgBouncer needs the role's password in the URL for its auth_file")
    user = str(target.get("user") or "app")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-pgbouncer-"))
    process: subprocess.Popen[bytes] | None = None
    log = log_dir / "pgbouncer.log"
    try:
        ini = write_pgbouncer_config(
            workdir,
            server_host=str(target.get("host") or HOST),
            server_port=int(target.get("port") or 5432),
            listen_port=port,
            user=user,
            password=str(password),
            pool_size=pool_size,
            max_client_conn=max_client_conn,
            admin=True,
        )
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            entry = pwd.getpwnam(RUNNER)
            for path in [workdir, *workdir.iterdir()]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        with log.open("wb") as out:
            process = subprocess.Popen(
                [binary(), str(ini)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )
        url = make_conninfo(database_url, host=HOST, port=str(port))
        bouncer = PgBouncer(
            url=url,
            admin_url=make_conninfo(url, dbname="pgbouncer"),
            port=port,
            pool_size=pool_size,
            max_client_conn=max_client_conn,
            log=log,
            version=version(),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    text = log.read_text() if log.exists() else ""
                    raise RuntimeError(
                        f"pgbouncer did not start ({exc}):\n{text[-3000:]}"
                    ) from None
                time.sleep(0.1)
        yield bouncer
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def admin_connect(bouncer: PgBouncer) -> psycopg.Connection[Any]:
    """A connection to the admin console; it speaks the simple query protocol only."""
    return psycopg.connect(
        bouncer.admin_url, autocommit=True, connect_timeout=5, cursor_factory=psycopg.ClientCursor
    )


def show(conn: psycopg.Connection[Any], what: str) -> list[dict[str, Any]]:
    """SHOW POOLS, SHOW CLIENTS... on the admin console, as dicts."""
    cur = conn.execute(f"SHOW {what}")
    names = [column.name for column in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
