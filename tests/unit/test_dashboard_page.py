"""The dashboard page's own script, run in Node with a stand-in browser: the polling interval
and the history window a query string asks for are clamped (issue #21: ?interval=3000000
overflowed setTimeout, which then fired at once, polling without pause)."""

import json
import re
import shutil
import subprocess

import pytest

from fastapi_dbpool._dashboard import page

NODE = shutil.which("node")
SET_TIMEOUT_MAX = 2**31 - 1  # ms; a longer delay overflows and fires at once

# The page's script in a sandbox: location, document, fetch and setTimeout stand-ins; the
# delays setTimeout was given and the page's window, printed once the first poll is over.
HARNESS = """
const vm = require("vm");
const [script, search] = [process.argv[1], process.argv[2]];
const delays = [];
const element = () => ({dataset: {}, className: "", textContent: "", replaceChildren() {}});
const sandbox = {
  location: {search}, URLSearchParams, console,
  document: {getElementById: element},
  addEventListener() {},
  fetch: () => Promise.reject(new Error("offline")),
  setTimeout: (callback, delay) => { delays.push(delay); },
};
vm.runInNewContext(script + "\\n;globalThis.WINDOW_MS = WINDOW;", sandbox);
setImmediate(() => console.log(JSON.stringify({delays, window: sandbox.WINDOW_MS})));
"""


def run_page(search: str) -> dict[str, list[float] | float]:
    match = re.search(r"<script>(.*)</script>", page(), re.DOTALL)
    assert match is not None
    assert NODE is not None
    result = subprocess.run(
        [NODE, "-e", HARNESS, match.group(1), search],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(NODE is None, reason="no node on PATH to run the page's script")
@pytest.mark.parametrize(
    ("search", "interval_ms", "window_ms"),
    [
        ("", 1000, 5 * 60_000),  # the defaults
        ("?interval=0.25&minutes=1", 250, 60_000),  # as asked, within the bounds
        ("?interval=3000000", 3_600_000, 5 * 60_000),  # issue #21: at most an hour
        ("?interval=1e400&minutes=1e400", 3_600_000, 24 * 60 * 60_000),  # Infinity
        ("?interval=0.001&minutes=0.01", 200, 30_000),  # the floors
        ("?interval=abc&minutes=-3", 1000, 30_000),  # not a number: the default
    ],
)
def test_the_interval_and_window_are_clamped(
    search: str, interval_ms: float, window_ms: float
) -> None:
    seen = run_page(search)
    assert seen["delays"] == [interval_ms]
    assert seen["window"] == window_ms
    assert interval_ms <= SET_TIMEOUT_MAX
