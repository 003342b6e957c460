"""Start each variant under the same uvicorn settings, wait until it answers, stop it."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.variants import Variant
from fastapi_dbpool.testing._server import free_port

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # every request of the harness goes here, and nowhere else
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

UVICORN_OPTIONS = (
    "--host", HOST, "--workers", "1", "--loop", "uvloop", "--http", "httptools",
    "--no-access-log", "--log-level", "warning", "--lifespan", "on",
)  # fmt: skip


@dataclass
class App:
    variant: Variant
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def probe_path(self) -> str:
        return "/ping" if self.variant.path == "ping" else "/users/1"


def command(variant: Variant, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", f"{variant.module}:app", "--port", str(port),
            *UVICORN_OPTIONS]  # fmt: skip


def app_env(database_url: str, variant: Variant, pool_size: int) -> dict[str, str]:
    # Nothing inherited may configure the pool: only the defaults and the variant's own env.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBPOOL_", "DATABASE_URL"))}
    env.update(
        DBPOOL_URL=database_url,
        BENCH_POOL_SIZE=str(pool_size),
        PYTHONPATH=str(ROOT),
        PYTHONDONTWRITEBYTECODE="1",
    )
    if pool_size != 10:
        env["DBPOOL_MAX_SIZE"] = str(pool_size)
    env.update(variant.env)
    return env


def start(variant: Variant, database_url: str, log_dir: Path, pool_size: int) -> App:
    port = free_port()
    log = log_dir / f"{variant.key}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command(variant, port),
            # A run directory as cwd: no stray .env is read by the apps' settings.
            cwd=log_dir,
            env=app_env(database_url, variant, pool_size),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return App(variant, port, process, log)


def wait_ready(app: App) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if app.process.poll() is not None:
            raise RuntimeError(
                f"{app.variant.key} exited at startup:\n{app.log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(app.url + app.probe_path(), timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{app.variant.key} did not answer within {START_TIMEOUT} s: see {app.log}")


def stop(app: App) -> None:
    """SIGTERM (uvicorn's graceful shutdown closes the pool), then SIGKILL if it hangs."""
    if app.process.poll() is not None:
        return
    app.process.send_signal(signal.SIGTERM)
    try:
        app.process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(app.process.pid, signal.SIGKILL)
        app.process.wait()


@contextmanager
def running(
    variants: list[Variant], database_url: str, log_dir: Path, pool_size: int
) -> Iterator[dict[str, App]]:
    """All variants serving at once, each on its own port; every one stopped on exit."""
    apps: dict[str, App] = {}
    try:
        for variant in variants:
            apps[variant.key] = start(variant, database_url, log_dir, pool_size)
        for app in apps.values():
            wait_ready(app)
        yield apps
    finally:
        for app in apps.values():
            stop(app)
