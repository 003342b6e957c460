"""Fuzz every operation of the example app (pool router included) from its OpenAPI schema."""

from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.core.result import Ok

from fastapi_dbpool.testing import DatabaseServer
from tests.support import serve_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def example_base(database_server: DatabaseServer) -> Iterator[str]:
    env = {"DBPOOL_URL": database_server.url, "DBPOOL_APPLICATION_NAME": "fuzz"}
    with serve_app("example_app.main:app", env, ready_path="/health/db") as app:
        yield app.base


def test_no_input_makes_the_server_fail(example_base: str) -> None:
    # Hypothesis strategies from schemathesis, driven here: its pytest plugin does not load
    # under pytest 9.
    api = schemathesis.openapi.from_url(f"{example_base}/openapi.json")
    operations = []
    for result in api.get_all_operations():
        assert isinstance(result, Ok), f"invalid operation in the schema: {result}"
        operations.append(result.ok())
    assert len(operations) >= 6  # the users API and the pool router

    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=40,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def no_server_error(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=example_base)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            assert "postgresql://" not in response.text and "SENTINEL" not in response.text

        no_server_error()
