"""Run an ASGI app's lifespan in the test's own event loop, and an async client on the app.

httpx's ASGITransport sends requests only: it never runs the lifespan, so the pool would
never open. This runs the ASGI lifespan protocol itself (as Starlette's TestClient does in
a thread) and hands every request the state the lifespan yielded.
"""

import math
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:  # httpx2 comes with the testing extra: imported when a client is made
    import httpx2

BASE_URL = "http://testserver"


class LifespanFailed(RuntimeError):
    """The app reported lifespan.startup.failed or lifespan.shutdown.failed."""


class _WithState:
    """The app, with a copy of the lifespan's state in every request's scope."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(self.state)}
        await self.app(scope, receive, send)


@asynccontextmanager
async def running_lifespan(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """Start the app (lifespan.startup), yield the state it set, shut it down on exit.

    An exception the app raises at startup or shutdown is re-raised as is, not wrapped in a
    group, so a test sees the same PoolStartupError a server would log.
    """
    state: dict[str, Any] = {}
    to_app: tuple[
        MemoryObjectSendStream[MutableMapping[str, Any]],
        MemoryObjectReceiveStream[MutableMapping[str, Any]],
    ] = anyio.create_memory_object_stream(math.inf)
    from_app: tuple[
        MemoryObjectSendStream[Message | None], MemoryObjectReceiveStream[Message | None]
    ] = anyio.create_memory_object_stream(math.inf)
    (to_app_tx, to_app_rx), (from_app_tx, from_app_rx) = to_app, from_app
    raised: list[BaseException] = []

    async def run() -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
        try:
            await app(scope, to_app_rx.receive, from_app_tx.send)
        except BaseException as exc:  # handed to the caller below, unwrapped
            raised.append(exc)
        finally:
            from_app_tx.send_nowait(None)

    async def expect(event: str) -> None:
        message = await from_app_rx.receive()
        if message is None:
            if raised:
                raise raised[0]
            raise LifespanFailed(f"the app returned before lifespan.{event}.complete")
        if message["type"] == f"lifespan.{event}.failed":
            if raised:
                raise raised[0]
            raise LifespanFailed(message.get("message") or f"lifespan.{event}.failed")

    failure: BaseException | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(run)
        try:
            await to_app_tx.send({"type": "lifespan.startup"})
            await expect("startup")
            try:
                yield state
            finally:
                await to_app_tx.send({"type": "lifespan.shutdown"})
                await expect("shutdown")
        except BaseException as exc:  # re-raised below, outside the group that would wrap it
            failure = exc
    if failure is not None:
        raise failure


@asynccontextmanager
async def lifespan_client(
    app: ASGIApp, base_url: str = BASE_URL
) -> AsyncIterator["httpx2.AsyncClient"]:
    """An httpx2.AsyncClient on the app, with its lifespan running around it."""
    import httpx2

    async with running_lifespan(app) as state:
        transport = httpx2.ASGITransport(app=_WithState(app, state))
        async with httpx2.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client
