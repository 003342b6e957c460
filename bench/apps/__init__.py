"""One tiny app per variant, all serving GET /users/{id} (and GET /ping) the same way.

Every app reads the database from ``DBPOOL_URL`` and its pool size from ``BENCH_POOL_SIZE``
(default 10), and returns the same JSON body built the same way, so that only the way the
connection is obtained differs.
"""
