"""The conformance matrix: every guarantee on every face, against the real server.

Faces: ``depends`` (an async endpoint on ConnDep), ``def`` (a def endpoint on SyncConnDep),
``starlette`` (``async with connection(request)`` in a plain Starlette route) and ``session``
(``fastapi_dbpool.session.transaction`` as lifespans and background work use it). Each face
serves the same routes, so each guarantee is one test parametrised over the faces;
docs/reliability.md prints the matrix with the figure each cell measured.
"""

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from psycopg import AsyncClientCursor, ClientCursor
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fastapi_dbpool import (
    ConnDep,
    PoolSettings,
    ReadConnDep,
    SyncConnDep,
    create_pool_lifespan,
    pool_router,
)
from fastapi_dbpool._healing import Healer
from fastapi_dbpool._owner import ConnectionReleased
from fastapi_dbpool._state import database_of
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.session import Leases, autocommit, transaction
from fastapi_dbpool.starlette import connection, exception_handlers
from fastapi_dbpool.testing import DatabaseServer, Observer
from tests.faults.proxy import fault_proxy

from .conftest import SettingsFactory, row_exists, url_without_password

FACES = ("depends", "def", "starlette", "session")
INSERT = "INSERT INTO items (id, note) VALUES (%s, 'conformance')"
ORPHAN = "INSERT INTO children (id, parent_id) VALUES (%s, %s)"  # deferred FK: COMMIT fails
CONFLICT = "INSERT INTO conflicts (id) VALUES (%s)"  # its deferred trigger fails the COMMIT
SLOW_COMMIT = "INSERT INTO slow_commits (id) VALUES (%s)"  # its deferred trigger sleeps 1 s
CANCEL_AFTER = 0.3  # seconds the edge middleware lets a request run
LATE = 0.8  # when a cancelled endpoint tries its second write
CUT_AFTER = 0.3  # seconds into a slow COMMIT when its connection is cut



def new_id() -> int:
    return secrets.randbelow(2**62)


@pytest.fixture(scope="module", autouse=True)
def commit_triggers(database_server: DatabaseServer, schema: None) -> None:
    """Tables whose deferred triggers run at COMMIT: one fails it with a serialization failure
    (an OperationalError on a live connection), one makes it last a second."""
    with psycopg.connect(database_server.url, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS conflicts (id bigint PRIMARY KEY);
            CREATE TABLE IF NOT EXISTS slow_commits (id bigint PRIMARY KEY);
            CREATE OR REPLACE FUNCTION conflict_at_commit() RETURNS trigger
                LANGUAGE plpgsql AS $$ BEGIN
                    RAISE EXCEPTION 'a conflict found at commit'
                        USING ERRCODE = 'serialization_failure';
                END $$;
            CREATE OR REPLACE FUNCTION sleep_at_commit() RETURNS trigger
                LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
            DO $$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'conflict_at_commit') THEN
                    CREATE CONSTRAINT TRIGGER conflict_at_commit AFTER INSERT ON conflicts
                        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                        EXECUTE FUNCTION conflict_at_commit();
                END IF;
                IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'sleep_at_commit') THEN
                    CREATE CONSTRAINT TRIGGER sleep_at_commit AFTER INSERT ON slow_commits
                        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                        EXECUTE FUNCTION sleep_at_commit();
                END IF;
            END $$;
            """
        )


class Late:
    """What the code that runs after a request (or a cancelled endpoint) got."""

    def __init__(self) -> None:
        self.errors: dict[int, str] = {}
        self.done = threading.Event()

    def record(self, item_id: int, error: BaseException | None) -> None:
        self.errors[item_id] = type(error).__name__ if error is not None else "ran"
        self.done.set()


class VisibleAtResponse:
    """Reads, outside the app, whether the request's row is committed when the response
    starts: the ground truth for "committed before the response"."""

    def __init__(self, inner: ASGIApp, url: str, seen: dict[int, bool]) -> None:
        self.inner = inner
        self.url = url
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        item = dict(scope.get("headers") or []).get(b"x-item")
        if scope["type"] != "http" or item is None:
            await self.inner(scope, receive, send)
            return

        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.seen[int(item)] = await asyncio.to_thread(
                    row_exists, self.url, "items", int(item)
                )
            await send(message)

        await self.inner(scope, receive, watch)


class CancelAfter:
    """Cancels requests that carry X-Cancel after CANCEL_AFTER s, as an edge timeout does:
    with asyncio.wait_for (a task cancelled once), or with ``X-Cancel: scope`` an anyio cancel
    scope (every await inside it cancelled until it is left)."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        if scope["type"] != "http" or b"x-cancel" not in headers:
            await self.inner(scope, receive, send)
            return
        if headers[b"x-cancel"] == b"scope":
            # anyio's cancellation is level-triggered: every await inside the scope is
            # cancelled, the sessions' exits included, unless they shield themselves.
            with anyio.move_on_after(CANCEL_AFTER) as scope_:
                await self.inner(scope, receive, send)
            if not scope_.cancelled_caught:
                return
        else:
            try:
                await asyncio.wait_for(self.inner(scope, receive, send), CANCEL_AFTER)
                return
            except asyncio.TimeoutError:
                pass
        await send({"type": "http.response.start", "status": 504, "headers": []})
        await send({"type": "http.response.body", "body": b"cancelled"})


