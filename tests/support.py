"""Helpers shared by the suites that run a real uvicorn process."""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx2
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from fastapi_dbpool.testing._server import free_port as free_port  # re-exported for the tests

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Served:
    """A running uvicorn process."""

    process: subprocess.Popen[bytes]
    base: str
    port: int
    application_name: str
    log: IO[bytes]

    def output(self) -> str:
        """Everything uvicorn printed so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextmanager
def serve_app(
    target: str, env: dict[str, str], ready_path: str = "/pool/stats"
) -> Iterator[Served]:
    """Serve target ("module:app") on a free loopback port until ready_path answers 200;
    killed after the block if still running."""
    port = free_port()
    # A file, not a pipe: an unread pipe fills up and blocks the server's logging.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "5",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    served = Served(
        process, f"http://127.0.0.1:{port}", port, env.get("DBPOOL_APPLICATION_NAME", ""), log
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx2.get(served.base + ready_path, timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait(10)
                pytest.fail(f"uvicorn did not start:\n{served.output()}")
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


class CancelAfter:
    """Cancels a request that runs longer than X-Cancel-After seconds, as an edge proxy would."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        limit = headers.get(b"x-cancel-after")
        if scope["type"] != "http" or limit is None:
            await self.inner(scope, receive, send)
            return
        try:
            await asyncio.wait_for(self.inner(scope, receive, send), float(limit))
        except asyncio.TimeoutError:
            await send({"type": "http.response.start", "status": 504, "headers": []})
            await send({"type": "http.response.body", "body": b"cancelled"})
