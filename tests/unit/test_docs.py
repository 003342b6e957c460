"""The docs' configuration table is the one the model generates."""

from pathlib import Path

import pytest

from fastapi_dbpool._docs import settings_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("doc", ["README.md", "docs/configuration.md"])
def test_configuration_table_matches_the_settings_model(doc: str) -> None:
    text = (ROOT / doc).read_text()
    start = text.index("<!-- settings-table:start -->\n") + len("<!-- settings-table:start -->\n")
    end = text.index("<!-- settings-table:end -->")
    assert text[start:end] == settings_table(), "regenerate: python -m fastapi_dbpool._docs"