# --- the operations every face runs, async and sync ---------------------------------------


async def write(conn: Any, item_id: int, fail: str) -> None:
    if fail == "autocommit":  # refused: each statement would commit on its own
        await conn.set_autocommit(True)
    if fail == "block":  # a first block is the request's transaction: its error ends it all
        async with conn.transaction():
            await conn.execute(INSERT, (item_id,))
            raise ValueError("a bug inside a first conn.transaction() block")
    if fail == "after_block":  # the block began the request's transaction; the error ends it
        async with conn.transaction():
            await conn.execute(INSERT, (item_id + 1,))
    await conn.execute(INSERT, (item_id,))
    if fail in ("raise", "after_block"):
        raise ValueError("a bug after the write")
    if fail == "http":
        raise HTTPException(409, "conflict after the write")
    if fail == "commit":
        await conn.commit()
    if fail == "defer":
        await conn.execute(ORPHAN, (item_id, -item_id))
    if fail == "conflict":
        await conn.execute(CONFLICT, (item_id,))
    if fail == "swallow":  # the endpoint "handles" an SQL error and returns normally
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            await conn.execute("SELECT 1 / 0")
    if fail == "lost":  # ... or the loss of its connection
        with contextlib.suppress(psycopg.OperationalError):
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    if fail == "cut":
        await conn.execute(SLOW_COMMIT, (item_id,))
        cut_during_commit(conn)


def write_sync(conn: Any, item_id: int, fail: str) -> None:
    if fail == "autocommit":
        conn.autocommit = True
    if fail == "block":
        with conn.transaction():
            conn.execute(INSERT, (item_id,))
            raise ValueError("a bug inside a first conn.transaction() block")
    if fail == "after_block":
        with conn.transaction():
            conn.execute(INSERT, (item_id + 1,))
    conn.execute(INSERT, (item_id,))
    if fail in ("raise", "after_block"):
        raise ValueError("a bug after the write")
    if fail == "http":
        raise HTTPException(409, "conflict after the write")
    if fail == "commit":
        conn.commit()
    if fail == "defer":
        conn.execute(ORPHAN, (item_id, -item_id))
    if fail == "conflict":
        conn.execute(CONFLICT, (item_id,))
    if fail == "swallow":
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
    if fail == "lost":
        with contextlib.suppress(psycopg.OperationalError):
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    if fail == "cut":
        conn.execute(SLOW_COMMIT, (item_id,))
        cut_during_commit(conn)


def cut_during_commit(conn: Any) -> None:
    """Cut the connection's socket CUT_AFTER s from now, while its COMMIT (slowed by a
    deferred trigger) waits for the server: the COMMIT was sent, and no answer ever comes."""
    fd = os.dup(conn.fileno())

    def cut() -> None:
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    threading.Timer(CUT_AFTER, cut).start()


_SPAWNED: set[Any] = set()  # tasks the endpoints start and never await


def spawn_behind(conn: Any, item_id: int, late: Late) -> None:
    """Start two tasks on conn and return: one holds the connection (pg_sleep), the other
    queues behind it for a write, which it gets only after the endpoint returned."""
    async def holding() -> None:
        with contextlib.suppress(psycopg.Error):  # the request's end may cancel it
            await conn.execute("SELECT pg_sleep(0.3)")

    for work in (holding(), late_write(conn, item_id, late)):
        task = asyncio.ensure_future(work)
        _SPAWNED.add(task)
        task.add_done_callback(_SPAWNED.discard)


def spawn_behind_sync(conn: Any, item_id: int, late: Late) -> None:
    """spawn_behind for a def endpoint: threads that carry the endpoint's context."""

    def holding() -> None:
        with contextlib.suppress(psycopg.Error):  # the request's end cancels it
            conn.execute("SELECT pg_sleep(0.3)")

    def queued() -> None:
        time.sleep(0.1)  # behind the pg_sleep
        late_write_sync(conn, item_id, late)

    for work in (holding, queued):
        threading.Thread(target=contextvars.copy_context().run, args=(work,)).start()


async def late_write(conn: Any, item_id: int, late: Late) -> None:
    try:
        await conn.execute(INSERT, (item_id,))
    except Exception as exc:
        late.record(item_id, exc)
        return
    late.record(item_id, None)


