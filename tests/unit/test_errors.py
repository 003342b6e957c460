"""The package's errors: one root, each under the standard base a caller already catches."""

import psycopg

from fastapi_dbpool import errors


def test_every_error_of_the_package_has_one_root_and_keeps_its_standard_base() -> None:
    bases = {
        errors.SettingsError: ValueError,
        errors.PoolStartupError: RuntimeError,
        errors.UsageError: RuntimeError,
        errors.ConnectionSetupError: psycopg.OperationalError,
        errors.TransactionRefused: psycopg.ProgrammingError,
        errors.ConnectionReleased: psycopg.InterfaceError,
        errors.DatabaseUnavailable: errors.DatabaseHTTPError,
        errors.CommitOutcomeUnknown: errors.DatabaseHTTPError,
    }
    for error, base in bases.items():
        assert issubclass(error, errors.DBPoolError), error
        assert issubclass(error, base), error
    unavailable = errors.DatabaseUnavailable("pool_timeout", 1)
    assert unavailable.status_code == 503 and unavailable.headers == {"Retry-After": "1"}
