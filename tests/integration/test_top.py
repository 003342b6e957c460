"""python -m fastapi_dbpool top: one frame against a running app, and an unreachable one."""

import subprocess
import sys

from fastapi_dbpool.testing import DatabaseServer
from tests.support import ROOT, free_port, serve_app


def top_once(url: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "fastapi_dbpool", "top", url, "--once"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
        check=True,
    )
    return result.stdout


def test_top_shows_the_pool_of_a_running_app(database_server: DatabaseServer) -> None:
    env = {
        "DBPOOL_URL": database_server.url,
        "DBPOOL_NAME": "users-api",
        "DBPOOL_APPLICATION_NAME": "top-test",
    }
    with serve_app("tests.faults.fault_app:app", env) as app:
        output = top_once(app.base)
    header, line = output.splitlines()[1:3]
    assert header.split()[:6] == ["pool", "status", "total", "free", "in_use", "waiting"]
    cells = line.split()
    assert cells[:3] == ["users-api", "open", "2"]
    assert "postgresql://" not in output


def test_top_says_when_the_app_is_unreachable() -> None:
    output = top_once(f"http://127.0.0.1:{free_port()}")
    assert "unreachable" in output