def late_write_sync(conn: Any, item_id: int, late: Late) -> None:
    try:
        conn.execute(INSERT, (item_id,))
    except Exception as exc:
        late.record(item_id, exc)
        return
    late.record(item_id, None)


async def state_of(conn: Any) -> dict[str, Any]:
    cur = await conn.execute("SELECT 1 AS one")
    row = await cur.fetchone()
    return {
        "row": type(row).__name__,
        "cursor": type(cur).__name__.removeprefix("Async"),
        "prepare_threshold": conn.prepare_threshold,
    }


def state_of_sync(conn: Any) -> dict[str, Any]:
    cur = conn.execute("SELECT 1 AS one")
    return {
        "row": type(cur.fetchone()).__name__,
        "cursor": type(cur).__name__,
        "prepare_threshold": conn.prepare_threshold,
    }


def dirty(conn: Any) -> None:
    conn.row_factory = dict_row
    conn.prepare_threshold = None
    conn.cursor_factory = AsyncClientCursor


def dirty_sync(conn: Any) -> None:
    dirty(conn)
    conn.cursor_factory = ClientCursor


# --- the faces ------------------------------------------------------------------------------


def depends_app(settings: PoolSettings, late: Late) -> ASGIApp:
    app = FastAPI(lifespan=create_pool_lifespan(settings))

    @app.post("/write/{item_id}")
    async def write_item(item_id: int, conn: ConnDep, fail: str = "") -> dict[str, int]:
        await write(conn, item_id, fail)
        return {"id": item_id}

    @app.post("/cancel/{item_id}")
    async def cancelled(item_id: int, conn: ConnDep) -> None:
        await conn.execute(INSERT, (item_id,))
        await asyncio.sleep(LATE)
        await late_write(conn, item_id + 1, late)

    @app.post("/after/{item_id}")
    async def after(item_id: int, conn: ConnDep, background: BackgroundTasks) -> None:
        await conn.execute("SELECT 1")
        background.add_task(late_write, conn, item_id, late)

    @app.post("/spawn/{item_id}")
    async def spawn(item_id: int, conn: ConnDep) -> None:
        await conn.execute("SELECT 1")
        spawn_behind(conn, item_id, late)
        await asyncio.sleep(0.05)  # the tasks start: the write waits behind the pg_sleep

    @app.get("/hold")
    async def hold(conn: ConnDep, seconds: float) -> dict[str, int]:
        await conn.execute("SELECT pg_sleep(%s)", (seconds,))
        return {"pid": conn.info.backend_pid}

    @app.get("/pids")
    async def pids(conn: ConnDep, read: ReadConnDep) -> dict[str, int]:
        return {"first": conn.info.backend_pid, "second": read.info.backend_pid}

    @app.post("/dirty")
    async def make_dirty(conn: ConnDep) -> None:
        dirty(conn)

    @app.get("/state")
    async def state(conn: ConnDep) -> dict[str, Any]:
        return await state_of(conn)

    return app


def def_app(settings: PoolSettings, late: Late) -> ASGIApp:
    app = FastAPI(lifespan=create_pool_lifespan(settings))

    @app.post("/write/{item_id}")
    def write_item(item_id: int, conn: SyncConnDep, fail: str = "") -> dict[str, int]:
        write_sync(conn, item_id, fail)
        return {"id": item_id}

    @app.post("/cancel/{item_id}")
    def cancelled(item_id: int, conn: SyncConnDep) -> None:
        conn.execute(INSERT, (item_id,))
        time.sleep(LATE)  # the request is cancelled meanwhile; this thread goes on
        late_write_sync(conn, item_id + 1, late)

    @app.post("/after/{item_id}")
    def after(item_id: int, conn: SyncConnDep, background: BackgroundTasks) -> None:
        conn.execute("SELECT 1")
        background.add_task(late_write_sync, conn, item_id, late)

    @app.post("/spawn/{item_id}")
    def spawn(item_id: int, conn: SyncConnDep) -> None:
        conn.execute("SELECT 1")
        spawn_behind_sync(conn, item_id, late)
        time.sleep(0.05)

    @app.get("/hold")
    def hold(conn: SyncConnDep, seconds: float) -> dict[str, int]:
        conn.execute("SELECT pg_sleep(%s)", (seconds,))
        return {"pid": conn.info.backend_pid}

    def other(conn: SyncConnDep) -> int:
        return conn.info.backend_pid

    @app.get("/pids")
    def pids(conn: SyncConnDep, pid: int = Depends(other)) -> dict[str, int]:
        return {"first": conn.info.backend_pid, "second": pid}

    @app.post("/dirty")
    def make_dirty(conn: SyncConnDep) -> None:
        dirty_sync(conn)

    @app.get("/state")
    def state(conn: SyncConnDep) -> dict[str, Any]:
        return state_of_sync(conn)

    return app


