"""What the pool set on a connection object, and putting it back after a borrower changed it.

psycopg-pool does not undo what a borrower sets on a connection (``conn.row_factory =
dict_row`` stays for the next request that draws it). Baseline records the pool's values when
the connection is made and restores them when it is given back: attribute reads and writes,
no round trip. Session-level ``SET``s live on the server: see DBPOOL_RESET_SESSION.
"""

from time import monotonic
from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg.adapt import AdaptersMap, PyFormat

from fastapi_dbpool.connection import switch_autocommit

Conn = AsyncConnection[Any] | Connection[Any]  # the sync pool of get_sync_conn keeps one too

_AUTO, _TEXT, _BINARY = PyFormat.AUTO, PyFormat.TEXT, PyFormat.BINARY

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
        "handlers",
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
        self.handlers = _handler_counts(conn)

    async def restore(self, conn: AsyncConnection[Any]) -> None:
        """Put back whatever differs from the baseline (the connection must be idle)."""
        self._restore_attributes(conn)
        # The transaction characteristics: async setters, awaited only when changed.
        if conn.autocommit is not self.autocommit:
            await switch_autocommit(conn, self.autocommit)
        if conn.isolation_level is not self.isolation_level:
            await conn.set_isolation_level(self.isolation_level)
        if conn.read_only is not self.read_only:
            await conn.set_read_only(self.read_only)
        if conn.deferrable is not self.deferrable:
            await conn.set_deferrable(self.deferrable)

    def restore_sync(self, conn: Connection[Any]) -> None:
        """restore() for a connection of the sync pool (get_sync_conn)."""
        self._restore_attributes(conn)
        if conn.autocommit is not self.autocommit:
            conn.set_autocommit(self.autocommit)
        if conn.isolation_level is not self.isolation_level:
            conn.set_isolation_level(self.isolation_level)
        if conn.read_only is not self.read_only:
            conn.set_read_only(self.read_only)
        if conn.deferrable is not self.deferrable:
            conn.set_deferrable(self.deferrable)

    def _restore_attributes(self, conn: Conn) -> None:
        row_factory, cursor_factory, server_cursor_factory, threshold, prepared_max = self.values
        if conn.row_factory is not row_factory:
            conn.row_factory = row_factory
        if conn.cursor_factory is not cursor_factory:
            conn.cursor_factory = cursor_factory
        if conn.server_cursor_factory is not server_cursor_factory:
            conn.server_cursor_factory = server_cursor_factory
        if conn.prepare_threshold != threshold:
            conn.prepare_threshold = threshold
        if conn.prepared_max != prepared_max:
            conn.prepared_max = prepared_max
        if _changed(conn, self.adapters):
            _lend_adapters(conn, self.adapters)
        if _handler_counts(conn) != self.handlers:
            _drop_added_handlers(conn, self.handlers)


def _lend_adapters(conn: Conn, template: AdaptersMap) -> None:
    # psycopg keeps a connection's adapters in _adapters (read-only property `adapters`).
    conn._adapters = AdaptersMap(template)


def _changed(conn: Conn, template: AdaptersMap) -> bool:
    """Whether a loader, dumper or type was registered on the connection's adapters.

    A map made from a template shares the template's tables until something is registered on
    it, which copies the table first (copy-on-write): a table that is not the template's own
    object any more was written to. Spelled out, not looped: this runs on every return."""
    adapters = conn._adapters
    if adapters is None:
        return False
    try:
        loaders, dumpers, by_oid = adapters._loaders, adapters._dumpers, adapters._dumpers_by_oid
        base_loaders, base_dumpers = template._loaders, template._dumpers
        base_by_oid = template._dumpers_by_oid
        return not (
            adapters.types._registry is template.types._registry
            and loaders[0] is base_loaders[0]
            and loaders[1] is base_loaders[1]
            and by_oid[0] is base_by_oid[0]
            and by_oid[1] is base_by_oid[1]
            and dumpers[_AUTO] is base_dumpers[_AUTO]
            and dumpers[_TEXT] is base_dumpers[_TEXT]
            and dumpers[_BINARY] is base_dumpers[_BINARY]
        )
    except (AttributeError, KeyError, IndexError):  # other internals: replace it, to be safe
        return True


def _handler_counts(conn: Conn) -> tuple[int, int]:
    """How many notice and notify handlers the connection has (add_notice_handler, ...)."""
    try:
        return len(conn._notice_handlers), len(conn._notify_handlers)
    except AttributeError:  # another psycopg's internals: nothing to compare
        return (0, 0)


def _drop_added_handlers(conn: Conn, counts: tuple[int, int]) -> None:
    """Remove the handlers a borrower added, keeping the pool's own."""
    try:
        del conn._notice_handlers[counts[0] :]
        del conn._notify_handlers[counts[1] :]
    except AttributeError:
        pass
