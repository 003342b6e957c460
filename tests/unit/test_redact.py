"""Redaction: every form of a password is masked, in URIs and key=value strings."""

import pytest

from fastapi_dbpool._redact import mask_conninfo, passwords_in, redact

PASSWORD = "p@ss:w%rd/#? SENTINEL"
ENCODED = "p%40ss%3Aw%25rd%2F%23%3F%20SENTINEL"


@pytest.mark.parametrize(
    "text",
    [
        f"connection to postgresql://app:{ENCODED}@h:5432/db failed",
        f"password was {PASSWORD}",
        f"host=h password='{PASSWORD}' dbname=x",
        f"encoded: {ENCODED}",
    ],
)
def test_redact_masks_every_form(text: str) -> None:
    cleaned = redact(text, [PASSWORD])
    assert "SENTINEL" not in cleaned
    assert "***" in cleaned


def test_mask_conninfo_keeps_user_and_host() -> None:
    masked = mask_conninfo("postgresql://app:secret@db:5432/app and password=secret2")
    assert masked == "postgresql://app:***@db:5432/app and password=***"


def test_passwords_in_finds_uri_and_key_value_passwords() -> None:
    assert ENCODED in passwords_in(f"postgresql://app:{ENCODED}@h/db")
    assert PASSWORD in passwords_in(f"host=h password='{PASSWORD}'")
    assert "bare" in passwords_in("host=h password=bare")


def test_passwords_in_survives_a_malformed_uri() -> None:
    assert "s3cr%zzet" in passwords_in("postgresql://app:s3cr%zzet@h/db")
