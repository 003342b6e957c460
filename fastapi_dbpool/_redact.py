"""Keep passwords out of every message this package emits or re-raises."""

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

from psycopg.conninfo import conninfo_to_dict

MASK = "***"

# key=value conninfo: password=secret or password='sec ret' (with \' escapes)
_KV_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
# URI userinfo: scheme://user:secret@host, up to the last '@' before the path
_URI_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@", re.IGNORECASE)


def secret_forms(secret: str) -> set[str]:
    """The forms a secret can take in text: raw, percent-encoded, percent-decoded, quoted."""
    forms = {secret, quote(secret, safe=""), quote(secret), unquote(secret)}
    forms.add("'" + secret.replace("\\", "\\\\").replace("'", "\\'") + "'")
    return {form for form in forms if form}


def passwords_in(conninfo: str) -> set[str]:
    """Every password-like token a connection string carries, even a malformed one."""
    found: set[str] = set()
    for match in _KV_PASSWORD.finditer(conninfo):
        value = match.group(1)
        found.add(value)
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            found.add(value[1:-1].replace("\\'", "'").replace("\\\\", "\\"))
    for match in _URI_USERINFO.finditer(conninfo):
        userinfo = match.group("userinfo")
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    try:
        password = urlsplit(conninfo).password
    except ValueError:
        password = None
    if password:
        found.add(password)
    return {token for token in found if token}


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every form of every secret in text, longest first, and mask URI passwords."""
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms |= secret_forms(secret)
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return mask_conninfo(text)


def mask_conninfo(text: str) -> str:
    """Mask whatever stands where a password stands in a URI or key=value string."""

    def _mask_userinfo(match: re.Match[str]) -> str:
        userinfo = match.group("userinfo")
        if ":" not in userinfo:
            return match.group(0)
        user = userinfo.split(":", 1)[0]
        return f"{match.group('scheme')}{user}:{MASK}@"

    text = _URI_USERINFO.sub(_mask_userinfo, text)
    return _KV_PASSWORD.sub(f"password={MASK}", text)


def describe_conninfo(conninfo: str) -> str:
    """Where a connection string points, for people: user@host:port/dbname, no password."""
    params = conninfo_to_dict(conninfo)
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user") or "(default user)"
    dbname = params.get("dbname") or "(default db)"
    return f"{user}@{host}:{port}/{dbname}"
