"""The instrumentation's cost: throughput with DBPOOL_METRICS on / off, paired, same run.

A ratio from one pair of runs on a 2-core machine scatters by ±10 % or more, so a 3 % budget
cannot be read off it. Here the two are measured in many short, alternating slices (A B B A …),
each pair gives one ratio, and the verdict is the median of the ratios with a bootstrap 95 %
interval: the budget is met when the whole interval lies above 0.97.

- pool: both pools open side by side in one process; the same tasks loop acquire + the
  endpoint's query + release through transaction() (what get_conn runs), alternating pools.
- http: variant 1 and variant 2 of the harness (same app, DBPOOL_METRICS=false) under wrk,
  alternating runs.
"""

import asyncio
import random
import statistics
import time
from pathlib import Path
from typing import Any

import uvloop

from bench import load
from bench.poolloop import USERS, _psycopg_query
from bench.servers import App
from fastapi_dbpool import DatabasePool, PoolSettings, transaction

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
    pools = {
        on: DatabasePool(PoolSettings(url=url, min_size=size, max_size=size, metrics=on))
        for on in (True, False)
    }
    for database in pools.values():
        await database.open()
        await database.pool.wait()
    try:

        async def run(database: DatabasePool, seconds: float) -> float:
            stop = time.perf_counter() + seconds
            count = 0

            async def worker() -> None:
                nonlocal count
                rand = random.Random()
                while time.perf_counter() < stop:
                    async with transaction(database) as conn:
                        await _psycopg_query(conn, rand.randint(1, USERS))
                    count += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(tasks)))
            return count / (time.perf_counter() - started)

        for database in pools.values():  # warm-up: prepared statements, caches
            await run(database, 0.5)
        ratios = []
        for pair in range(pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            ops = {on: await run(pools[on], slice_s) for on in order}
            ratios.append(ops[True] / ops[False])
        return ratios
    finally:
        for database in pools.values():
            await database.close()


def pool(url: str, size: int, tasks: int, slice_s: float, pairs: int) -> dict[str, Any]:
    """Paired pool-loop slices, metrics on / off, without HTTP."""
    ratios = uvloop.run(_pool_pairs(url, size, tasks, slice_s, pairs))
    return {"tasks": tasks, "slice_s": slice_s, **summarize(ratios)}


def http(on: App, off: App, script: Path, level: int, seconds: float, pairs: int) -> dict[str, Any]:
    """Paired wrk runs against variant 1 (metrics on) and variant 2 (off)."""
    for app in (on, off):
        load.run(app.url, script, level, 2)
    ratios, errors = [], 0
    for pair in range(pairs):
        order = (on, off) if pair % 2 == 0 else (off, on)
        rps = {}
        for app in order:
            result = load.run(app.url, script, level, seconds)
            rps[app.variant.key] = result["rps"]
            errors += result["errors"]
        ratios.append(rps[on.variant.key] / rps[off.variant.key])
    return {"level": level, "seconds": seconds, "errors": errors, **summarize(ratios)}


def line(name: str, result: dict[str, Any]) -> str:
    low, high = result["ci95"]
    verdict = "within" if result["within_budget"] else "NOT shown within"
    return (
        f"{name}: metrics on / off = {result['median']:.3f} (95 % CI {low:.3f}-{high:.3f}, "
        f"{result['pairs']} pairs): {verdict} the {1 - BUDGET:.0%} budget"
    )
