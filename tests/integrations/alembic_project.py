"""A small Alembic project written to a directory: alembic.ini, env.py, one migration.

env.py comes in the template's variants: sync (our recipe, or with fileConfig as generated),
async (asyncio.run, as `alembic init -t async` writes it), and the URL from alembic.ini as is.
"""

from pathlib import Path

INI = """\
[alembic]
script_location = %(here)s
{url_line}

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""

HEAD = """\
import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlalchemy.ext.asyncio import async_engine_from_config

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name{logging})
{url}

def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

# The URL from the environment, its % escaped for configparser (the password is
# percent-encoded); alembic.ini then holds no URL at all.
FROM_ENVIRONMENT = """\
config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"].replace("%", "%%"))
"""

SYNC = """
connectable = engine_from_config(
    config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
)
with connectable.connect() as connection:
    do_run_migrations(connection)
"""

ASYNC = """
async def run_async_migrations():
    connectable = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await connectable.dispose()


asyncio.run(run_async_migrations())
"""

MIGRATION = """\
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    op.execute("CREATE TABLE people (id int PRIMARY KEY, mood mood NOT NULL)")


def downgrade():
    op.execute("DROP TABLE people")
    op.execute("DROP TYPE mood")
"""


def write_project(
    where: Path,
    *,
    run_async: bool = False,
    keep_loggers: bool = True,
    ini_url: str | None = None,
) -> Path:
    """The project's alembic.ini, in where. ini_url: a sqlalchemy.url line for alembic.ini
    (written as given); without it env.py reads DATABASE_URL."""
    (where / "versions").mkdir(parents=True)
    (where / "versions" / "0001_mood.py").write_text(MIGRATION)
    logging = ", disable_existing_loggers=False" if keep_loggers else ""
    url = "" if ini_url is not None else FROM_ENVIRONMENT
    env = HEAD.format(logging=logging, url=url) + (ASYNC if run_async else SYNC)
    (where / "env.py").write_text(env)
    ini = where / "alembic.ini"
    url_line = "" if ini_url is None else f"sqlalchemy.url = {ini_url}"
    ini.write_text(INI.format(url_line=url_line))
    return ini
