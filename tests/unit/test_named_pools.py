"""Named pools' settings: each from its own DBPOOL_<NAME>_* variables, errors naming them."""

import os
from pathlib import Path

import pytest

from fastapi_dbpool import PoolSettings, SettingsError, get_conn_for
from fastapi_dbpool._advice import advise
from fastapi_dbpool._timings import Recorder
from fastapi_dbpool.pools import Databases

SECRET = "n0t-in-any-message"
URL = f"postgresql://app:{SECRET}@127.0.0.1:5432/app"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only this test's DBPOOL_* variables, and no stray .env."""
    for name in list(os.environ):
        if name.startswith("DBPOOL_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DBPOOL_URL", URL)
    monkeypatch.chdir(tmp_path)


def test_a_named_pool_reads_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBPOOL_REPLICA_URL", URL.replace("5432", "5433"))
    monkeypatch.setenv("DBPOOL_REPLICA_REPLICA", "true")
    monkeypatch.setenv("DBPOOL_REPLICA_MAX_SIZE", "3")
    monkeypatch.setenv("DBPOOL_MAX_SIZE", "7")
    replica = PoolSettings.for_pool("replica")
    assert (replica.name, replica.max_size, replica.replica) == ("replica", 3, True)
    assert replica.application_name == "fastapi_dbpool:replica"
    assert "5433" in replica.conninfo()
    assert replica.is_required is False  # a replica has the primary to fall back to
    assert PoolSettings().max_size == 7  # the default pool is untouched


def test_a_named_pool_does_not_read_the_default_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    with pytest.raises(SettingsError) as caught:
        PoolSettings.for_pool("analytics")
    message = str(caught.value)
    assert "DBPOOL_ANALYTICS_URL is not set" in message
    assert "(DBPOOL_ANALYTICS_*)" in message


def test_a_bad_value_names_the_named_pools_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBPOOL_REPLICA_URL", URL)
    monkeypatch.setenv("DBPOOL_REPLICA_MIN_SIZE", "9")
    monkeypatch.setenv("DBPOOL_REPLICA_MAX_SIZE", "4")
    monkeypatch.setenv("DBPOOL_REPLICA_TIMEOUT", "soon")
    with pytest.raises(SettingsError) as caught:
        PoolSettings.for_pool("replica")
    message = str(caught.value)
    assert "DBPOOL_REPLICA_TIMEOUT" in message
    assert "soon" not in message
    assert SECRET not in message


def test_min_above_max_names_the_named_pools_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBPOOL_REPLICA_URL", URL)
    monkeypatch.setenv("DBPOOL_REPLICA_MIN_SIZE", "9")
    monkeypatch.setenv("DBPOOL_REPLICA_MAX_SIZE", "4")
    with pytest.raises(SettingsError, match=r"DBPOOL_REPLICA_MIN_SIZE .9. is larger than "
                       r"DBPOOL_REPLICA_MAX_SIZE .4."):  # fmt: skip
        PoolSettings.for_pool("replica")


def test_pools_is_a_comma_separated_list_of_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBPOOL_POOLS", " replica , analytics,")
    assert PoolSettings().pools == ["replica", "analytics"]
    monkeypatch.setenv("DBPOOL_POOLS", "replica,read-only")
    with pytest.raises(SettingsError, match=r"DBPOOL_POOLS.*'read-only' is not usable"):
        PoolSettings()


def test_two_pools_with_one_name_are_refused() -> None:
    with pytest.raises(SettingsError, match="two pools are named 'main'"):
        Databases.build(PoolSettings(name="main"), [PoolSettings(name="main")])


def test_the_default_pool_cannot_be_a_replica() -> None:
    with pytest.raises(SettingsError, match="DBPOOL_REPLICA=true on the default pool"):
        Databases.build(PoolSettings(replica=True))


