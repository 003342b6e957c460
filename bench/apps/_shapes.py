"""What the multi-statement endpoints of the shapes_* apps share: statements and ids.

Every shapes app serves the same six routes, so that route matching costs all of them alike:
``/users/{id}`` one-row read in a transaction, ``/read/{id}`` one-row read on the read path,
``/write/{id}`` one-row UPDATE ... RETURNING in a transaction, ``/reads20/{id}`` 20 one-row
reads, ``/updates20/{id}`` 20 UPDATEs in one transaction (executemany), ``/page/{id}`` a page
rendered from 12 rows.
"""

from typing import Any

from bench.apps._common import user

USERS = 10_000
WRITE = "UPDATE bench_users SET name = name WHERE id = %s RETURNING id, name, email"
WRITE_DOLLAR = "UPDATE bench_users SET name = name WHERE id = $1 RETURNING id, name, email"
UPDATE = "UPDATE bench_users SET name = name WHERE id = %s"
UPDATE_DOLLAR = "UPDATE bench_users SET name = name WHERE id = $1"
PAGE = "SELECT id, name, email FROM bench_users WHERE id >= %s ORDER BY id LIMIT 12"
PAGE_DOLLAR = "SELECT id, name, email FROM bench_users WHERE id >= $1 ORDER BY id LIMIT 12"


def ids(first: int, count: int = 20) -> list[int]:
    """count distinct ids spread over the table, sorted (concurrent updaters lock in one
    order: no deadlocks)."""
    return sorted((first + k * (USERS // count)) % USERS + 1 for k in range(count))


def page(rows: list[Any]) -> dict[str, Any]:
    """The page body: 12 users and a count, built the same way for every driver."""
    return {"users": [user(row) for row in rows], "count": len(rows)}
