"""GET /pool/dashboard: one self-contained HTML page that polls /pool/stats and draws it.

The page is package data (_dashboard.html): no CDN, no external asset, hand-written SVG,
so it works on a machine without internet. It fetches `stats` relative to its own URL,
so it follows whatever prefix the router was included under.
"""

from functools import lru_cache
from importlib.resources import files


@lru_cache(maxsize=1)
def page() -> str:
    """The dashboard's HTML, read once from the package."""
    return files("fastapi_dbpool").joinpath("_dashboard.html").read_text(encoding="utf-8")
