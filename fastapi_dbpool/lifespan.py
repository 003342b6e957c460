"""pool_lifespan and create_pool_lifespan: open the pools at startup, close them at shutdown."""

import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from fastapi_dbpool import _only_database
from fastapi_dbpool._hooks import ConnectionHook
from fastapi_dbpool._state import POOLS_KEY, STATE_KEY
from fastapi_dbpool.pools import Databases
from fastapi_dbpool.settings import PoolSettings, check_variables

__all__ = [
    "Lifespan",
    "NamedPools",
    "SettingsSource",
    "create_pool_lifespan",
    "pool_lifespan",
]

AppT = TypeVar("AppT")
Lifespan = Callable[[AppT], AbstractAsyncContextManager[Mapping[str, Any] | None]]
SettingsSource = PoolSettings | Callable[[], PoolSettings]
NamedPools = Mapping[str, SettingsSource] | Sequence[str]
# app.state attribute: callables given the pools before they open (fastapi_dbpool.otel).
BEFORE_OPEN_KEY = "dbpool_before_open"


def create_pool_lifespan(
    settings: SettingsSource = PoolSettings,
    *,
    pools: NamedPools | None = None,
    lifespan: Lifespan[AppT] | None = None,
    configure: ConnectionHook | None = None,
    reset: ConnectionHook | None = None,
) -> Callable[[AppT], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan that opens the pools and runs the app's own lifespan inside them.

    settings is the default pool (get_conn), a PoolSettings or a callable returning one (read
    at startup, so importing the app needs no environment). pools names the others: a list of
    names, each read from DBPOOL_<NAME>_*, or a mapping of name to settings (build them with
    PoolSettings.for_pool(name, ...), which reads DBPOOL_<NAME>_* rather than the default
    pool's variables); without it, the names in DBPOOL_POOLS. The app's own lifespan starts
    after every pool is open, so it can use ``app.state.dbpool``, and ends before they close.
    configure and reset: your hooks for every pool that has none of its own (DBPOOL_CONFIGURE,
    DBPOOL_RESET): configure runs on each new connection (register types, SET search_path),
    reset on each connection given back.
    """
    hooks = {"configure": configure, "reset": reset}

    @asynccontextmanager
    async def _lifespan(app: AppT) -> AsyncIterator[dict[str, Any]]:
        default = _with_hooks(_resolve(settings), hooks)
        if "fastapi" in sys.modules:  # a FastAPI app; a Starlette one never imports it
            from fastapi_dbpool.sync import check_routes, check_sync_setup

            check_routes(app)  # a def endpoint taking get_conn: refused before connecting
            check_sync_setup(app, default)  # SyncConnDep on a pool set up by coroutines
        named = [_with_hooks(each, hooks) for each in _named(default, pools)]
        check_variables([default, *named])  # DBPOOL_MAX_SIZ: refused, not ignored
        _only_database.check([default, *named])  # under the pytest plugin: the test's only
        databases = Databases.build(default, named)
        state = getattr(app, "state", None)
        for hook in getattr(state, BEFORE_OPEN_KEY, ()):
            hook(databases)
        await databases.open()
        databases.drain.install(default.drain_seconds)
        if state is not None:
            setattr(state, STATE_KEY, databases.default)
            setattr(state, POOLS_KEY, databases)
        pool_state = {STATE_KEY: databases.default, POOLS_KEY: databases}
        try:
            if lifespan is None:
                yield pool_state
            else:
                async with lifespan(app) as inner_state:
                    yield {**(inner_state or {}), **pool_state}
        finally:
            databases.drain.uninstall()
            if state is not None and getattr(state, POOLS_KEY, None) is databases:
                delattr(state, STATE_KEY)
                delattr(state, POOLS_KEY)
            await databases.close()

    return _lifespan


def _with_hooks(settings: PoolSettings, hooks: dict[str, ConnectionHook | None]) -> PoolSettings:
    """settings with the lifespan's hooks where it has none of its own."""
    update = {
        field: hook
        for field, hook in hooks.items()
        if hook is not None and getattr(settings, field) is None
    }
    if not update:
        return settings
    copy = settings.model_copy(update=update)
    copy._code_fields = settings._code_fields | update.keys()  # given in code: named as fields
    return copy


def _resolve(source: SettingsSource) -> PoolSettings:
    return source if isinstance(source, PoolSettings) else source()


def _named(default: PoolSettings, pools: NamedPools | None) -> list[PoolSettings]:
    if pools is None:
        return [PoolSettings.for_pool(name) for name in default.pools]
    if isinstance(pools, Mapping):
        return [_renamed(_resolve(source), name) for name, source in pools.items()]
    if isinstance(pools, str):
        raise TypeError(f"pools must be a list of names, not the string {pools!r}")
    return [PoolSettings.for_pool(name) for name in pools]


def _renamed(settings: PoolSettings, name: str) -> PoolSettings:
    """settings under the name it is declared with (and that name as application_name, unless
    one was chosen)."""
    if settings.name == name:
        return settings
    update: dict[str, Any] = {"name": name}
    if "application_name" not in settings.model_fields_set:
        update["application_name"] = f"fastapi_dbpool:{name}"[:63]
    return settings.model_copy(update=update)


pool_lifespan: Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]] = create_pool_lifespan()
"""The lifespan of the design card: ``FastAPI(lifespan=pool_lifespan)``, settings from env."""
