"""The configuration of a PgBouncer in transaction mode on loopback, for the tests and the bench."""

from pathlib import Path


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def write_pgbouncer_config(
    workdir: Path,
    *,
    server_host: str,
    server_port: int,
    listen_port: int,
    user: str,
    password: str,
    pool_size: int,
    max_client_conn: int = 500,
    admin: bool = False,
    logfile: Path | None = None,
    pidfile: Path | None = None,
) -> Path:
    """Write workdir/userlist.txt (user and password in clear: PgBouncer then speaks SCRAM to
    both sides) and workdir/pgbouncer.ini, listening on 127.0.0.1:listen_port in front of
    server_host:server_port; return the path of pgbouncer.ini.

    admin: the user may use the admin console (database "pgbouncer"). logfile and pidfile: None
    leaves them out (PgBouncer then logs to stderr).
    """
    userlist = workdir / "userlist.txt"
    userlist.write_text(f"{_quote(user)} {_quote(password)}\n")
    lines = [
        "[databases]",
        f"* = host={server_host} port={server_port}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {listen_port}",
        "unix_socket_dir =",
        "auth_type = scram-sha-256",
        f"auth_file = {userlist}",
        *([f"admin_users = {user}"] if admin else []),
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        f"max_client_conn = {max_client_conn}",
        "ignore_startup_parameters = extra_float_digits",
        *([f"logfile = {logfile}"] if logfile is not None else []),
        *([f"pidfile = {pidfile}"] if pidfile is not None else []),
    ]
    ini = workdir / "pgbouncer.ini"
    ini.write_text("\n".join(lines) + "\n")
    return ini
