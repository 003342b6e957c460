"""PoolSettings: environment, .env, defaults, and messages that name the variable."""

import re
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from fastapi_dbpool import PoolSettings, SettingsError
from fastapi_dbpool.settings import OWN_VARIABLES, check_variables

URL = "postgresql://app:hunter2-SENTINEL@db.internal:5432/app"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DBPOOL_* or DATABASE_URL from the outside, and no stray .env."""
    import os

    for name in list(os.environ):
        if name.startswith("DBPOOL_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def load_error(**env: str) -> str:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        with pytest.raises(SettingsError) as caught:
            PoolSettings()
    return str(caught.value)


def test_reads_dbpool_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBPOOL_URL", URL)
    monkeypatch.setenv("DBPOOL_MIN_SIZE", "3")
    monkeypatch.setenv("DBPOOL_MAX_SIZE", "7")
    monkeypatch.setenv("DBPOOL_TIMEOUT", "2.5")
    monkeypatch.setenv("DBPOOL_CHECK", "always")
    settings = PoolSettings()
    assert (settings.min_size, settings.max_size, settings.timeout) == (3, 7, 2.5)
    assert settings.check == "always"
    assert settings.conninfo() == URL


def test_database_url_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    assert PoolSettings().conninfo() == URL


def test_dbpool_url_wins_over_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://other@elsewhere/db")
    monkeypatch.setenv("DBPOOL_URL", URL)
    assert PoolSettings().conninfo() == URL


def test_reads_dot_env(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL={URL}\nDBPOOL_MAX_SIZE=12\n")
    settings = PoolSettings()
    assert settings.conninfo() == URL
    assert settings.max_size == 12


def test_defaults_are_sensible_for_a_web_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    settings = PoolSettings()
    assert settings.min_size <= settings.max_size
    assert settings.timeout < 30  # an HTTP client should not wait psycopg's 30 s default
    assert settings.fail_fast is True
    assert settings.check == "idle"


def test_missing_url_says_what_to_set() -> None:
    message = load_error()
    assert "DBPOOL_URL (or DATABASE_URL) is not set" in message
    assert "postgresql://user:password@host:5432/dbname" in message


def test_min_size_larger_than_max_size_names_both() -> None:
    message = load_error(DATABASE_URL=URL, DBPOOL_MIN_SIZE="12", DBPOOL_MAX_SIZE="10")
    assert "DBPOOL_MIN_SIZE (12) is larger than DBPOOL_MAX_SIZE (10)" in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DBPOOL_MAX_SIZE", "abc", "DBPOOL_MAX_SIZE: Input should be a valid integer"),
        ("DBPOOL_MAX_SIZE", "0", "DBPOOL_MAX_SIZE: Input should be greater than or equal to 1"),
        ("DBPOOL_MIN_SIZE", "-1", "DBPOOL_MIN_SIZE: Input should be greater than or equal to 0"),
        ("DBPOOL_TIMEOUT", "0", "DBPOOL_TIMEOUT: Input should be greater than 0"),
        ("DBPOOL_TIMEOUT", "-3", "DBPOOL_TIMEOUT: Input should be greater than 0"),
        ("DBPOOL_TIMEOUT", "nan", "DBPOOL_TIMEOUT: Input should be a finite number"),
        ("DBPOOL_MAX_LIFETIME", "inf", "DBPOOL_MAX_LIFETIME: Input should be a finite number"),
        ("DBPOOL_MAX_WAITING", "-1", "DBPOOL_MAX_WAITING: Input should be greater than or equal"),
        ("DBPOOL_NUM_WORKERS", "0", "DBPOOL_NUM_WORKERS: Input should be greater than or equal"),
        ("DBPOOL_RECONNECT_TIMEOUT", "0", "DBPOOL_RECONNECT_TIMEOUT: Input should be greater"),
        ("DBPOOL_CHECK", "sometimes", "DBPOOL_CHECK: Input should be 'always', 'idle' or 'never'"),
        ("DBPOOL_FAIL_FAST", "maybe", "DBPOOL_FAIL_FAST: Input should be a valid boolean"),
    ],
)
def test_bad_value_names_the_variable_and_a_valid_example(
    name: str, value: str, expected: str
) -> None:
    message = load_error(DATABASE_URL=URL, **{name: value})
    assert expected in message
    assert f"(e.g. {name}=" in message
    assert "hunter2" not in message


def test_every_error_is_reported_at_once() -> None:
    message = load_error(DATABASE_URL=URL, DBPOOL_MAX_SIZE="x", DBPOOL_TIMEOUT="-1")
    assert "DBPOOL_MAX_SIZE" in message and "DBPOOL_TIMEOUT" in message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://app:s3cr%zzet-SENTINEL@h/db", "invalid percent-encoded token"),
        ("host=h password='unterminated-SENTINEL", "unterminated quoted string"),
        ("host=h password=SENTINEL bogus=1", 'invalid connection option "bogus"'),
    ],
)
def test_malformed_url_explains_without_the_secret(url: str, reason: str) -> None:
    message = load_error(DBPOOL_URL=url)
    assert "DBPOOL_URL (or DATABASE_URL) is not a valid PostgreSQL connection string" in message
    assert reason in message
    assert "SENTINEL" not in message and "s3cr" not in message


def test_connect_kwargs_carry_the_connection_options(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = PoolSettings(
        url=URL, statement_timeout=1.5, idle_in_transaction_timeout=10, prepare_threshold=None
    )
    kwargs = settings.connect_kwargs()
    assert kwargs["application_name"] == "fastapi_dbpool"
    assert kwargs["prepare_threshold"] is None
    assert kwargs["options"] == (
        "-c statement_timeout=1500 -c idle_in_transaction_session_timeout=10000"
    )


def test_application_name_in_the_url_is_respected() -> None:
    settings = PoolSettings(url=URL + "?application_name=mine")
    assert "application_name" not in settings.connect_kwargs()


def test_empty_prepare_threshold_disables_prepared_statements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.setenv("DBPOOL_PREPARE_THRESHOLD", "")
    assert PoolSettings().prepare_threshold is None


def test_secrets_never_in_repr_or_dump() -> None:
    settings = PoolSettings(url=URL, password="other-SENTINEL")
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in text and "SENTINEL" not in text


SECRET = "S3cr/et#x"  # a password that breaks a URL in every way it can


def fragments(secret: str) -> set[str]:
    """Every piece of the secret at least 3 characters long, as a leak would show it."""
    pieces = {secret[i:j] for i in range(len(secret)) for j in range(i + 3, len(secret) + 1)}
    return pieces | {part for part in re.split(r"[/#@?: ]", secret) if len(part) >= 3}


@pytest.mark.parametrize(
    ("url", "password", "says"),
    [
        (f"app:{SECRET}@localhost:5432/app", SECRET, "no scheme"),
        (f"postgresql://app:{SECRET}@localhost:5432/app", SECRET, "unencoded / ? or #"),
        ("postgresql://app:S3cr@etx@localhost:5432/app", "S3cr@etx", "unencoded @"),
        ("postgresql://app:S3cr?etx@localhost:5432/app", "S3cr?etx", "unencoded / ? or #"),
        ("postgresql://app:S3cr etx@localhost/app", "S3cr etx", "space"),
        ("postgresql://app:S3cr%zzetx@localhost/app", "S3cr%zzetx", "percent-encode"),
        ("host=localhost password=S3cr etx", "S3cr etx", "percent-encode"),
        ("postgresql://app:S3cretx@localhost:54x2/app", "S3cretx", "port is not a number"),
        ("mysql://app:S3cretx@localhost/app", "S3cretx", "scheme is not postgresql"),
        ("postgresql+asyncpg://app:S3cretx@localhost/app?ssl=yes", "S3cretx", "sslmode"),
    ],
)
def test_a_malformed_url_says_what_is_wrong_and_no_piece_of_the_password(
    url: str, password: str, says: str
) -> None:
    from_env = load_error(DBPOOL_URL=url)
    with pytest.raises(SettingsError) as caught:
        PoolSettings(url=url)
    from_code = str(caught.value)
    assert "DBPOOL_URL (or DATABASE_URL)" in from_env
    assert from_code.splitlines()[1].startswith("  url ")  # no variable to fix: the field
    assert "DBPOOL_" not in from_code
    for message in (from_env, from_code):
        assert says in message
        leaked = [piece for piece in fragments(password) if piece in message]
        assert not leaked, (leaked, message)


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql+psycopg://app:pw@db.example:5432/app", "psycopg"),
        ("postgresql+asyncpg://app:pw@db.example:5432/app?ssl=require", "asyncpg"),
        ("postgresql+psycopg2://app:pw@db.example:5432/app", "psycopg2"),
        ("postgres://app:pw@db.example:5432/app", None),
    ],
)
def test_sqlalchemy_and_heroku_urls_are_accepted(url: str, driver: str | None) -> None:
    settings = PoolSettings(url=url)
    assert settings.url_driver() == driver
    assert conninfo_to_dict(settings.conninfo())["host"] == "db.example"
    if "ssl=" in url:
        assert conninfo_to_dict(settings.conninfo())["sslmode"] == "require"


def test_a_url_parameter_that_is_not_a_number_is_refused_naming_both_places() -> None:
    message = load_error(DBPOOL_URL="postgresql://app@localhost/app?connect_timeout=abc")
    assert "connect_timeout parameter is not a whole number" in message
    assert "DBPOOL_URL (or DATABASE_URL)" in message and "DBPOOL_CONNECT_TIMEOUT" in message


def test_a_url_parameter_and_a_setting_that_disagree_are_refused() -> None:
    with pytest.raises(SettingsError, match="url sets connect_timeout=3 but connect_timeout is 7"):
        PoolSettings(url="postgresql://app@localhost/app?connect_timeout=3", connect_timeout=7)
    with pytest.raises(SettingsError, match=r"but tcp_user_timeout is 2\.0"):
        PoolSettings(url="postgresql://app@localhost/app?tcp_user_timeout=500", tcp_user_timeout=2)
    message = load_error(
        DBPOOL_URL="postgresql://app@localhost/app?connect_timeout=3", DBPOOL_CONNECT_TIMEOUT="7"
    )
    assert "(or DATABASE_URL) sets connect_timeout=3 but DBPOOL_CONNECT_TIMEOUT is 7" in message


def test_settings_given_in_code_are_named_as_fields_and_the_rest_as_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DBPOOL_MAX_SIZE", "2")
    with pytest.raises(SettingsError) as caught:
        PoolSettings(url=URL, min_size=5)  # min_size from code, max_size from the environment
    assert "min_size (5) is larger than DBPOOL_MAX_SIZE (2)" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        PoolSettings(url=URL, timeout=-1)
    assert "timeout: Input should be greater than 0 (e.g. timeout=5.0, the default)" in str(
        caught.value
    )
    settings = PoolSettings(url=URL, min_size=1)
    assert settings.env_var("min_size") == "min_size"
    assert settings.env_var("max_size") == "DBPOOL_MAX_SIZE"
    assert settings.env_var("url") == "url"


def test_the_urls_own_parameter_wins_over_a_default() -> None:
    settings = PoolSettings(url="postgresql://app@localhost/app?connect_timeout=3")
    assert "connect_timeout" not in settings.connect_kwargs()  # libpq reads it from the URL
    agreeing = PoolSettings(
        url="postgresql://app@localhost/app?connect_timeout=3", connect_timeout=3
    )
    assert agreeing.connect_timeout == 3


def test_a_translated_ssl_parameter_keeps_the_other_values_encoding() -> None:
    url = "postgresql+asyncpg://app:pw@db.example/app?ssl=require&options=-c%20statement_timeout%3D5000"
    params = conninfo_to_dict(PoolSettings(url=url).conninfo())
    assert params["sslmode"] == "require"
    assert params["options"] == "-c statement_timeout=5000"


def test_a_quote_in_the_password_does_not_let_a_piece_of_it_through() -> None:
    with pytest.raises(SettingsError) as caught:
        PoolSettings(url='postgresql://u:p"w%zzq@h/db')
    assert not [piece for piece in fragments('p"w%zzq') if piece in str(caught.value)]


def test_the_deadline_defaults_past_the_statement_timeout() -> None:
    url = "postgresql://app@localhost/app"
    assert PoolSettings(url=url).effective_deadline == 300.0
    assert PoolSettings(url=url, statement_timeout=5).effective_deadline == 15.0
    assert PoolSettings(url=url, deadline=2, statement_timeout=5).effective_deadline == 2.0


def test_a_misspelt_variable_is_refused_naming_the_real_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DBPOOL_URL", URL)
    monkeypatch.setenv("DBPOOL_MAX_SIZ", "5")
    (tmp_path / ".env").write_text("DBPOOL_CONFIGUER=myapp.db:configure\n")  # .env too
    with pytest.raises(SettingsError) as caught:
        check_variables([PoolSettings()])
    message = str(caught.value)
    assert "DBPOOL_MAX_SIZ: did you mean DBPOOL_MAX_SIZE?" in message
    assert "DBPOOL_CONFIGUER: did you mean DBPOOL_CONFIGURE?" in message
    assert "myapp.db" not in message and "hunter2" not in message  # names, never values


def test_a_variable_of_a_named_pool_is_checked_against_its_own_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DBPOOL_URL", URL)
    monkeypatch.setenv("DBPOOL_POOLS", "replica")
    monkeypatch.setenv("DBPOOL_REPLICA_URL", URL)
    monkeypatch.setenv("DBPOOL_REPLICA_MAX_SIZE", "3")
    check_variables([PoolSettings(), PoolSettings.for_pool("replica")])  # all known
    monkeypatch.setenv("DBPOOL_REPLCA_MIN_SIZE", "1")
    with pytest.raises(SettingsError, match=r"DBPOOL_REPLCA_MIN_SIZE: did you mean "):
        check_variables([PoolSettings(), PoolSettings.for_pool("replica")])


def test_an_unknown_variable_far_from_any_setting_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DBPOOL_URL", URL)
    monkeypatch.setenv("DBPOOL_X", "1")
    with pytest.raises(SettingsError, match=r"DBPOOL_X: not a setting"):
        check_variables([PoolSettings()])


def test_a_variable_of_a_pool_the_app_does_not_declare_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Maybe another app's (one environment, several apps): said, not refused.
    monkeypatch.setenv("DBPOOL_URL", URL)
    monkeypatch.setenv("DBPOOL_ANALYTICS_URL", URL)
    with caplog.at_level("WARNING", logger="fastapi_dbpool"):
        check_variables([PoolSettings()])
    assert "DBPOOL_ANALYTICS_URL is set" in caplog.text
    assert "no pool 'analytics'" in caplog.text
    assert "add analytics to DBPOOL_POOLS" in caplog.text
    assert "hunter2" not in caplog.text


def test_the_packages_own_variables_are_not_settings_and_not_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastapi_dbpool.testing import _server

    own = {_server.TEST_URL_ENV, _server.TEST_ADMIN_URL_ENV, _server.PG_BIN_ENV}
    assert own | {_server.TEST_TMPDIR_ENV} == OWN_VARIABLES
    monkeypatch.setenv("DBPOOL_URL", URL)
    for name in OWN_VARIABLES:
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("dbpool_max_size", "3")  # any case, as the settings read it
    check_variables([PoolSettings()])


@pytest.mark.parametrize("field", ["STATEMENT_TIMEOUT", "IDLE_IN_TRANSACTION_TIMEOUT"])
def test_a_timeout_above_postgresqls_limit_is_refused_naming_the_variable(field: str) -> None:
    message = load_error(DBPOOL_URL=URL, **{f"DBPOOL_{field}": "2147483.648"})
    assert f"DBPOOL_{field}: Input should be less than or equal to 2147483.647" in message
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DBPOOL_URL", URL)
        mp.setenv(f"DBPOOL_{field}", "2147483.647")  # the limit itself: taken
        assert f"={2**31 - 1}" in PoolSettings().connect_kwargs()["options"]


def test_read_only_gets_is_refused_behind_pgbouncer() -> None:
    with pytest.raises(SettingsError) as refused:
        PoolSettings(url="postgresql://app@db/app", pgbouncer=True, read_only_gets=True)
    message = str(refused.value)
    assert "read_only_gets cannot be applied behind PgBouncer" in message
    assert "use get_read_conn" in message


def test_read_only_gets_makes_connections_read_only_by_a_startup_option() -> None:
    settings = PoolSettings(url="postgresql://app@db/app", read_only_gets=True)
    assert "-c default_transaction_read_only=on" in settings.connect_kwargs()["options"]
    assert "options" not in PoolSettings(url="postgresql://app@db/app").connect_kwargs()
