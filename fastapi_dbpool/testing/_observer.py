"""Observer: a superuser connection outside the pool, reading pg_stat_activity."""

import time
from typing import Any, TypeVar

import psycopg
from psycopg.rows import RowFactory, dict_row, tuple_row

Row = TypeVar("Row")

_BACKENDS = """
    SELECT pid, state, backend_start, xact_start, query
    FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND application_name = %s
"""


class Observer:
    """What the server really holds, by application_name; reconnects after a restart."""

    def __init__(self, admin_url: str) -> None:
        self._url = admin_url
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def __repr__(self) -> str:
        return "<Observer>"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run a statement in autocommit and return its rows (empty if it has none)."""
        return self._query(sql, params, tuple_row)

    def backends(self, application_name: str) -> list[dict[str, Any]]:
        """The client backends with this application_name, one dict per backend."""
        return self._query(_BACKENDS, (application_name,), dict_row)

    def count(self, application_name: str, state: str | None = None) -> int:
        """How many backends have this application_name (and state, if given)."""
        return sum(
            1
            for backend in self.backends(application_name)
            if state is None or backend["state"] == state
        )

    def wait_for_count(self, application_name: str, expected: int, timeout: float = 5.0) -> int:
        """Poll every 20 ms until the count is expected or timeout passes; the last count."""
        deadline = time.monotonic() + timeout
        while True:
            count = self.count(application_name)
            if count == expected or time.monotonic() >= deadline:
                return count
            time.sleep(0.02)

    def terminate(self, application_name: str, state: str | None = None) -> int:
        """pg_terminate_backend on those backends; how many were terminated."""
        pids = [
            backend["pid"]
            for backend in self.backends(application_name)
            if state is None or backend["state"] == state
        ]
        for pid in pids:
            self._query("SELECT pg_terminate_backend(%s)", (pid,), tuple_row)
        return len(pids)

    def _query(self, sql: str, params: Any, row_factory: RowFactory[Row]) -> list[Row]:
        for attempt in range(2):
            conn = self._connection()
            try:
                with conn.cursor(row_factory=row_factory) as cur:
                    cur.execute(sql, params)
                    return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                # Retry only on a connection lost to a restart; a real error (or a second
                # loss) is the caller's to see.
                if attempt or not conn.broken:
                    raise
                self.close()
        raise AssertionError("unreachable")

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
        return self._conn
