"""python -m fastapi_dbpool top URL: a live terminal view of a running app's /pool/stats."""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

_CLEAR = "\x1b[H\x1b[2J"
_COLUMNS = (
    ("pool", 16),
    ("status", 7),
    ("total", 6),
    ("free", 6),
    ("in_use", 7),
    ("waiting", 8),
    ("wait p95 ms", 12),
    ("hold p95 ms", 12),
    ("503s", 6),
    ("lost", 6),
    ("advice", 17),
)


def fetch(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """The stats JSON at url."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a URL the user gave
        data: dict[str, Any] = json.load(response)
        return data


def row(stats: dict[str, Any]) -> list[str]:
    timings = stats.get("timings") or {}
    wait = (timings.get("acquire_wait_ms") or {}).get("window", {})
    hold = (timings.get("hold_ms") or {}).get("window", {})
    advice = (stats.get("advice") or {}).get("verdict", "-")
    return [
        str(stats.get("name", "?")),
        str(stats.get("status", "?")),
        str(stats.get("total", 0)),
        str(stats.get("free", 0)),
        str(stats.get("in_use", 0)),
        str(stats.get("waiting", 0)),
        f"{wait.get('p95', 0):.2f}" if wait else "-",
        f"{hold.get('p95', 0):.2f}" if hold else "-",
        str(sum((stats.get("unavailable") or {}).values())),
        str((stats.get("counters") or {}).get("connections_lost", 0)),
        advice,
    ]


def frame(url: str) -> str:
    """One screen: a header line and the table (or why the app could not be read)."""
    lines = [f"fastapi_dbpool top  {url}  {time.strftime('%H:%M:%S')}"]
    header = "".join(
        name.rjust(width) if i else name.ljust(width) for i, (name, width) in enumerate(_COLUMNS)
    )
    lines.append(header)
    try:
        stats = fetch(url)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        lines.append(f"unreachable: {exc}")
    else:
        cells = row(stats)
        lines.append(
            "".join(
                cell.rjust(width) if i else cell.ljust(width)
                for i, (cell, (_, width)) in enumerate(zip(cells, _COLUMNS, strict=True))
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastapi_dbpool top", description="Live view of a running app's /pool/stats."
    )
    parser.add_argument("url", help="the app, e.g. http://127.0.0.1:8000 (or its /pool/stats URL)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    args = parser.parse_args(argv)
    url = (
        args.url
        if args.url.rstrip("/").endswith("/pool/stats")
        else args.url.rstrip("/") + "/pool/stats"
    )
    if args.once:
        print(frame(url))
        return 0
    try:
        while True:
            sys.stdout.write(_CLEAR + frame(url) + "\n(Ctrl-C to quit)\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
