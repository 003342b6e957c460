"""Connection strings as people write them: the mistakes that would reach libpq (whose
messages quote the input, password included) found first and told without quoting anything,
and SQLAlchemy/Heroku spellings (``postgresql+asyncpg://``, ``postgres://``) accepted."""

import re
from urllib.parse import parse_qsl

# postgresql+psycopg://, postgresql+asyncpg://, postgres+psycopg2://: SQLAlchemy's driver suffix.
_DRIVER = re.compile(r"^(?P<scheme>postgres(?:ql)?)\+(?P<driver>[A-Za-z0-9_]+)://", re.IGNORECASE)
_URI = re.compile(r"^postgres(?:ql)?://", re.IGNORECASE)
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
_SSL_KEY = re.compile(r"(^|&)ssl=")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# asyncpg's ssl= takes libpq's sslmode names; libpq spells the parameter sslmode.
_SSL_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

ENCODE_HINT = (
    "percent-encode special characters in the user and password "
    "(@ as %40, / as %2F, : as %3A, # as %23, ? as %3F, % as %25, space as %20)"
)


def normalize(conninfo: str) -> tuple[str, str | None]:
    """The connection string libpq understands, and the driver suffix dropped (if any).

    ``postgresql+asyncpg://...?ssl=require`` becomes ``postgresql://...?sslmode=require``."""
    match = _DRIVER.match(conninfo)
    if match is None:
        return conninfo, None
    conninfo = f"{match.group('scheme')}://{conninfo[match.end() :]}"
    base, sep, query = conninfo.partition("?")
    if sep:  # rename the key only: the values keep their own percent-encoding
        conninfo = base + "?" + _SSL_KEY.sub(r"\1sslmode=", query)
    return conninfo, match.group("driver").lower()


def problem(conninfo: str) -> str | None:
    """What is wrong with the string's shape, in words that quote none of it; None if the
    shape is fine (libpq may still refuse it: see masked())."""
    if _URI.match(conninfo):
        rest = conninfo.split("://", 1)[1]
        if "@" not in rest:
            return None
        head = rest.rsplit("@", 1)[0]  # user:password, if the URI is well formed
        if "=" in head:  # a query parameter with an @ in it (user=me@corp): not userinfo
            return None
        if "@" in head:
            return f"its user or password contains an unencoded @: {ENCODE_HINT}"
        if any(char in head for char in "/?#"):
            return f"its user or password contains an unencoded / ? or #: {ENCODE_HINT}"
        if " " in head:
            return f"its user or password contains a space: {ENCODE_HINT}"
        return None
    if "://" in conninfo:
        return (
            "its scheme is not postgresql:// or postgres:// (SQLAlchemy's "
            "postgresql+driver:// is accepted too)"
        )
    if "=" not in conninfo and ("@" in conninfo or ":" in conninfo):
        return "it has no scheme: write postgresql://user:password@host:5432/dbname"
    return None


def masked(message: str, conninfo: str) -> str:
    """libpq's message with every quoted piece of the input removed, except parameter names
    (``invalid connection option "bogus"`` for ``bogus=1``)."""

    def mask(match: re.Match[str]) -> str:
        quoted = match.group(0)[1:-1]
        if _NAME.fullmatch(quoted) and f"{quoted}=" in conninfo:
            return match.group(0)
        return '"…"'

    return _QUOTED.sub(mask, message)


def ssl_problem(conninfo: str) -> str | None:
    """asyncpg's ssl= values that libpq's sslmode cannot take."""
    if "sslmode=" not in conninfo:
        return None
    query = conninfo.partition("?")[2]
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "sslmode" and value not in _SSL_MODES:
            return (
                "its ssl/sslmode parameter is not one of libpq's sslmode values "
                f"({', '.join(sorted(_SSL_MODES))}): write sslmode=require (for example)"
            )
    return None
