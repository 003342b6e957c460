"""Draining on deploy: on SIGTERM, stop being ready before stopping serving.

With DBPOOL_DRAIN_SECONDS, the first SIGTERM turns ``/health/ready`` to 503 at once (a load
balancer or Kubernetes takes the instance out of rotation), the app keeps serving in-flight
and new requests for that many seconds, then the server's own SIGTERM handling runs (uvicorn
finishes what is in flight and the lifespan closes the pools). A second SIGTERM does not wait.
"""

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("fastapi_dbpool")

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class Drain:
    """The readiness of one app, and the SIGTERM hook that drains it."""

    def __init__(self) -> None:
        self.draining = False
        self._previous: Handler = None
        self._installed = False

    def install(self, seconds: float) -> None:
        """Hook SIGTERM (main thread only: signals cannot be caught elsewhere)."""
        if seconds <= 0 or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if self.draining:  # a second SIGTERM: no more waiting
                _forward(previous, signum, frame)
                return
            self.draining = True
            logger.warning(
                "SIGTERM: /health/ready answers 503 now; serving for %s s more "
                "(DBPOOL_DRAIN_SECONDS) before shutting down",
                seconds,
            )
            loop.call_soon_threadsafe(loop.call_later, seconds, _forward, previous, signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
        self._previous, self._installed = previous, True

    def uninstall(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


def _forward(previous: Handler, signum: int, frame: FrameType | None) -> None:
    """Hand the signal to whoever had it before (uvicorn's handle_exit, or the default)."""
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
