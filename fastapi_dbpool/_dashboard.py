"""GET /pool/dashboard: one self-contained HTML page that polls /pool/stats and draws it.

The page is package data (_dashboard.html): no CDN, no external asset, hand-written SVG,
so it works on a machine without internet. It fetches `stats` relative to its own URL,
so it follows whatever prefix the router was included under.
"""

from functools import lru_cache
from importlib.resources import files

from starlette.responses import HTMLResponse

# The browser itself refuses anything but the page's own code and same-origin requests.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'self'"
)


@lru_cache(maxsize=1)
def page() -> str:
    """The dashboard's HTML, read once from the package."""
    return files("fastapi_dbpool").joinpath("_dashboard.html").read_text(encoding="utf-8")


def response() -> HTMLResponse:
    """The page, with a policy that keeps it self-contained."""
    return HTMLResponse(page(), headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
