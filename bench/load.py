"""HTTP load with wrk on loopback: fixed concurrency, fixed duration, random user ids."""

import json
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

USER_IDS = 10_000

_SCRIPT = """
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end
function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end
%(request)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d,"mean_us":%%.1f,"errors":{"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status,
    e.timeout))
end
"""

_USERS = f"""
function request()
  return wrk.format("GET", "/users/" .. math.random(1, {USER_IDS}))
end
"""

_PING = """
function request()
  return wrk.format("GET", "/ping")
end
"""


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError(
            "wrk is not installed: apt-get install -y wrk (make bench does it when run as root)"
        )
    return path


def write_scripts(directory: Path) -> dict[str, Path]:
    scripts = {}
    for name, request in (("users", _USERS), ("ping", _PING)):
        path = directory / f"wrk-{name}.lua"
        path.write_text(_SCRIPT % {"request": request})
        scripts[name] = path
    return scripts


def run(url: str, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run: req/s, latency percentiles (ms) and errors (non-2xx count as errors)."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"load goes to 127.0.0.1 only, not {url}")
    command = [
        wrk_path(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr}{result.stdout}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(raw["errors"].values())
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "requests": raw["requests"],
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
        "error_kinds": {k: v for k, v in raw["errors"].items() if v},
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of the same setup (from run) in one: req/s, p50 and p99 the median of the runs,
    errors their sum, and the runs themselves as "rounds"."""
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "rounds": runs,
    }
