"""The instrumentation's cost: throughput with DBPOOL_METRICS on / off, paired, same run.

A ratio from one pair of runs on a 2-core machine scatters by ±10 % or more, so a 3 % budget
cannot be read off it. Here the two are measured in many short, alternating slices (A B B A …),
each pair gives one ratio, and the verdict is the median of the ratios with a bootstrap 95 %
interval: the budget is met when the whole interval lies above 0.97.

- pool: one pool in one process, its recorder swapped in and out between slices; 64 tasks loop
  acquire + the endpoint's query + release through transaction() (what get_conn runs).
- http: one uvicorn process (bench/apps/overhead_pair.py), variant 1's endpoint, its pool's
  recorder swapped in and out between wrk runs. (Variants 1 and 2 are two processes with their
  own server backends: on 2 cores, where the scheduler puts each biases their ratio by several
  % either way, run to run, and pairing cannot cancel that; one pool in one process can.)
"""

import json
import random
import statistics
import urllib.request
from pathlib import Path
from typing import Any

import uvloop

from bench import load, servers
from bench.poolloop import _psycopg_query, ops_per_second
from bench.servers import App
from bench.variants import Variant
from fastapi_dbpool import PoolSettings
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.session import transaction

BUDGET = 0.97  # metrics-on throughput must stay at or above this share of metrics-off


def summarize(ratios: list[float], seed: int = 1) -> dict[str, Any]:
    """Median of the paired ratios and a percentile-bootstrap 95 % interval of that median."""
    rand = random.Random(seed)
    medians = sorted(statistics.median(rand.choices(ratios, k=len(ratios))) for _ in range(2000))
    low, high = medians[int(0.025 * len(medians))], medians[int(0.975 * len(medians)) - 1]
    return {
        "median": statistics.median(ratios),
        "ci95": [low, high],
        "pairs": len(ratios),
        "within_budget": low >= BUDGET,
        "ratios": ratios,
    }


async def _pool_pairs(url: str, size: int, tasks: int, slice_s: float, pairs: int) -> list[float]:
    # One pool, its recorder swapped in and out between slices: the same connections, the same
    # server backends, for both halves of every pair.
    database = DatabasePool(PoolSettings(url=url, min_size=size, max_size=size, metrics=True))
    recorder = database.recorder
    await database.open()
    await database.pool.wait()
    try:

        async def run(on: bool, seconds: float) -> float:
            database.recorder = recorder if on else None
            return await ops_per_second(
                lambda: transaction(database), _psycopg_query, tasks, seconds
            )

        for on in (True, False):  # warm-up: prepared statements, caches
            await run(on, 0.5)
        ratios = []
        for pair in range(pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            ops = {on: await run(on, slice_s) for on in order}
            ratios.append(ops[True] / ops[False])
        return ratios
    finally:
        database.recorder = recorder
        await database.close()


def pool(url: str, size: int, tasks: int, slice_s: float, pairs: int) -> dict[str, Any]:
    """Paired pool-loop slices, metrics on / off, without HTTP."""
    ratios = uvloop.run(_pool_pairs(url, size, tasks, slice_s, pairs))
    return {"tasks": tasks, "slice_s": slice_s, **summarize(ratios)}


PAIR = Variant("overhead-pair", -1, "metrics on and off, one process", "bench.apps.overhead_pair")


def http(
    database_url: str,
    run_dir: Path,
    pool_size: int,
    levels: list[int],
    seconds: float,
    pairs: int,
) -> dict[str, Any]:
    """Paired wrk runs against one process and one pool, its recorder on, then off."""
    script = load.write_scripts(run_dir)["users"]
    out = {}
    with servers.running([PAIR], database_url, run_dir, pool_size) as apps:
        app = apps[PAIR.key]
        for level in levels:
            print(f"bench: instrumentation overhead, HTTP c={level}, {pairs} pairs...", flush=True)
            out[f"c{level}"] = _http_level(app, script, level, seconds, pairs)
            print("  " + line(f"HTTP c={level}", out[f"c{level}"]), flush=True)
    return out


def _switch(app: App, on: bool) -> None:
    url = f"{app.url}/bench/metrics/{'on' if on else 'off'}"
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as answer:
        if json.loads(answer.read()) != {"on": on}:
            raise RuntimeError(f"could not turn the recorder {'on' if on else 'off'}")


def _http_level(app: App, script: Path, level: int, seconds: float, pairs: int) -> dict[str, Any]:
    for on in (True, False):
        _switch(app, on)
        load.run(app.url, script, level, 2)
    ratios, errors = [], 0
    for pair in range(pairs):
        order = (True, False) if pair % 2 == 0 else (False, True)
        rps = {}
        for on in order:
            _switch(app, on)
            result = load.run(app.url, script, level, seconds)
            rps[on] = result["rps"]
            errors += result["errors"]
        ratios.append(rps[True] / rps[False])
    _switch(app, True)
    return {"level": level, "seconds": seconds, "errors": errors, **summarize(ratios)}


def line(name: str, result: dict[str, Any]) -> str:
    low, high = result["ci95"]
    verdict = "within" if result["within_budget"] else "NOT shown within"
    return (
        f"{name}: metrics on / off = {result['median']:.3f} (95 % CI {low:.3f}-{high:.3f}, "
        f"{result['pairs']} pairs): {verdict} the {1 - BUDGET:.0%} budget"
    )
