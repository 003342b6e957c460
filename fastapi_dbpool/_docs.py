"""The configuration table of the docs, generated from PoolSettings so it never drifts.

Run ``python -m fastapi_dbpool._docs`` to print it; a test checks docs/configuration.md.
"""

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


if __name__ == "__main__":
    print(settings_table(), end="")
