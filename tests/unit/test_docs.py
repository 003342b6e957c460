"""The docs' configuration table is the one the model generates."""

from pathlib import Path

import pytest

from fastapi_dbpool._docs import END, START, with_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("doc", ["README.md", "docs/configuration.md"])
def test_configuration_table_matches_the_settings_model(doc: str) -> None:
    text = (ROOT / doc).read_text()
    assert START in text and END in text
    assert with_table(text) == text, "the table is stale: run make docs"
