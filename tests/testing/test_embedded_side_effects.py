"""What starting the embedded server does to the machine: no mode changed outside its own
directories, and nothing left running or on disk, even when a start is interrupted."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from fastapi_dbpool.testing import EmbeddedPostgres

as_root = pytest.mark.skipif(
    getattr(os, "geteuid", lambda: -1)() != 0,
    reason="only as root does the plugin create a server user and set owners and modes",
)


def modes(paths: list[Path]) -> dict[Path, int]:
    return {path: path.stat().st_mode for path in paths}


@as_root
def test_a_server_changes_no_mode_outside_its_own_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A private TMPDIR, as pytest's own (/tmp/pytest-of-root is 0700): the server user
    # cannot traverse it, and the plugin must not open it (or its parents) up.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.delenv("DBPOOL_TEST_TMPDIR", raising=False)
    shared = [Path(p) for p in ("/tmp", "/var/tmp", "/dev/shm") if Path(p).is_dir()]
    watched = [private, *private.parents, *shared]
    before = modes(watched)

    server = EmbeddedPostgres()
    try:
        server.start()
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        base = server.base
        assert modes(watched) == before
        assert not base.is_relative_to(private)  # it went to a temp dir every user can reach
        assert base.stat().st_mode & 0o777 == 0o700  # and no one else may look inside
        assert base.owner() == "fastapi_dbpool_pg"
    finally:
        server.close()
    assert not base.exists()
    assert modes(watched) == before


@as_root
def test_an_unreachable_data_root_is_refused_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("DBPOOL_TEST_TMPDIR", str(private))
    before = modes([private, *private.parents])
    with pytest.raises(RuntimeError, match=r"DBPOOL_TEST_TMPDIR .* traverse"):
        EmbeddedPostgres()
    assert list(private.iterdir()) == []
    assert modes([private, *private.parents]) == before


START = """
import time
from fastapi_dbpool.testing import EmbeddedPostgres

server = EmbeddedPostgres()
print(server.base, flush=True)
server.start()
time.sleep(120)
"""


def postmasters_on(data: Path) -> list[str]:
    """The servers pg_ctl started on data (not initdb's bootstrap backend, which has no -h)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if f"-D {data} -h" in line]


def test_ctrl_c_during_start_leaves_no_server_and_no_files() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", START],
        stdout=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal sends it, even if this run was started with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert child.stdout is not None
        base = Path(child.stdout.readline().strip())
        deadline = time.monotonic() + 60
        # pg_ctl's log exists and the postmaster holds its pid file (initdb, earlier, has no
        # log): the server runs while pg_ctl may still wait for it to accept connections.
        log, pid_file = base / "server.log", base / "data" / "postmaster.pid"
        while not (log.exists() and pid_file.exists()):
            assert time.monotonic() < deadline, "the server did not start in 60 s"
            assert child.poll() is None, "the child exited before the server started"
            time.sleep(0.005)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # Left alone, an orphaned postmaster notices its deleted directory only after ~15 s.
    deadline = time.monotonic() + 5
    while postmasters_on(base / "data") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert postmasters_on(base / "data") == []
    assert not base.exists()
