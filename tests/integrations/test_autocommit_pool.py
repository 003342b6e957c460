"""DBPOOL_AUTOCOMMIT: a pool whose idle connections are in autocommit, for libraries."""

from typing import Any

from fastapi import Depends, FastAPI
from psycopg import AsyncConnection

from fastapi_dbpool import create_pool_lifespan, get_conn_for
from tests.integration.conftest import ClientFor, connection_mode
from tests.integrations.conftest import SettingsFactory


def test_get_conn_on_an_autocommit_pool_is_still_one_transaction(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    app = FastAPI(
        lifespan=create_pool_lifespan(
            make_settings(), pools={"library": make_settings(autocommit=True, max_size=1)}
        )
    )

    @app.get("/mode")
    async def mode(
        conn: AsyncConnection[Any] = Depends(get_conn_for("library")),
    ) -> dict[str, Any]:
        return await connection_mode(conn)

    @app.get("/idle")
    async def idle() -> dict[str, bool]:
        async with app.state.dbpools.get("library").pool.connection() as conn:
            return {"autocommit": conn.autocommit}

    client = client_for(app)
    assert client.get("/idle").json() == {"autocommit": True}
    answer = client.get("/mode").json()
    assert (answer["autocommit"], answer["status"]) == (False, "INTRANS")
    assert client.get("/idle").json() == {"autocommit": True}  # given back as the pool made it