def starlette_app(settings: PoolSettings, late: Late) -> ASGIApp:
    async def write_item(request: StarletteRequest) -> Response:
        item_id = int(request.path_params["item_id"])
        async with connection(request) as conn:
            await write(conn, item_id, request.query_params.get("fail", ""))
        return JSONResponse({"id": item_id})

    async def cancelled(request: StarletteRequest) -> Response:
        item_id = int(request.path_params["item_id"])
        async with connection(request) as conn:
            await conn.execute(INSERT, (item_id,))
            await asyncio.sleep(LATE)
            await late_write(conn, item_id + 1, late)
        return JSONResponse(None)

    async def after(request: StarletteRequest) -> Response:
        item_id = int(request.path_params["item_id"])
        async with connection(request) as conn:
            await conn.execute("SELECT 1")
        return JSONResponse(None, background=BackgroundTask(late_write, conn, item_id, late))

    async def spawn(request: StarletteRequest) -> Response:
        item_id = int(request.path_params["item_id"])
        async with connection(request) as conn:
            await conn.execute("SELECT 1")
            spawn_behind(conn, item_id, late)
            await asyncio.sleep(0.05)
        return JSONResponse(None)

    async def hold(request: StarletteRequest) -> Response:
        async with connection(request) as conn:
            await conn.execute("SELECT pg_sleep(%s)", (float(request.query_params["seconds"]),))
        return JSONResponse({"pid": conn.info.backend_pid})

    async def pids(request: StarletteRequest) -> Response:
        async with connection(request, read=True) as read, connection(request) as conn:
            return JSONResponse({"first": conn.info.backend_pid, "second": read.info.backend_pid})

    async def make_dirty(request: StarletteRequest) -> Response:
        async with connection(request) as conn:
            dirty(conn)
        return JSONResponse(None)

    async def state(request: StarletteRequest) -> Response:
        async with connection(request) as conn:
            return JSONResponse(await state_of(conn))

    return Starlette(
        lifespan=create_pool_lifespan(settings),
        exception_handlers=dict(exception_handlers),
        routes=[
            Route("/write/{item_id}", write_item, methods=["POST"]),
            Route("/cancel/{item_id}", cancelled, methods=["POST"]),
            Route("/after/{item_id}", after, methods=["POST"]),
            Route("/spawn/{item_id}", spawn, methods=["POST"]),
            Route("/hold", hold),
            Route("/pids", pids),
            Route("/dirty", make_dirty, methods=["POST"]),
            Route("/state", state),
        ],
    )


def session_app(settings: PoolSettings, late: Late) -> ASGIApp:
    """Background work's face: transaction(database), opened and closed by the code itself."""
    app = FastAPI(lifespan=create_pool_lifespan(settings))

    def block(request: Request) -> AbstractAsyncContextManager[Any]:
        return transaction(database_of(request))

    @app.post("/write/{item_id}")
    async def write_item(request: Request, item_id: int, fail: str = "") -> dict[str, int]:
        async with block(request) as conn:
            await write(conn, item_id, fail)
        return {"id": item_id}

    @app.post("/cancel/{item_id}")
    async def cancelled(request: Request, item_id: int) -> None:
        async with block(request) as conn:
            await conn.execute(INSERT, (item_id,))
            await asyncio.sleep(LATE)
            await late_write(conn, item_id + 1, late)

    @app.post("/after/{item_id}")
    async def after(request: Request, item_id: int) -> None:
        async with block(request) as conn:
            await conn.execute("SELECT 1")
        await late_write(conn, item_id, late)  # after the block: the connection is given back

    @app.post("/spawn/{item_id}")
    async def spawn(request: Request, item_id: int) -> None:
        async with block(request) as conn:
            await conn.execute("SELECT 1")
            spawn_behind(conn, item_id, late)
            await asyncio.sleep(0.05)

    @app.get("/pids")
    async def pids(request: Request) -> dict[str, int]:
        # Blocks of one piece of work share a connection when they share leases.
        leases: Leases = {}
        database = database_of(request)
        async with transaction(database, leases=leases) as conn, autocommit(
            database, leases=leases
        ) as read:
            return {"first": conn.info.backend_pid, "second": read.info.backend_pid}

    @app.get("/hold")
    async def hold(request: Request, seconds: float) -> dict[str, int]:
        async with block(request) as conn:
            await conn.execute("SELECT pg_sleep(%s)", (seconds,))
            return {"pid": conn.info.backend_pid}

    @app.post("/dirty")
    async def make_dirty(request: Request) -> None:
        async with block(request) as conn:
            dirty(conn)

    @app.get("/state")
    async def state(request: Request) -> dict[str, Any]:
        async with block(request) as conn:
            return await state_of(conn)

    return app