def test_required_defaults_to_true_except_for_replicas() -> None:
    assert PoolSettings().is_required is True
    assert PoolSettings(replica=True).is_required is False
    assert PoolSettings(replica=True, required=True).is_required is True
    assert PoolSettings(required=False).is_required is False


def test_a_name_whose_variables_clash_with_the_default_pools_is_refused() -> None:
    # DBPOOL_MAX_SIZE is the default pool's; a pool "max" would read it as its own "size".
    with pytest.raises(SettingsError, match=r"pool name 'max' clashes with DBPOOL_MAX_SIZE"):
        PoolSettings.for_pool("max")


def test_a_bare_url_variable_is_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Some platforms set URL; neither pool may take it for its database.
    monkeypatch.setenv("URL", "postgresql://someone:else@elsewhere/db")
    monkeypatch.setenv("DBPOOL_REPLICA_URL", URL)
    assert PoolSettings.for_pool("replica").conninfo() == URL
    monkeypatch.delenv("DBPOOL_URL")
    with pytest.raises(SettingsError, match=r"DBPOOL_URL .or DATABASE_URL. is not set"):
        PoolSettings()


def test_pools_whose_variables_overlap_are_refused() -> None:
    # DBPOOL_REPLICA_FALLBACK_TIMEOUT would be both replica's and replica_fallback's setting.
    with pytest.raises(SettingsError, match="pools 'replica' and 'replica_fallback'"):
        Databases.build(
            PoolSettings(), [PoolSettings(name="replica"), PoolSettings(name="replica_fallback")]
        )
    with pytest.raises(SettingsError, match="two pools are named"):
        Databases.build(
            PoolSettings(), [PoolSettings(name="Replica"), PoolSettings(name="replica")]
        )


def test_one_dependency_per_pool_and_mode() -> None:
    assert get_conn_for("analytics") is get_conn_for("analytics", read=False)
    assert get_conn_for("analytics") is get_conn_for(name="analytics")
    assert get_conn_for("analytics", read=True) is not get_conn_for("analytics")


def test_a_named_pools_advice_and_messages_name_its_own_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DBPOOL_URL", "postgresql://app@localhost/app")
    settings = PoolSettings.for_pool("replica", url="postgresql://app@localhost/app")
    assert settings.env_var("max_size") == "DBPOOL_REPLICA_MAX_SIZE"
    assert settings.env_var("url") == "url"  # given in code: there is no variable to fix
    assert PoolSettings().env_var("url") == "DBPOOL_URL (or DATABASE_URL)"  # from the env
    timings = Recorder("replica", None).snapshot()
    timings.max_in_use = 1
    advice = advise(
        min_size=1, max_size=10, timings=timings, shed=3, timeout=5.0, variable=settings.env_var
    )
    assert advice.verdict == "saturated"
    assert "DBPOOL_REPLICA_MAX_SIZE" in advice.message
    assert "DBPOOL_MAX_SIZE" not in advice.message


def test_a_route_writing_through_the_default_pool_by_name_reads_from_the_primary() -> None:
    from fastapi import Depends, FastAPI
    from starlette.requests import Request

    from fastapi_dbpool import ReadConnDep
    from fastapi_dbpool.database import DatabasePool
    from fastapi_dbpool.dependencies import _writes_to_default

    app = FastAPI()

    @app.post("/by-name")
    async def by_name(read: ReadConnDep, conn: object = Depends(get_conn_for("primary"))) -> None:
        """get_conn_for the default pool's name is get_conn."""

    @app.get("/read-only")
    async def read_only(read: ReadConnDep) -> None:
        """Reads alone may go to a replica."""

    settings = PoolSettings(url="postgresql://app@localhost/app", name="primary")
    databases = Databases([DatabasePool(settings)])
    routes = {getattr(route, "path", ""): route for route in app.routes}
    for path, writes in (("/by-name", True), ("/read-only", False)):
        request = Request({"type": "http", "route": routes[path], "app": app, "headers": []})
        assert _writes_to_default(request, databases) is writes
