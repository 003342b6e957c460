"""Test helpers: a real PostgreSQL for your tests, and an observer of what it holds.

Installed with the package, the pytest plugin (``fastapi_dbpool.testing.plugin``) provides
the fixtures ``database_server``, ``database_url``, ``controllable_server``, ``observer`` and
``unique_app_name``; see docs/testing.md.
"""

from fastapi_dbpool.testing._observer import Observer
from fastapi_dbpool.testing._server import DatabaseServer, EmbeddedPostgres, find_database_server

__all__ = ["DatabaseServer", "EmbeddedPostgres", "Observer", "find_database_server"]
