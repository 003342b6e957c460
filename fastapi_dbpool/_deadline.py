"""DBPOOL_DEADLINE: a statement that waits for the server past it has its connection cut.

One sweep for the async pools and the sync pool of ``def`` endpoints: the socket of every
lent connection whose statement still waits past the deadline is shut down under libpq, so
the waiting call fails at once, whatever the network does (no cancel request: it could wait
on the same frozen path). The request's answer is then 504 (``errors.translate`` looks the
connection up in ``cut``).
"""

import asyncio
import logging
import socket
from collections.abc import Mapping, MutableSet
from time import monotonic
from typing import Any

from psycopg import BaseConnection
from psycopg.pq import TransactionStatus

logger = logging.getLogger("fastapi_dbpool")

_ACTIVE = TransactionStatus.ACTIVE


async def enforce(
    name: str,
    variable: str,
    deadline: float,
    lent: Mapping[Any, float],
    cut: MutableSet[Any],
) -> None:
    """Cut, until cancelled, each connection of lent (connection -> lent since) whose
    statement has waited past deadline seconds; name and variable are for the log line."""
    period = min(1.0, deadline / 10)
    while True:
        await asyncio.sleep(period)
        now = monotonic()
        for conn, since in list(lent.items()):
            if (
                now - since >= deadline
                and conn not in cut
                and not conn.closed
                and conn.pgconn.transaction_status == _ACTIVE
            ):
                cut.add(conn)
                logger.warning(
                    "pool %r: a statement has waited for the server past %s (%s s): "
                    "cutting its connection",
                    name,
                    variable,
                    deadline,
                )
                shut_down(conn)


def shut_down(conn: BaseConnection[Any]) -> None:
    """Shut the connection's socket down under libpq: its next read sees the end at once."""
    try:
        sock = socket.socket(fileno=conn.pgconn.socket)
    except (OSError, ValueError):
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()  # the descriptor stays libpq's
