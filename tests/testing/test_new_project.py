"""A new project that depends on fastapi-dbpool[testing], run with plain pytest and -n 2.

The project is written to a temp dir as a user would write it: an app on pool_lifespan
(settings from the environment at startup), its schema in an SQL file, a conftest that
returns it from dbpool_schema, the app named by the dbpool_app ini option, and tests that
write rows and read them back. pytest runs in that dir with this interpreter, loading the
plugin through its entry point; no DBPOOL_TEST_URL and no Docker, so every server is the
embedded one the plugin starts (one per xdist worker).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastapi_dbpool.testing._server import _memory_dir

APP = """
from typing import Any

from fastapi import FastAPI

from fastapi_dbpool import ConnDep, pool_lifespan

app = FastAPI(lifespan=pool_lifespan)


@app.post("/notes")
async def add_note(note: dict[str, str], conn: ConnDep) -> dict[str, str]:
    await conn.execute("INSERT INTO notes (body) VALUES (%s)", (note["body"],))
    return note


@app.get("/notes")
async def list_notes(conn: ConnDep) -> dict[str, Any]:
    cur = await conn.execute("SELECT body, current_database() FROM notes ORDER BY id")
    rows = await cur.fetchall()
    database = await (await conn.execute("SELECT current_database()")).fetchone()
    return {"bodies": [row[0] for row in rows], "database": database[0]}
"""

SCHEMA = "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);\n"

CONFTEST = """
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dbpool_schema() -> Path:
    return Path(__file__).parent / "schema.sql"
"""

INI = """
[pytest]
dbpool_app = app:app
pythonpath = .
"""

TESTS = """
import json
import os
from pathlib import Path

import pytest


def record(name: str, seen: dict) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    out = Path(os.environ["OBSERVATIONS"]) / f"{name}.json"
    out.write_text(json.dumps({"worker": worker, "name": name, **seen}))


@pytest.mark.parametrize("n", range(6))
async def test_sees_only_its_own_rows(dbpool_client, n):
    body = f"async-{n}"
    for _ in range(2):
        assert (await dbpool_client.post("/notes", json={"body": body})).status_code == 200
    seen = (await dbpool_client.get("/notes")).json()
    record(body, seen)
    assert seen["bodies"] == [body, body]


@pytest.mark.parametrize("n", range(2))
def test_sync_client_sees_only_its_own_rows(dbpool_test_client, n):
    body = f"sync-{n}"
    assert dbpool_test_client.post("/notes", json={"body": body}).status_code == 200
    seen = dbpool_test_client.get("/notes").json()
    record(body, seen)
    assert seen["bodies"] == [body]
"""

EXPECTED = {f"async-{n}" for n in range(6)} | {f"sync-{n}" for n in range(2)}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "newproject"
    root.mkdir()
    (root / "app.py").write_text(APP)
    (root / "schema.sql").write_text(SCHEMA)
    (root / "conftest.py").write_text(CONFTEST)
    (root / "pytest.ini").write_text(INI)
    (root / "test_notes.py").write_text(TESTS)
    return root


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A TMPDIR of the run's own (traversable, as the embedded server needs when root), in
    memory when the plugin itself would put its servers there."""
    path = Path(tempfile.mkdtemp(prefix="newproject-tmp-", dir=_memory_dir()))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_pytest(project: Path, tmpdir: Path, observations: Path, *args: str) -> dict[str, Any]:
    """python -m pytest in the project, as its user runs it; the tests' observations."""
    observations.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "DBPOOL_")) and key not in ("DATABASE_URL", "PYTHONPATH")
    }
    env.update(
        TMPDIR=str(tmpdir),
        DBPOOL_TEST_TMPDIR=str(tmpdir),  # the servers' files too, to see them deleted
        OBSERVATIONS=str(observations),
        DOCKER_HOST="unix:///nonexistent/docker.sock",  # no Docker: the embedded server
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "8 passed" in result.stdout
    seen = {path.stem: json.loads(path.read_text()) for path in observations.glob("*.json")}
    assert set(seen) == EXPECTED
    return seen


def test_plain_pytest_and_xdist_each_test_sees_its_own_rows(
    project: Path, private_tmp: Path, tmp_path: Path
) -> None:
    plain = run_pytest(project, private_tmp, tmp_path / "plain")
    assert {test["worker"] for test in plain.values()} == {"main"}
    assert len({test["database"] for test in plain.values()}) == len(EXPECTED)

    parallel = run_pytest(project, private_tmp, tmp_path / "parallel", "-n", "2")
    workers = {test["worker"] for test in parallel.values()}
    assert workers == {"gw0", "gw1"}
    for test in parallel.values():
        # The row count checks the test saw none of the rows other tests wrote meanwhile.
        assert test["bodies"] == [test["name"]] * test["bodies"].count(test["name"])
        assert test["bodies"]
        assert f"_{test['worker']}_" in test["database"]
    assert len({test["database"] for test in parallel.values()}) == len(EXPECTED)
    # Every embedded server (one per worker) was stopped and its files deleted.
    assert [path.name for path in private_tmp.glob("*pg*-*")] == []
