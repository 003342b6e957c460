"""FastAPI response models over rows of every DBPOOL_ROW_FACTORY, and class_row."""

from typing import Any

import pytest
from fastapi import FastAPI
from psycopg.rows import class_row
from pydantic import BaseModel

from fastapi_dbpool import ConnDep, create_pool_lifespan
from tests.integration.conftest import ClientFor
from tests.integrations.conftest import SettingsFactory

SQL = "SELECT id, name, 3 AS count FROM (VALUES (1, 'Ada'), (2, 'Alan')) AS t (id, name)"


class Item(BaseModel):
    id: int
    name: str
    count: int  # a column named like tuple.count: by key, not by attribute


def app_for(settings: Any) -> FastAPI:
    app = FastAPI(lifespan=create_pool_lifespan(settings))

    @app.get("/items", response_model=list[Item])
    async def items(conn: ConnDep) -> Any:
        cur = await conn.execute(SQL)
        return await cur.fetchall()

    @app.get("/typed")
    async def typed(conn: ConnDep) -> list[Item]:
        cur = conn.cursor(row_factory=class_row(Item))
        await cur.execute(SQL)
        return await cur.fetchall()

    return app


EXPECTED = [{"id": 1, "name": "Ada", "count": 3}, {"id": 2, "name": "Alan", "count": 3}]


@pytest.mark.parametrize("factory", ["record", "dict", "namedtuple"])
def test_rows_validate_as_the_response_model(
    factory: str, make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(app_for(make_settings(row_factory=factory)))
    response = client.get("/items")
    assert response.status_code == 200, response.text
    assert response.json() == EXPECTED


def test_tuple_rows_do_not_validate_as_a_model(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    """psycopg's default rows have no column names: a response model cannot read them."""
    client = client_for(app_for(make_settings()))
    assert client.get("/items").status_code == 500


def test_class_row_builds_the_model_itself(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(app_for(make_settings(row_factory="record")))
    assert client.get("/typed").json() == EXPECTED