BUILDERS: dict[str, Callable[[PoolSettings, Late], ASGIApp]] = {
    "depends": depends_app,
    "def": def_app,
    "starlette": starlette_app,
    "session": session_app,
}


# --- the harness ----------------------------------------------------------------------------


class Face:
    """One face's app, started, with what its middleware saw."""

    def __init__(self, name: str, client: TestClient, url: str, app_name: str) -> None:
        self.name = name
        self.client = client
        self.url = url
        self.app_name = app_name
        self.seen: dict[int, bool] = {}
        self.late = Late()


_REPORT: dict[str, dict[str, str]] = {}


def measured(guarantee: str, face: str, figure: str) -> None:
    """The figure for the matrix's cell (written out when DBPOOL_CONFORMANCE_REPORT names a
    file; docs/reliability.md prints them)."""
    _REPORT.setdefault(guarantee, {})[face] = figure
    target = os.environ.get("DBPOOL_CONFORMANCE_REPORT")
    if target:
        Path(target).write_text(json.dumps(_REPORT, indent=1, sort_keys=True))


@pytest.fixture(params=FACES)
def face(
    request: pytest.FixtureRequest, make_settings: SettingsFactory, unique_app_name: str
) -> Iterator[Face]:
    settings = make_settings(min_size=1, max_size=1, timeout=0.5)
    late = Late()
    seen: dict[int, bool] = {}
    inner = BUILDERS[request.param](settings, late)
    app = CancelAfter(VisibleAtResponse(inner, settings.conninfo(), seen))
    with TestClient(app, raise_server_exceptions=False) as client:
        started = Face(request.param, client, settings.conninfo(), unique_app_name)
        started.seen, started.late = seen, late
        yield started


def app_names(face: Face) -> list[str]:
    """The application_names of the face's backends (a def endpoint's pool adds ':sync')."""
    return [face.app_name, f"{face.app_name[:58]}:sync"]


def backends_settle(observer: Observer, face: Face) -> list[str]:
    """The states of the face's backends once nothing runs (idle, never idle in transaction)."""
    deadline = time.monotonic() + 5
    while True:
        states = [
            str(backend["state"])
            for name in app_names(face)
            for backend in observer.backends(name)
        ]
        if all(state == "idle" for state in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.05)


# --- the guarantees -------------------------------------------------------------------------


def test_commit_before_the_response(face: Face) -> None:
    item = new_id()
    response = face.client.post(f"/write/{item}", headers={"x-item": str(item)})
    assert response.status_code == 200
    assert face.seen[item] is True  # committed when the response started
    measured("commit_before_response", face.name, "visible at response start")


@pytest.mark.parametrize("fail, status", [("raise", 500), ("http", 409)])
def test_rollback_on_error(face: Face, fail: str, status: int) -> None:
    item = new_id()
    response = face.client.post(f"/write/{item}", params={"fail": fail})
    assert response.status_code == status
    assert not row_exists(face.url, "items", item)
    measured(f"rollback_on_error_{fail}", face.name, f"{status}, row absent")


def test_commit_call_refused_and_rolled_back(face: Face) -> None:
    item = new_id()
    response = face.client.post(f"/write/{item}", params={"fail": "commit"})
    assert response.status_code == 500
    assert not row_exists(face.url, "items", item)
    measured("commit_refused", face.name, "500, row absent")


def test_a_failed_commit_is_never_a_200(face: Face) -> None:
    item = new_id()
    response = face.client.post(f"/write/{item}", params={"fail": "defer"})
    assert response.status_code == 500
    assert "commit failed" in response.text
    assert not row_exists(face.url, "items", item)
    measured("truthful_commit", face.name, "500, row absent")


def test_rollback_on_cancellation_and_nothing_after(face: Face, observer: Observer) -> None:
    item = new_id()
    started = time.monotonic()
    response = face.client.post(f"/cancel/{item}", headers={"x-cancel": "1"})
    took = time.monotonic() - started
    assert response.status_code == 504
    assert took < CANCEL_AFTER + 1.0
    if face.name == "def":
        # The endpoint's thread outlives its request: its later write must be refused.
        assert face.late.done.wait(LATE + 2), "the cancelled endpoint's thread never wrote"
        assert face.late.errors[item + 1] == ConnectionReleased.__name__
    else:  # a cancelled coroutine never reaches its later write
        time.sleep(LATE - CANCEL_AFTER + 0.2)
        assert item + 1 not in face.late.errors
    assert set(backends_settle(observer, face)) <= {"idle"}
    assert not row_exists(face.url, "items", item)
    assert not row_exists(face.url, "items", item + 1)
    # The connection serves the next request cleanly: its transaction holds only its own row.
    after = new_id()
    assert face.client.post(f"/write/{after}").status_code == 200
    assert row_exists(face.url, "items", after)
    assert not row_exists(face.url, "items", item + 1)
    measured("rollback_on_cancel", face.name, f"504 at {took:.2f} s, rows absent, idle")


