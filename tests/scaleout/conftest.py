"""A real PgBouncer 1.x in transaction mode, on loopback, in front of the test server."""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest

from fastapi_dbpool.testing import DatabaseServer, EmbeddedPostgres
from fastapi_dbpool.testing._pgbouncer import write_pgbouncer_config
from tests.support import free_port


@pytest.fixture(scope="session")
def pgbouncer_url(database_server: DatabaseServer) -> Iterator[str]:
    """A DSN through PgBouncer (transaction mode, 4 server connections) to the test database."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if binary is None:
        pytest.skip("pgbouncer is not installed (.ci/run installs Debian's pgbouncer package)")
    if database_server.password is None:
        pytest.skip(
            "the server from DBPOOL_TEST_URL has no known password for PgBouncer's auth file"
        )
    target = urlsplit(database_server.url)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    user = target.username or "app"
    ini = write_pgbouncer_config(
        workdir,
        server_host=target.hostname or "127.0.0.1",
        server_port=target.port or 5432,
        listen_port=port,
        user=user,
        password=database_server.password,
        pool_size=4,
        logfile=workdir / "pgbouncer.log",
        pidfile=workdir / "pgbouncer.pid",
    )
    command = [binary, str(ini)]
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        runner = "fastapi_dbpool_pg"
        entry = pwd.getpwnam(runner)
        for path in [workdir, *workdir.iterdir()]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs
    )  # type: ignore[call-overload]
    secret = quote(database_server.password, safe="")
    url = f"postgresql://{user}:{secret}@127.0.0.1:{port}{target.path}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (
                        (workdir / "pgbouncer.log").read_text()
                        if (workdir / "pgbouncer.log").exists()
                        else ""
                    )
                    pytest.fail(f"pgbouncer did not start:\n{log}")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def primary_and_standby() -> Iterator[tuple[EmbeddedPostgres, EmbeddedPostgres]]:
    """A primary and its streaming standby on two loopback ports, with an items table; both
    stopped and deleted after the block. Skips, saying why, without the binaries."""
    try:
        primary = EmbeddedPostgres()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL binaries to build a replica from: {exc}")
    if not (primary.bin / "pg_basebackup").is_file():
        primary.close()
        pytest.skip(f"pg_basebackup is not in {primary.bin}")
    try:
        primary.start()
        with psycopg.connect(primary.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id serial PRIMARY KEY, note text NOT NULL)")
        standby = primary.standby()
        try:
            standby.start()
            yield primary, standby
        finally:
            standby.close()
    finally:
        primary.close()
