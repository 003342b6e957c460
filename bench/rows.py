"""``python -m bench.rows``: what each row factory costs per row (DBPOOL_ROW_FACTORY), fetching
20,000 rows of three columns, median of 7 rounds, on a throwaway embedded PostgreSQL."""

import statistics
import time

import psycopg
from psycopg.rows import dict_row, namedtuple_row, tuple_row

from fastapi_dbpool.rows import record_row
from fastapi_dbpool.testing import EmbeddedPostgres

ROWS = 20_000
QUERY = (
    "SELECT i AS id, 'name ' || i AS name, 'user' || i || '@example.com' AS email "
    f"FROM generate_series(1, {ROWS}) AS i"
)
FACTORIES = {
    "tuple": tuple_row,
    "dict": dict_row,
    "namedtuple": namedtuple_row,
    "record": record_row,
}


def main() -> None:
    with EmbeddedPostgres() as server, psycopg.connect(server.url) as conn:
        samples: dict[str, list[float]] = {name: [] for name in FACTORIES}
        for _ in range(7):
            for name, factory in FACTORIES.items():
                cur = conn.cursor(row_factory=factory)  # type: ignore[arg-type]
                cur.execute(QUERY)
                started = time.perf_counter()
                cur.fetchall()
                samples[name].append((time.perf_counter() - started) / ROWS * 1e6)
        base = statistics.median(samples["tuple"])
        for name, values in samples.items():
            median = statistics.median(values)
            print(f"{name:10s} {median:.3f} us per row (+{median - base:.3f} over tuple)")


if __name__ == "__main__":
    main()
