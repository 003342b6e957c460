"""Test helpers: a real PostgreSQL for your tests, a fresh database per test, an observer.

Installed with the package, the pytest plugin (``fastapi_dbpool.testing.plugin``) provides
the fixtures ``database_server``, ``database_url``, ``controllable_server``, ``observer``,
``unique_app_name`` and, for a database of each test's own with the app's schema in it,
``dbpool_schema`` (yours to override), ``dbpool_database``, ``dbpool_settings``, ``dbpool_app``
(yours to override), ``dbpool_client`` and ``dbpool_test_client``; see docs/testing.md.
"""

from fastapi_dbpool.testing._asgi import lifespan_client, running_lifespan
from fastapi_dbpool.testing._databases import TemplateDatabases
from fastapi_dbpool.testing._observer import Observer
from fastapi_dbpool.testing._schema import MigrationsCommand, SchemaSource, python_command
from fastapi_dbpool.testing._server import DatabaseServer, EmbeddedPostgres, find_database_server

__all__ = [
    "DatabaseServer",
    "EmbeddedPostgres",
    "MigrationsCommand",
    "Observer",
    "SchemaSource",
    "TemplateDatabases",
    "find_database_server",
    "lifespan_client",
    "python_command",
    "running_lifespan",
]
