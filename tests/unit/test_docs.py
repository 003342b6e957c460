"""The docs' configuration table is the one the model generates."""

from pathlib import Path

from fastapi_dbpool._docs import settings_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_table_matches_the_settings_model() -> None:
    text = DOCS.read_text()
    start = text.index("<!-- settings-table:start -->\n") + len("<!-- settings-table:start -->\n")
    end = text.index("<!-- settings-table:end -->")
    assert text[start:end] == settings_table(), "regenerate: python -m fastapi_dbpool._docs"
