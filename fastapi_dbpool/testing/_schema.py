"""Where the app's schema comes from: an SQL file or directory, a callable, or a command."""

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import psycopg

from fastapi_dbpool._redact import passwords_in, redact

URL_ENV_VARS = ("DBPOOL_URL", "DATABASE_URL")
_COMMAND_TIMEOUT = 300


@dataclass(frozen=True)
class MigrationsCommand:
    """A command that migrates the database at DBPOOL_URL / DATABASE_URL (set for it).

    ``{url}`` in an argument is replaced by the database's URL, for tools that take it on
    the command line: ``MigrationsCommand(["yoyo", "apply", "--batch", "-d", "{url}", "sql/"])``.
    """

    argv: Sequence[str]
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    def run(self, url: str) -> None:
        """Run the command against url; a failure raises with its output, passwords masked."""
        argv = [arg.replace("{url}", url) for arg in self.argv]
        env = {**os.environ, **self.env, **dict.fromkeys(URL_ENV_VARS, url)}
        try:
            result = subprocess.run(  # noqa: S603 - the command the user configured
                argv,
                cwd=self.cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=_COMMAND_TIMEOUT,
                check=False,
            )
        except OSError as exc:
            raise RuntimeError(
                f"the dbpool_schema migrations command {list(self.argv)} could not start: "
                f"{exc.strerror}; check its first argument (the program) and cwd"
            ) from None
        except subprocess.TimeoutExpired:  # its message shows the argv, {url} filled in
            raise RuntimeError(
                f"the dbpool_schema migrations command {list(self.argv)} did not finish within "
                f"{_COMMAND_TIMEOUT} s"
            ) from None
        if result.returncode != 0:
            output = redact(f"{result.stdout}\n{result.stderr}".strip()[-3000:], passwords_in(url))
            raise RuntimeError(
                f"the dbpool_schema migrations command {list(self.argv)} failed "
                f"({result.returncode}):\n{output}"
            )


SchemaCallable = Callable[["psycopg.Connection[Any]"], object]
#: What a ``dbpool_schema`` fixture returns; None: an empty database.
SchemaSource = Union[str, "os.PathLike[str]", SchemaCallable, MigrationsCommand, None]


def python_command(*args: str, cwd: Path | None = None) -> MigrationsCommand:
    """A MigrationsCommand on this interpreter: ``python_command("-m", "alembic", "upgrade",
    "head")`` runs the alembic of the test's virtualenv, whatever PATH holds."""
    return MigrationsCommand([sys.executable, *args], cwd=cwd)


def apply_schema(source: SchemaSource, url: str) -> None:
    """Build the schema in the (empty) database at url, as its owner."""
    if source is None:
        return
    if isinstance(source, MigrationsCommand):
        source.run(url)
        return
    if isinstance(source, (str, os.PathLike)):
        _run_sql(Path(source), url)
        return
    if callable(source):
        with psycopg.connect(url) as conn:  # one transaction, committed on success
            source(conn)
        return
    raise TypeError(
        "dbpool_schema must return an SQL file or directory (str or Path), a callable taking "
        f"a psycopg.Connection, a MigrationsCommand, or None; got {type(source).__name__}"
    )


def _run_sql(path: Path, url: str) -> None:
    if path.is_dir():
        files = sorted(path.glob("*.sql"))
        if not files:
            raise RuntimeError(f"dbpool_schema: no *.sql file in the directory {path}")
    elif path.is_file():
        files = [path]
    else:
        raise RuntimeError(
            f"dbpool_schema: {path} is neither an SQL file nor a directory of them "
            f"(relative paths start from {Path.cwd()}: return an absolute path)"
        )
    with psycopg.connect(url) as conn:
        for file in files:
            try:
                conn.execute(file.read_text(encoding="utf-8").encode())
            except psycopg.Error as exc:
                raise RuntimeError(f"dbpool_schema: {file} failed: {exc}") from None
