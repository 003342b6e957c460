"""A TCP proxy on 127.0.0.1 between an app and PostgreSQL, with faults switched on at will.

It runs its own event loop in a thread, so the app under test (a TestClient's, or another
process) sees a real socket. Faults:

- ``freeze()``: stop forwarding in both directions, keeping every socket open (a network path
  that goes silent without a reset; the kernel still acknowledges, so TCP keepalives and
  tcp_user_timeout do not fire);
- ``lose_commit_answer()``: forward the next ``COMMIT`` to the server, let the server execute
  it, then drop its answer and reset that connection (the outcome reaches no one);
- ``thaw()``: forward again.
"""

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from fastapi_dbpool.testing._server import free_port

_COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-query message psycopg sends for commit()


class FaultProxy:
    """Forwards 127.0.0.1:port to the server of target_url; see the module for the faults."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._target_url = target_url
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._flowing = asyncio.Event()
        self._lose_commit = False
        self.commits_lost = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """target_url, pointed at the proxy."""
        parts = urlsplit(self._target_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def freeze(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def thaw(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def lose_commit_answer(self) -> None:
        self._lose_commit = True

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.transport.abort()
            return
        state = {"commit_sent": False}
        up = asyncio.ensure_future(self._pipe(client_r, server_w, client_w, state, upstream=True))
        down = asyncio.ensure_future(
            self._pipe(server_r, client_w, server_w, state, upstream=False)
        )
        self._pipes |= {up, down}
        up.add_done_callback(self._pipes.discard)
        down.add_done_callback(self._pipes.discard)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
        state: dict[str, bool],
        upstream: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                if upstream and self._lose_commit and _COMMIT in data:
                    self._lose_commit = False
                    state["commit_sent"] = True
                elif not upstream and state["commit_sent"]:
                    # The server answered the COMMIT: it is done. Nobody hears it.
                    self.commits_lost += 1
                    writer.transport.abort()
                    other.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()


@contextmanager
def fault_proxy(target_url: str) -> Iterator[FaultProxy]:
    """A started FaultProxy, stopped (every socket closed) after the block."""
    proxy = FaultProxy(target_url)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
