"""The password never appears in a response, a log line, an exception or a repr."""

import logging
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from fastapi_dbpool import SettingsError
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.errors import PoolStartupError
from fastapi_dbpool.testing import DatabaseServer

from .conftest import ClientFor, SettingsFactory, build_app


def forms(password: str) -> list[str]:
    return [password, quote(password, safe=""), quote(password)]


def assert_clean(text: str, password: str) -> None:
    for form in forms(password):
        assert form not in text, f"password form {form!r} leaked"


def test_no_password_in_responses_logs_or_reprs_through_a_whole_workflow(
    make_settings: SettingsFactory,
    client_for: ClientFor,
    database_server: DatabaseServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = database_server.password
    if password is None:
        pytest.skip("the server from DBPOOL_TEST_URL has no known password to search for")
    caplog.set_level(logging.DEBUG)
    settings = make_settings(min_size=1, max_size=1, timeout=0.5)
    client = client_for(build_app(settings))
    seen: list[str] = [repr(settings), str(settings), settings.model_dump_json()]
    seen.append(repr(DatabasePool(settings)))
    for method, path in [
        ("GET", "/value"),
        ("GET", "/health/db"),
        ("GET", "/pool/stats"),
        ("GET", "/suicide"),
        ("GET", "/openapi.json"),
        ("POST", "/children/7"),
    ]:
        response = client.request(method, path)
        seen.append(response.text)
        seen.append(str(response.headers))
    wrong = database_server.url.replace(quote(password, safe=""), quote(password + "x", safe=""))
    with pytest.raises(PoolStartupError) as caught, TestClient(build_app(make_settings(url=wrong))):
        pass
    seen.append(str(caught.value))
    seen.append(caplog.text)
    for text in seen:
        assert_clean(text, password)
    assert_clean(repr(caught.value), password + "x")


def test_malformed_url_error_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi_dbpool import PoolSettings

    monkeypatch.setenv("DBPOOL_URL", "postgresql://app:s3cr%zzet-SENTINEL@db.example/app")
    with pytest.raises(SettingsError) as caught:
        PoolSettings()
    message = str(caught.value)
    assert "DBPOOL_URL" in message
    assert "percent-encode" in message
    assert "s3cr" not in message and "SENTINEL" not in message


def test_url_and_password_are_secret_in_repr(database_server: DatabaseServer) -> None:
    from fastapi_dbpool import PoolSettings

    settings = PoolSettings(url=database_server.url, password="hunter2-SENTINEL")
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in text
        if database_server.password:
            assert_clean(text, database_server.password)
    assert "hunter2" not in repr(DatabasePool(settings))
