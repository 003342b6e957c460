"""The root of the package's errors (drawn in fastapi_dbpool.errors), with no imports of its
own, so that every module can raise under it."""

__all__ = ["DBPoolError", "UsageError"]


class DBPoolError(Exception):
    """Every error fastapi_dbpool raises, its HTTP answers included: ``except DBPoolError``."""


class UsageError(DBPoolError, RuntimeError):
    """The app uses the package in a way it cannot serve; the message says what to change."""
