"""The pytest plugin itself: real servers, honest observers, no secrets in reprs."""

from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from fastapi_dbpool.testing import DatabaseServer, EmbeddedPostgres, Observer


def test_both_urls_connect(database_server: DatabaseServer) -> None:
    with psycopg.connect(database_server.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(database_server.admin_url) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (True,)


def test_repr_hides_urls_and_password(database_server: DatabaseServer) -> None:
    text = repr(database_server)
    assert database_server.url not in text
    assert database_server.admin_url not in text
    if database_server.password:
        assert database_server.password not in text
        assert quote(database_server.password, safe="") not in text


def test_embedded_password_is_full_of_uri_special_characters(
    database_server: DatabaseServer,
) -> None:
    if database_server.source != "embedded":
        pytest.skip(f"the {database_server.source} server's password is not chosen by the plugin")
    assert database_server.password is not None
    assert set("@:%/#? ") <= set(database_server.password)
    assert database_server.password not in database_server.url
    assert quote(database_server.password, safe="") in database_server.url


def test_embedded_server_settings(database_server: DatabaseServer, observer: Observer) -> None:
    if database_server.source != "embedded":
        pytest.skip(f"the {database_server.source} server is not configured by the plugin")
    assert observer.execute("SHOW log_connections") == [("on",)]
    assert observer.execute("SHOW max_connections") == [("200",)]
    assert observer.execute("SELECT inet_server_addr()::text") == [("127.0.0.1/32",)]
    if int(observer.execute("SHOW server_version_num")[0][0]) >= 140000:
        assert observer.execute("SHOW client_connection_check_interval") == [("100ms",)]


def test_observer_execute_keeps_every_column(observer: Observer) -> None:
    assert observer.execute("SELECT 1, 2") == [(1, 2)]
    assert observer.execute("SET application_name = 'x'") == []


def test_observer_counts_and_terminates_a_tagged_connection(
    database_server: DatabaseServer, observer: Observer, unique_app_name: str
) -> None:
    assert observer.count(unique_app_name) == 0
    with psycopg.connect(database_server.url, application_name=unique_app_name) as conn:
        assert observer.count(unique_app_name) == 1
        assert observer.count(unique_app_name, state="idle") == 1
        assert observer.terminate(unique_app_name) == 1
        assert observer.wait_for_count(unique_app_name, 0) == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")


def test_stop_and_start_on_the_same_port(
    controllable_server: DatabaseServer, observer: Observer
) -> None:
    observer.execute("SELECT 1")
    controllable_server.stop(mode="immediate")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(controllable_server.url, connect_timeout=2)
    controllable_server.stop()  # already stopped: a no-op
    controllable_server.start()
    with psycopg.connect(controllable_server.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # The observer reconnects by itself after the restart.
    assert observer.execute("SELECT 2") == [(2,)]


def test_a_server_that_is_not_ours_cannot_be_stopped() -> None:
    url = "postgresql://nobody@127.0.0.1:1/none"
    server = DatabaseServer(url=url, admin_url=url, password=None, source="env")
    assert not server.controllable
    with pytest.raises(RuntimeError, match="cannot be stopped"):
        server.stop()
    server.close()  # leaves a server it did not start alone


def test_embedded_data_dir_is_kept_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    with EmbeddedPostgres(data_dir=data_dir) as first, psycopg.connect(first.url) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    with pytest.raises(psycopg.OperationalError):  # stopped on leaving the block
        psycopg.connect(first.url, connect_timeout=2)
    second = EmbeddedPostgres(data_dir=data_dir)
    try:
        second.start()
        assert second.password == first.password
        with psycopg.connect(second.url) as conn:
            assert conn.execute("SELECT n FROM kept").fetchall() == [(42,)]
    finally:
        second.close()
    assert (data_dir / "data" / "PG_VERSION").exists()


def test_unique_app_names_differ_and_fit_postgres(unique_app_name: str) -> None:
    assert len(unique_app_name.encode()) <= 63
    assert unique_app_name.startswith("t-test-unique-app-names")