def test_nothing_runs_on_a_connection_after_it_was_given_back(
    face: Face, observer: Observer
) -> None:
    item = new_id()
    response = face.client.post(f"/after/{item}")
    assert response.status_code == 200
    assert face.late.done.wait(3), "the code after the request never ran"
    assert face.late.errors[item] == ConnectionReleased.__name__
    assert not row_exists(face.url, "items", item)
    assert set(backends_settle(observer, face)) <= {"idle"}
    measured("nothing_after_return", face.name, "ConnectionReleased, row absent")


def test_503_under_exhaustion_within_the_timeout(face: Face) -> None:
    with ThreadPoolExecutor(1) as executor:
        holder = executor.submit(face.client.get, "/hold", params={"seconds": 1.5})
        time.sleep(0.4)
        started = time.monotonic()
        response = face.client.get("/hold", params={"seconds": 0})
        took = time.monotonic() - started
        assert holder.result().status_code == 200
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert took < 0.5 + 1.0  # DBPOOL_TIMEOUT + 1 s
    measured("exhaustion_503", face.name, f"503 + Retry-After at {took:.2f} s")


def test_one_connection_per_request(face: Face) -> None:
    pids = face.client.get("/pids")
    assert pids.status_code == 200, pids.text
    assert pids.json()["first"] == pids.json()["second"]
    measured("one_connection", face.name, "one backend for two uses")


def test_what_an_endpoint_changes_on_the_connection_is_put_back(face: Face) -> None:
    before = face.client.get("/state").json()
    assert face.client.post("/dirty").status_code == 200
    after = face.client.get("/state").json()  # max_size=1: the same connection
    assert after == before
    assert after["prepare_threshold"] is not None
    measured("state_restored", face.name, f"row {after['row']}, prepare_threshold restored")


def test_def_requests_cancelled_while_their_connection_is_made_lose_none(
    make_settings: SettingsFactory, database_server: DatabaseServer
) -> None:
    """Cancelled while the sync pool's thread waits for getconn: the connection that thread
    gets afterwards goes back to the pool (it used to stay lent for good)."""
    slow = {"on": True}

    def token() -> str:  # the sync pool's connections take 0.8 s to make while slow
        if slow["on"]:
            time.sleep(0.8)
        return database_server.password or ""

    settings = make_settings(
        url=url_without_password(database_server.url),
        password_provider=token,
        min_size=1,
        max_size=2,
        timeout=3.0,
    )
    slow["on"] = False  # the async pool opens quickly
    app = FastAPI(lifespan=create_pool_lifespan(settings))
    app.include_router(pool_router)

    @app.get("/sync")
    def sync_hold(conn: SyncConnDep) -> dict[str, int]:
        return {"pid": conn.info.backend_pid}

    with TestClient(CancelAfter(app), raise_server_exceptions=False) as client:
        slow["on"] = True
        with ThreadPoolExecutor(2) as executor:
            cancelled = [
                executor.submit(client.get, "/sync", headers={"x-cancel": "1"}) for _ in range(2)
            ]
            assert [answer.result().status_code for answer in cancelled] == [504, 504]
        slow["on"] = False
        time.sleep(1.0)  # the threads got their connections meanwhile
        answers = [client.get("/sync").status_code for _ in range(3)]
        stats = client.get("/pool/stats").json()
    assert answers == [200, 200, 200]
    assert stats["pools"][f"{settings.name}:sync"]["in_use"] == 0


@pytest.mark.parametrize("name", FACES)
def test_a_statement_on_a_frozen_path_answers_504_at_the_deadline(
    name: str, make_settings: SettingsFactory, database_server: DatabaseServer
) -> None:
    """DBPOOL_DEADLINE on every face: the network path goes silent (no reset, so neither
    keepalives nor tcp_user_timeout fire) while a statement waits; the answer comes at the
    deadline, nothing is committed, and the next request is served."""
    with fault_proxy(database_server.url) as proxy:
        settings = make_settings(url=proxy.url, min_size=1, max_size=2, deadline=1.0)
        app = BUILDERS[name](settings, Late())
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.post(f"/write/{new_id()}").status_code == 200  # the path works
            item = new_id()
            proxy.freeze()
            try:
                started = time.monotonic()
                response = client.post(f"/write/{item}")
                took = time.monotonic() - started
            finally:
                proxy.thaw()
            assert response.status_code == 504
            assert "DBPOOL_DEADLINE" in response.text
            assert took < 1.0 + 1.0
            assert not row_exists(database_server.url, "items", item)
            assert client.post(f"/write/{new_id()}").status_code == 200
    measured("deadline_504", name, f"504 at {took:.2f} s (deadline 1 s)")


