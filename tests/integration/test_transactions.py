"""get_conn: commit before the response, rollback on error, connection lost -> 503."""

import secrets
import time

from fastapi_dbpool.testing import DatabaseServer, Observer

from .conftest import ClientFor, SettingsFactory, build_app, row_exists


def new_id() -> int:
    return secrets.randbelow(2**62)


def test_committed_write_is_visible_when_the_response_arrives(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(build_app(make_settings()))
    item = new_id()
    response = client.post(f"/items/{item}")
    assert response.status_code == 200
    # No wait, no retry: the commit happened before the response was sent.
    assert row_exists(database_server.url, "items", item)


def test_failed_commit_returns_5xx(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(build_app(make_settings()))
    child = new_id()
    response = client.post(f"/children/{child}")
    assert response.status_code == 500
    assert response.json() == {"detail": "database commit failed; the transaction was rolled back"}
    assert not row_exists(database_server.url, "children", child)
    assert client.get("/value").json() == {"value": 1}


def test_failed_commit_returns_5xx_with_the_plain_depends_of_the_design_card(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(build_app(make_settings()))
    child = new_id()
    response = client.post(f"/plain/children/{child}")
    assert response.status_code == 500
    assert not row_exists(database_server.url, "children", child)


def test_http_exception_rolls_back(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(build_app(make_settings()))
    item = new_id()
    response = client.post(f"/items/{item}", params={"fail": "http"})
    assert response.status_code == 409
    assert not row_exists(database_server.url, "items", item)


def test_handler_error_rolls_back_and_connection_is_reused(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    database_server: DatabaseServer,
    observer: Observer,
    unique_app_name: str,
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=1)))
    pid_before = client.get("/pid").json()["pid"]
    item = new_id()
    response = client.post(f"/items/{item}", params={"fail": "error"})
    assert response.status_code == 500
    assert not row_exists(database_server.url, "items", item)
    # Rolled back, not discarded: the same backend serves the next request.
    assert client.get("/pid").json()["pid"] == pid_before
    assert observer.count(unique_app_name, state="idle in transaction") == 0


def test_connection_lost_mid_request_returns_503_and_pool_heals(
    make_settings: SettingsFactory, client_for: ClientFor, observer: Observer, unique_app_name: str
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=2)))
    response = client.get("/suicide")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {
        "detail": "database unavailable: the connection to the database was lost"
    }
    assert client.get("/value").json() == {"value": 1}
    stats = client.get("/pool/stats").json()
    assert stats["unavailable"]["connection_lost"] == 1
    assert stats["counters"]["returns_bad"] >= 1
    assert observer.wait_for_count(unique_app_name, stats["total"]) == stats["total"]


def test_idle_connections_killed_are_replaced_before_requests_see_them(
    make_settings: SettingsFactory, client_for: ClientFor, observer: Observer, unique_app_name: str
) -> None:
    # A request that draws a dead connection waits for psycopg's retry backoff (about 1 s).
    settings = make_settings(min_size=2, max_size=2, timeout=5.0, check_idle_after=0.5)
    client = client_for(build_app(settings))
    assert observer.wait_for_count(unique_app_name, 2) == 2
    time.sleep(0.6)  # both idle longer than check_idle_after: they will be checked
    assert observer.terminate(unique_app_name, state="idle") == 2
    for _ in range(4):
        assert client.get("/value").status_code == 200
    assert client.get("/pool/stats").json()["counters"]["connections_lost"] == 2


def test_statement_timeout_answers_504_and_connection_is_reused(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=1, statement_timeout=0.2)))
    pid_before = client.get("/pid").json()["pid"]
    response = client.get("/sleep", params={"seconds": 5})
    assert response.status_code == 504
    assert "statement_timeout" in response.json()["detail"]
    assert client.get("/pid").json()["pid"] == pid_before


def test_plain_get_conn_returns_the_connection_before_the_body_streams(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=2)))
    # The body reports how many connections are in use while it is being sent.
    assert client.get("/stream/plain").text == "0"


def test_stream_conn_holds_one_connection_while_streaming(
    make_settings: SettingsFactory, client_for: ClientFor, observer: Observer, unique_app_name: str
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=2)))
    assert client.get("/stream/held").text == "0:1\n1:1\n2:1\n"
    stats = client.get("/pool/stats").json()
    assert stats["in_use"] == 0
    assert observer.count(unique_app_name, state="idle in transaction") == 0


def test_read_conn_runs_without_a_transaction_and_returns_the_connection_transactional(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=1)))
    read = client.get("/read").json()
    assert read["autocommit"] is True
    assert read["status"] == "IDLE"  # no BEGIN was sent
    after = client.get("/mode").json()
    assert after["pid"] == read["pid"]  # the same connection...
    assert after["autocommit"] is False  # ...back in transactional mode
    assert after["status"] == "INTRANS"


def test_read_conn_writes_commit_statement_by_statement(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(build_app(make_settings()))
    item = new_id()
    assert client.post(f"/read/items/{item}").status_code == 409
    # Documented: in autocommit each statement commits on its own, even if the endpoint raises.
    assert row_exists(database_server.url, "items", item)


def test_a_transaction_left_open_on_a_read_conn_answers_500_and_the_connection_is_reused(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=1)))
    item = new_id()
    # BEGIN on an autocommit connection, never committed: a 200 would lose the write silently.
    assert client.post(f"/read/begin/{item}").status_code == 500
    assert not row_exists(database_server.url, "items", item)
    # The pool's only connection came back, in its transactional mode.
    after = client.get("/mode").json()
    assert (after["autocommit"], after["status"]) == (False, "INTRANS")
    stats = client.get("/pool/stats").json()
    assert stats["counters"]["requests_errors"] == 0


def test_a_lost_connection_the_endpoint_swallowed_answers_503_not_200(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(build_app(make_settings()))
    item = new_id()
    response = client.post(f"/swallow-lost/{item}")
    assert response.status_code == 503  # not 200: the write was never committed
    assert not row_exists(database_server.url, "items", item)


def test_swallowed_sql_error_answers_5xx_not_a_silent_rollback(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    database_server: DatabaseServer,
    observer: Observer,
    unique_app_name: str,
) -> None:
    client = client_for(build_app(make_settings(min_size=1, max_size=1)))
    item = new_id()
    response = client.post(f"/swallow/{item}")
    # COMMIT of an aborted transaction is a silent ROLLBACK: the client must not hear 200.
    assert response.status_code == 500
    assert not row_exists(database_server.url, "items", item)
    assert client.get("/value").json() == {"value": 1}
    assert observer.count(unique_app_name, state="idle in transaction (aborted)") == 0


def test_error_recovered_with_a_savepoint_commits(
    make_settings: SettingsFactory, client_for: ClientFor, database_server: DatabaseServer
) -> None:
    client = client_for(build_app(make_settings()))
    item = new_id()
    assert client.post(f"/swallow/{item}", params={"savepoint": True}).status_code == 200
    assert row_exists(database_server.url, "items", item)


def test_connection_lost_at_commit_answers_503_and_is_counted_once(
    make_settings: SettingsFactory, client_for: ClientFor
) -> None:
    client = client_for(build_app(make_settings(min_size=2, max_size=2)))
    response = client.post("/lost-before-commit")
    assert response.status_code == 503
    assert response.json()["detail"] == (
        "database unavailable: the connection to the database was lost"
    )
    assert client.get("/pool/stats").json()["unavailable"]["connection_lost"] == 1
