"""A database per test: the schema built once into a template, cloned per test, dropped after."""

import itertools
import os
import secrets
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fastapi_dbpool.testing._schema import SchemaSource, apply_schema
from fastapi_dbpool.testing._server import TEST_ADMIN_URL_ENV, TEST_URL_ENV, DatabaseServer

#: How PostgreSQL 15+ copies the template; measured in bench/testdb.py (docs/testing.md).
STRATEGY = "file_copy"
STRATEGIES = frozenset({"file_copy", "wal_log"})
_MAX_NAME = 63  # NAMEDATALEN - 1


def name_prefix() -> str:
    """dbpool_<xdist worker>_<random>: distinct per worker and per session on a shared server."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"dbpool_{worker}_{secrets.token_hex(3)}"[: _MAX_NAME - 10]


def with_database(url: str, name: str) -> str:
    """url (a URI or key=value conninfo) pointing at the database name instead."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        return urlunsplit(parts._replace(path="/" + quote(name, safe="")))
    return make_conninfo(url, dbname=name)


class TemplateDatabases:
    """Clones of one template database that holds the schema, on the session's server."""

    def __init__(
        self, server: DatabaseServer, *, prefix: str | None = None, strategy: str | None = STRATEGY
    ) -> None:
        self.server = server
        self.prefix = prefix or name_prefix()
        self.template = f"{self.prefix}_template"
        self._owner = conninfo_to_dict(server.url).get("user")
        self._numbers = itertools.count(1)
        if strategy is not None and strategy.lower() not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {sorted(STRATEGIES)} or None, not {strategy!r}"
            )
        self._admin = psycopg.connect(server.admin_url, autocommit=True)
        version = self._admin.info.server_version
        # STRATEGY appeared in PostgreSQL 15 (before it, every clone was a file copy).
        self._strategy = strategy if strategy and version >= 150000 else None
        self._built = False

    def __repr__(self) -> str:
        return f"<TemplateDatabases {self.template!r} strategy={self._strategy}>"

    def url(self, name: str) -> str:
        """The application role's URL for the database name (a URL if the server's is one,
        as migration tools such as Alembic and yoyo take only URLs)."""
        return with_database(self.server.url, name)

    def build(self, schema: SchemaSource) -> None:
        """Create the template and build the schema in it, as the application role."""
        self._create(self.template, template=None)
        self._built = True
        apply_schema(schema, self.url(self.template))
        # A template must have no connection while it is cloned: refuse new ones for good.
        self._execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                sql.Identifier(self.template)
            )
        )
        self._execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (self.template,),
        )

    def create(self) -> str:
        """A new database cloned from the template; its name."""
        name = f"{self.prefix}_{next(self._numbers)}"
        self._create(name, template=self.template)
        return name

    def drop(self, name: str) -> None:
        """Drop a database, closing whatever connections a test left on it."""
        self._execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def close(self) -> None:
        """Drop the template and close the admin connection."""
        try:
            if self._built:
                self.drop(self.template)
        except psycopg.OperationalError:
            pass  # the server is gone (stopped by a test, or at the end), and the template too
        finally:
            self._admin.close()

    def _execute(self, query: Any, params: Any = None) -> None:
        """Run on the admin connection, reconnecting once if a server restart (a test's
        controllable_server) broke it."""
        if self._admin.closed:
            self._admin = psycopg.connect(self.server.admin_url, autocommit=True)
        try:
            self._admin.execute(query, params)
        except psycopg.OperationalError:
            if not (self._admin.closed or self._admin.broken):
                raise
            self._admin = psycopg.connect(self.server.admin_url, autocommit=True)
            self._admin.execute(query, params)

    def _create(self, name: str, template: str | None) -> None:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        options: list[Any] = []
        if template is not None:
            options.append(sql.SQL("TEMPLATE {}").format(sql.Identifier(template)))
            if self._strategy:
                options.append(sql.SQL("STRATEGY {}").format(sql.SQL(self._strategy.upper())))
        if self._owner and self._owner != self._admin.info.user:
            options.append(sql.SQL("OWNER {}").format(sql.Identifier(str(self._owner))))
        if options:
            statement = sql.SQL(" ").join([statement, *options])
        try:
            self._execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            raise RuntimeError(
                f"the role {self._admin.info.user!r} may not create the test database {name!r}: "
                f"grant it CREATEDB (ALTER ROLE ... CREATEDB), or set {TEST_ADMIN_URL_ENV} to a "
                f"role that has it (the databases are created as {TEST_URL_ENV}'s role's)"
            ) from None


class Templates:
    """One TemplateDatabases per schema source, built on first use, for the session.

    A session-scoped template fixture would be built from the first test's dbpool_schema and
    reused for a module that overrides it; keying by the source gives each its own template.
    """

    def __init__(self, server: DatabaseServer) -> None:
        self.server = server
        self._built: dict[object, tuple[SchemaSource, TemplateDatabases]] = {}

    def for_schema(self, schema: SchemaSource) -> TemplateDatabases:
        """The template holding schema, built now if this is its first use."""
        key = schema if schema is None or isinstance(schema, (str, os.PathLike)) else id(schema)
        if key not in self._built:
            databases = TemplateDatabases(self.server)
            try:
                databases.build(schema)
            except BaseException:
                databases.close()
                raise
            # Holding the source keeps its id from being reused by another object.
            self._built[key] = (schema, databases)
        return self._built[key][1]

    def close(self) -> None:
        """Drop every template."""
        for _, databases in self._built.values():
            databases.close()
        self._built.clear()
