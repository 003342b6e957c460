"""Record: a psycopg row that answers by position and by column name, like asyncpg's."""

from collections.abc import Mapping
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from fastapi_dbpool.rows import Record, record_row


def row(**columns: object) -> Record:
    cursor = SimpleNamespace(description=[SimpleNamespace(name=name) for name in columns])
    return record_row(cursor)(list(columns.values()))


def test_a_record_answers_by_position_and_by_name() -> None:
    record = row(id=1, name="Ada")
    assert record[0] == record["id"] == 1
    assert record[1] == record["name"] == "Ada"
    assert record[-1] == "Ada" and record[0:1] == (1,)
    assert tuple(record) == (1, "Ada") and len(record) == 2
    identifier, name = record
    assert (identifier, name) == (1, "Ada")


def test_a_record_is_a_mapping_where_asyncpg_code_expects_one() -> None:
    record = row(id=1, name="Ada")
    assert dict(record) == {"id": 1, "name": "Ada"}
    assert list(record.keys()) == ["id", "name"]
    assert list(record.values()) == [1, "Ada"]
    assert list(record.items()) == [("id", 1), ("name", "Ada")]
    assert record.get("name") == "Ada" and record.get("missing", 0) == 0
    assert repr(record) == "<Record id=1 name='Ada'>"


def test_an_unknown_column_names_the_ones_there_are() -> None:
    with pytest.raises(KeyError, match=r"no column 'email'; the row has \['id', 'name'\]"):
        row(id=1, name="Ada")["email"]


def test_a_record_validates_as_a_model_by_column_name() -> None:
    class User(BaseModel):
        id: int
        count: int  # tuple.count is a method: by key, never by attribute

    record = row(id=1, count=3)
    assert isinstance(record, Mapping)
    assert User.model_validate(record) == User(id=1, count=3)
    assert list(record) == [1, 3]  # iterating still gives the values, as a tuple
