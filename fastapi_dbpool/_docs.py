"""The configuration table of the docs, generated from PoolSettings so it never drifts.

``python -m fastapi_dbpool._docs --write README.md docs/configuration.md`` (``make docs``)
rewrites the table between the markers; a test checks that it is current.
"""

import sys
from pathlib import Path

from pydantic.fields import FieldInfo

from fastapi_dbpool.settings import PoolSettings, env_var


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "(required)"
    if field.default is None:
        return "unset"
    if isinstance(field.default, bool):
        return str(field.default).lower()
    return str(field.default)


def settings_table() -> str:
    """A Markdown table: setting, environment variable, default, meaning."""
    rows = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for name, field in PoolSettings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | `{env_var(name)}` | `{_default(field)}` | {description} |")
    return "\n".join(rows) + "\n"


START = "<!-- settings-table:start -->\n"
END = "<!-- settings-table:end -->"


def with_table(text: str) -> str:
    """text with the settings table between its markers replaced by the current one."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}{settings_table()}{END}{tail}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        for name in sys.argv[2:]:
            path = Path(name)
            path.write_text(with_table(path.read_text()))
    else:
        print(settings_table(), end="")
