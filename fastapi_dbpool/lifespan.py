"""pool_lifespan and create_pool_lifespan: open the pool at startup, close it at shutdown."""

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.dependencies import STATE_KEY
from fastapi_dbpool.settings import PoolSettings

AppT = TypeVar("AppT")
Lifespan = Callable[[AppT], AbstractAsyncContextManager[Mapping[str, Any] | None]]


def create_pool_lifespan(
    settings: PoolSettings | Callable[[], PoolSettings] = PoolSettings,
    *,
    lifespan: Lifespan[AppT] | None = None,
) -> Callable[[AppT], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan that opens a pool from settings and runs the app's own lifespan inside it.

    settings may be a PoolSettings or a callable returning one (read at startup, so importing
    the app needs no environment). The app's own lifespan starts after the pool is open, so it
    can use ``app.state.dbpool``, and ends before the pool closes.
    """

    @asynccontextmanager
    async def _lifespan(app: AppT) -> AsyncIterator[dict[str, Any]]:
        database = DatabasePool(settings if isinstance(settings, PoolSettings) else settings())
        await database.open()
        state = getattr(app, "state", None)
        if state is not None:
            setattr(state, STATE_KEY, database)
        try:
            if lifespan is None:
                yield {STATE_KEY: database}
            else:
                async with lifespan(app) as inner_state:
                    yield {**(inner_state or {}), STATE_KEY: database}
        finally:
            if state is not None and getattr(state, STATE_KEY, None) is database:
                delattr(state, STATE_KEY)
            await database.close()

    return _lifespan


pool_lifespan: Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]] = create_pool_lifespan()
"""The lifespan of the design card: ``FastAPI(lifespan=pool_lifespan)``, settings from env."""
