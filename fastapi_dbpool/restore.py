"""What the pool set on a connection object, and putting it back after a borrower changed it.

psycopg-pool does not undo what a borrower sets on a connection (``conn.row_factory =
dict_row`` stays for the next request that draws it). Baseline records the pool's values when
the connection is made and restores them when it is given back: attribute reads and writes,
no round trip. Session-level ``SET``s live on the server: see DBPOOL_RESET_SESSION.
"""

from time import monotonic
from typing import Any

from psycopg import AsyncConnection
from psycopg.adapt import AdaptersMap

Conn = AsyncConnection[Any]

# Plain attributes, restored by assignment.
_ATTRIBUTES = (
    "row_factory",
    "cursor_factory",
    "server_cursor_factory",
    "prepare_threshold",
    "prepared_max",
)


class Baseline:
    """A connection's settings as the pool made it, and when it was last given back."""

    __slots__ = (
        "adapters",
        "autocommit",
        "deferrable",
        "idle_since",
        "isolation_level",
        "read_only",
        "values",
    )

    def __init__(self, conn: Conn) -> None:
        self.idle_since = monotonic()
        self.values = tuple(getattr(conn, name) for name in _ATTRIBUTES)
        self.autocommit = conn.autocommit
        self.isolation_level = conn.isolation_level
        self.read_only = conn.read_only
        self.deferrable = conn.deferrable
        # The borrower gets a copy-on-write child of the configured adapters: registering a
        # loader on it marks it as its own, and a fresh child replaces it on return.
        self.adapters = conn.adapters
        _lend_adapters(conn, self.adapters)

    async def restore(self, conn: Conn) -> None:
        """Put back whatever differs from the baseline (the connection must be idle)."""
        for name, value in zip(_ATTRIBUTES, self.values, strict=True):
            if getattr(conn, name) is not value:
                setattr(conn, name, value)
        if conn.autocommit != self.autocommit:
            await conn.set_autocommit(self.autocommit)
        if conn.isolation_level != self.isolation_level:
            await conn.set_isolation_level(self.isolation_level)
        if conn.read_only != self.read_only:
            await conn.set_read_only(self.read_only)
        if conn.deferrable != self.deferrable:
            await conn.set_deferrable(self.deferrable)
        if _changed(conn):
            _lend_adapters(conn, self.adapters)


def _lend_adapters(conn: Conn, template: AdaptersMap) -> None:
    # psycopg keeps a connection's adapters in _adapters (read-only property `adapters`).
    conn._adapters = AdaptersMap(template)


def _changed(conn: Conn) -> bool:
    """Whether a loader, dumper or type was registered on the connection's own adapters."""
    adapters = conn._adapters
    if adapters is None:
        return False
    try:
        return (
            any(adapters._own_loaders)
            or any(adapters._own_dumpers_by_oid)
            or any(adapters._own_dumpers.values())
            or adapters.types._own_state
        )
    except AttributeError:  # another psycopg's internals: replace it every time, to be safe
        return True
