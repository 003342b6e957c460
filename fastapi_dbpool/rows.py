"""Row factories by name (DBPOOL_ROW_FACTORY), and Record: a row that ports from asyncpg.

asyncpg's ``Record`` answers both ``row["name"]`` and ``row[0]``; code ported from asyncpg
uses both. ``record_row`` gives psycopg rows that do the same: a tuple (so ``row[0]``,
unpacking and ``len`` work, and FastAPI serializes it as a list) that also takes column names
(``row["name"]``, ``row.get("name")``, ``dict(row)``, ``keys()``, ``values()``, ``items()``).
It is registered as a ``Mapping``, so pydantic (a FastAPI ``response_model``) validates it by
column name; iterating it still gives its values, as a tuple does.
"""

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal, SupportsIndex, overload

from psycopg.rows import RowMaker, dict_row, namedtuple_row, no_result, tuple_row

__all__ = [
    "Record",
    "RowFactoryName",
]

RowFactoryName = Literal["tuple", "dict", "namedtuple", "record"]


class Record(tuple[Any, ...]):
    """A row by position and by column name, like asyncpg's Record."""

    __slots__ = ()
    _index: ClassVar[dict[str, int]] = {}  # column name -> position, set on each row class

    @overload
    def __getitem__(self, key: SupportsIndex | str, /) -> Any: ...
    @overload
    def __getitem__(self, key: slice, /) -> tuple[Any, ...]: ...
    def __getitem__(self, key: Any, /) -> Any:
        if isinstance(key, str):
            try:
                key = self._index[key]
            except KeyError:
                raise KeyError(f"no column {key!r}; the row has {list(self._index)}") from None
        return tuple.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        index = self._index.get(key)
        return default if index is None else tuple.__getitem__(self, index)

    def keys(self) -> Iterator[str]:
        return iter(self._index)

    def values(self) -> Iterator[Any]:
        return iter(tuple(self))

    def items(self) -> Iterator[tuple[str, Any]]:
        return zip(self._index, self, strict=True)

    def __repr__(self) -> str:
        fields = " ".join(f"{name}={value!r}" for name, value in self.items())
        return f"<Record {fields}>"


# pydantic validates a model from a Mapping (by key), not from a tuple. Registered rather than
# inherited: Mapping's mixins (__reversed__ = None, __eq__) would change how the tuple behaves,
# and psycopg still takes a Record as a sequence of parameters (it checks Sequence first).
Mapping.register(Record)


@functools.lru_cache(512)
def _record_class(names: tuple[str, ...]) -> type[Record]:
    return type(
        "Record", (Record,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}}
    )


def record_row(cursor: Any) -> "RowMaker[Record]":
    """psycopg row factory: Record rows, by position and by column name."""
    description = cursor.description
    if description is None:
        return no_result
    cls = _record_class(tuple(column.name for column in description))

    def make(values: Sequence[Any]) -> Record:
        return cls(values)

    return make


FACTORIES: dict[str, Callable[..., Any]] = {
    "tuple": tuple_row,
    "dict": dict_row,
    "namedtuple": namedtuple_row,
    "record": record_row,
}