def test_work_that_borrows_again_in_one_context_keeps_its_connection(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A background loop borrows the same connection again and again in one context: the
    pool's check at checkout (check=always) runs on it and must not take the loop's ended
    claim for a stale use (it used to throw every good connection away)."""

    async def loop() -> list[int]:
        database = DatabasePool(make_settings(min_size=1, max_size=1, check="always"))
        await database.open()
        pids = []
        try:
            for _ in range(3):
                async with transaction(database) as conn:
                    cur = await conn.execute("SELECT pg_backend_pid()")
                    row = await cur.fetchone()
                    pids.append(row[0] if row else 0)
        finally:
            await database.close()
        return pids

    caplog.set_level(logging.INFO, logger="psycopg.pool")
    pids = asyncio.run(loop())
    assert len(set(pids)) == 1, pids  # one backend throughout
    assert "discarding" not in caplog.text and "failed check" not in caplog.text


def test_set_autocommit_true_is_refused_inside_the_requests_transaction(face: Face) -> None:
    item = new_id()
    response = face.client.post(f"/write/{item}", params={"fail": "autocommit"})
    assert response.status_code == 500
    assert not row_exists(face.url, "items", item)  # its INSERT never ran, let alone committed
    measured("autocommit_refused", face.name, "500, row absent")


def test_an_error_in_a_first_transaction_block_reaches_the_endpoint(face: Face) -> None:
    """The first block is the request's transaction: its error rolls it back and goes on
    raising (it is not swallowed as a savepoint's would be by psycopg.Rollback)."""
    item = new_id()
    response = face.client.post(f"/write/{item}", params={"fail": "block"})
    assert response.status_code == 500
    assert not row_exists(face.url, "items", item)
    after = new_id()  # the connection is clean for the next request
    assert face.client.post(f"/write/{after}").status_code == 200
    assert row_exists(face.url, "items", after)
    measured("first_block_error", face.name, "500, row absent, next request 200")


def test_a_server_error_at_commit_on_a_live_connection_is_a_500_not_a_503(face: Face) -> None:
    """A serialization failure is an OperationalError, but the connection is fine: the
    answer is a failed commit, not "database unavailable" with a Retry-After."""
    item = new_id()
    response = face.client.post(f"/write/{item}", params={"fail": "conflict"})
    assert response.status_code == 500
    assert "commit failed" in response.text
    assert "retry-after" not in response.headers
    assert not row_exists(face.url, "items", item)
    measured("live_commit_error", face.name, "500 commit failed, row absent")


def test_a_commit_lost_with_no_answer_is_a_500_outcome_unknown(
    face: Face, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection is cut while COMMIT waits for its answer: the server may have
    committed, so 500 without Retry-After (never a 503 a client retries blindly), and the
    pool's healer hears of it (the async pools have one; the sync pool of def endpoints
    does not)."""
    told: list[str] = []
    real = Healer.lost_connection

    def spy(self: Healer) -> None:
        told.append("lost")
        real(self)

    monkeypatch.setattr(Healer, "lost_connection", spy)
    item = new_id()
    response = face.client.post(f"/write/{item}", params={"fail": "cut"})
    assert response.status_code == 500
    assert "outcome unknown" in response.text
    assert "retry-after" not in response.headers
    if face.name != "def":
        assert told, "the healer was not told of the lost connection"
    after = new_id()  # the pool replaced the lost connection
    assert face.client.post(f"/write/{after}").status_code == 200
    healer = "healer told" if face.name != "def" else "no healer (sync pool)"
    measured("lost_commit", face.name, f"500 outcome unknown, {healer}")


def test_a_cancel_that_reaches_the_exit_too_still_rolls_back_and_returns(
    face: Face, observer: Observer
) -> None:
    """anyio's cancellation (a cancel scope, as a task group or move_on_after) cancels every
    await inside it, the session's exit included: the exit is shielded, so the rollback and
    the return of the connection still happen, and the connection is lent again (unshielded,
    psycopg would close it when the cancellation interrupts the rollback)."""
    before = face.client.get("/hold", params={"seconds": 0}).json()["pid"]
    item = new_id()
    started = time.monotonic()
    response = face.client.post(f"/cancel/{item}", headers={"x-cancel": "scope"})
    took = time.monotonic() - started
    if face.name == "def":
        # A def endpoint's thread cannot be cancelled by a scope (anyio waits for it): the
        # request runs to its end, and its answer says what happened.
        assert response.status_code == 200
        assert row_exists(face.url, "items", item)
        assert row_exists(face.url, "items", item + 1)
        cell = f"not cancellable: 200 at {took:.2f} s, rows committed"
    else:
        assert response.status_code == 504
        assert took < LATE + 1.0
        time.sleep(LATE - CANCEL_AFTER + 0.2)
        assert not row_exists(face.url, "items", item)
        assert not row_exists(face.url, "items", item + 1)
        cell = f"504 at {took:.2f} s, rows absent, idle"
    assert set(backends_settle(observer, face)) <= {"idle"}
    after = new_id()  # max_size=1: the connection came back
    assert face.client.post(f"/write/{after}").status_code == 200
    assert row_exists(face.url, "items", after)
    assert face.client.get("/hold", params={"seconds": 0}).json()["pid"] == before
    measured("rollback_on_scope_cancel", face.name, f"{cell}, same backend")


def test_a_cancel_during_a_statement_stops_it(face: Face, observer: Observer) -> None:
    """Cancelled while its statement runs (pg_sleep(3)): the statement is cancelled on the
    server, the answer does not wait for it, and the connection serves the next request."""
    started = time.monotonic()
    response = face.client.get("/hold", params={"seconds": 3}, headers={"x-cancel": "1"})
    took = time.monotonic() - started
    assert response.status_code == 504
    assert took < CANCEL_AFTER + 1.5
    assert set(backends_settle(observer, face)) <= {"idle"}
    after = new_id()
    assert face.client.post(f"/write/{after}").status_code == 200
    measured("cancel_in_statement", face.name, f"504 at {took:.2f} s, statement stopped")


def test_an_error_after_a_first_block_rolls_back_and_keeps_the_connection(face: Face) -> None:
    """A first conn.transaction() block began the request's transaction, which an error after
    the block ends: the session rolls it back itself, so the pool gets the connection back
    idle and lends the same backend again (a connection left in its transaction would be
    discarded by the pool)."""
    before = face.client.get("/hold", params={"seconds": 0}).json()["pid"]
    item = new_id()
    response = face.client.post(f"/write/{item}", params={"fail": "after_block"})
    assert response.status_code == 500
    assert not row_exists(face.url, "items", item)
    assert not row_exists(face.url, "items", item + 1)
    after = face.client.get("/hold", params={"seconds": 0}).json()["pid"]
    assert after == before  # max_size=1: the same backend, rolled back, not replaced
    measured("rollback_after_first_block", face.name, "500, rows absent, same backend")


def test_a_task_the_endpoint_left_running_cannot_write_once_it_returned(
    face: Face, observer: Observer
) -> None:
    """A task (or a thread carrying the request's context) that waits for the connection while
    the request ends gets ConnectionReleased: its write reaches neither the request's
    transaction, committed a moment later, nor the connection's next borrower."""
    item = new_id()
    response = face.client.post(f"/spawn/{item}")
    if face.name == "def":
        # The def face cancels a statement still running when its request ends (if the
        # holding thread's pg_sleep started in time): the request's transaction failed with
        # it, and the answer says so; else the pg_sleep was refused too, and the commit is a
        # 200. Either way the answer is true.
        assert response.status_code in (200, 500)
        if response.status_code == 500:
            assert "commit failed" in response.text
    else:  # the async faces wait for it, then commit
        assert response.status_code == 200
    assert face.late.done.wait(3), "the queued write never ran"
    assert face.late.errors[item] == ConnectionReleased.__name__
    assert not row_exists(face.url, "items", item)
    assert set(backends_settle(observer, face)) <= {"idle"}
    answer = {200: "200", 500: "500 (its statement cancelled)"}[response.status_code]
    measured("nothing_after_return_queued", face.name, f"{answer}, ConnectionReleased, row absent")


def test_a_swallowed_sql_error_is_never_a_200(face: Face) -> None:
    """COMMIT of a transaction an SQL error aborted is a silent ROLLBACK: the endpoint that
    caught the error and returned gets a 500, not a 200 for writes that vanished."""
    item = new_id()
    response = face.client.post(f"/write/{item}", params={"fail": "swallow"})
    assert response.status_code == 500
    assert "commit failed" in response.text
    assert not row_exists(face.url, "items", item)
    measured("swallowed_sql_error", face.name, "500, row absent")


def test_a_swallowed_lost_connection_is_a_503_not_a_200(face: Face) -> None:
    """The connection died under an endpoint that caught the error: nothing was committed, so
    503 with Retry-After (safe to retry), and the pool serves the next request."""
    item = new_id()
    response = face.client.post(f"/write/{item}", params={"fail": "lost"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert not row_exists(face.url, "items", item)
    after = new_id()
    assert face.client.post(f"/write/{after}").status_code == 200
    measured("swallowed_lost_connection", face.name, "503 + Retry-After, row absent")
