"""The pytest plugin itself: real servers, honest observers, no secrets in reprs."""

from urllib.parse import quote

import psycopg
import pytest

from fastapi_dbpool.testing import DatabaseServer, Observer


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


def test_unique_app_names_differ_and_fit_postgres(unique_app_name: str) -> None:
    assert len(unique_app_name.encode()) <= 63
    assert unique_app_name.startswith("t-test-unique-app-names")
