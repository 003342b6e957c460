"""Strawberry GraphQL on the request's connection: GraphQL answers 200 with errors."""

from typing import Any

import pytest
import strawberry
from fastapi import FastAPI, Request
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionResult

from fastapi_dbpool import ConnDep, create_pool_lifespan
from tests.integration.conftest import ClientFor
from tests.integrations.conftest import SettingsFactory, query


@strawberry.type
class Query:
    @strawberry.field
    async def notes(self, info: strawberry.Info) -> int:
        cur = await info.context["conn"].execute("SELECT count(*) FROM notes")
        return int((await cur.fetchone())[0])


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def add_note(self, info: strawberry.Info, note_id: int, fail: str = "") -> int:
        conn = info.context["conn"]
        await conn.execute("INSERT INTO notes (id) VALUES (%s)", (note_id,))
        if fail == "raise":
            raise ValueError("the resolver failed after its INSERT")
        if fail == "sql":
            await conn.execute("SELECT 1 / 0")
        return note_id

    @strawberry.mutation
    async def add_note_alone(self, info: strawberry.Info, note_id: int, fail: bool) -> int:
        """A savepoint per mutation: its own work is undone when it fails, nothing else."""
        conn = info.context["conn"]
        async with conn.transaction():
            await conn.execute("INSERT INTO notes (id) VALUES (%s)", (note_id,))
            if fail:
                raise ValueError("this mutation's INSERT is rolled back, the request's kept")
        return note_id


schema = strawberry.Schema(query=Query, mutation=Mutation)


async def plain_context(conn: ConnDep) -> dict[str, Any]:
    """The first way: the connection in the context, GraphQLRouter as it is."""
    return {"conn": conn}


async def context(request: Request, conn: ConnDep) -> dict[str, Any]:
    """The recipe's context: a savepoint at the start of the request's transaction."""
    await conn.execute("SAVEPOINT graphql")
    request.state.graphql_conn = conn
    return {"conn": conn}


class TransactionalGraphQLRouter(GraphQLRouter[Any, None]):
    """A result with errors rolls the request's work back; GraphQL still answers 200."""

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        if result.errors:
            await request.state.graphql_conn.execute("ROLLBACK TO SAVEPOINT graphql")
        return await super().process_result(request, result)


def graphql_app(settings: Any, router: GraphQLRouter[Any, None]) -> FastAPI:
    app = FastAPI(lifespan=create_pool_lifespan(settings))
    app.include_router(router, prefix="/graphql")
    return app


@pytest.fixture
def notes(dbpool_database: str) -> str:
    query(dbpool_database, "CREATE TABLE notes (id int PRIMARY KEY)")
    return dbpool_database


def add(note_id: int, fail: str = "") -> dict[str, str]:
    return {"query": f'mutation {{ addNote(noteId: {note_id}, fail: "{fail}") }}'}


def ids(url: str) -> list[int]:
    return [row[0] for row in query(url, "SELECT id FROM notes ORDER BY id")]


@pytest.mark.parametrize("fail", ["raise", "sql"])
def test_errors_roll_the_request_back_and_answer_200(
    fail: str, notes: str, make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    router = TransactionalGraphQLRouter(schema, context_getter=context)
    client = client_for(graphql_app(make_settings(), router))
    response = client.post("/graphql", json=add(1, fail))
    assert response.status_code == 200 and response.json()["errors"], response.text
    assert ids(notes) == []
    assert client.post("/graphql", json=add(2)).json() == {"data": {"addNote": 2}}
    assert ids(notes) == [2]


def test_a_resolver_that_raises_after_its_insert_commits_it(
    notes: str, make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    """The first way: GraphQL answers 200 with errors, so get_conn sees success and commits."""
    client = client_for(
        graphql_app(make_settings(), GraphQLRouter(schema, context_getter=plain_context))
    )
    response = client.post("/graphql", json=add(1, "raise"))
    assert response.status_code == 200 and response.json()["errors"]
    assert ids(notes) == [1]


def test_a_resolver_whose_sql_fails_answers_500(
    notes: str, make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    """The first way: the aborted transaction cannot commit; the GraphQL answer is replaced."""
    client = client_for(
        graphql_app(make_settings(), GraphQLRouter(schema, context_getter=plain_context))
    )
    response = client.post("/graphql", json=add(1, "sql"))
    assert response.status_code == 500
    assert "database commit failed" in response.text
    assert ids(notes) == []


def test_a_savepoint_per_mutation_keeps_the_others(
    notes: str, make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(
        graphql_app(make_settings(), GraphQLRouter(schema, context_getter=plain_context))
    )
    two = (
        "mutation { a: addNoteAlone(noteId: 1, fail: false)"
        " b: addNoteAlone(noteId: 2, fail: true) }"
    )
    response = client.post("/graphql", json={"query": two})
    assert response.status_code == 200
    assert response.json()["data"] is None and response.json()["errors"]  # b is non-null
    assert ids(notes) == [1]
