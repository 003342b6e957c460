"""What fastapi_dbpool.otel's histograms cost per checkout: pool-loop throughput, paired.

python -m bench.otelcost [--dsn URL] [--pairs 16] [--slice 1.0]

One pool in one process, 64 tasks looping acquire + SELECT 1 + release through transaction()
(what get_conn runs), its recorder's distributions swapped between the plain ones and the
ones that also record into the SDK's histograms (an in-memory reader), slice by slice (A B B A
...), as bench/overhead.py does for DBPOOL_METRICS. The gauges cost nothing here: they are read
when the MeterProvider collects, not per checkout.
"""

import argparse
import statistics
import timeit
from functools import partial
from typing import Any

import uvloop
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from bench import database as dbmod
from bench.overhead import summarize
from bench.poolloop import ops_per_second
from fastapi_dbpool import PoolSettings
from fastapi_dbpool._timings import Distribution
from fastapi_dbpool.database import DatabasePool
from fastapi_dbpool.otel import POOL_NAME, PoolInstruments, _Instruments, _Recorded
from fastapi_dbpool.session import transaction


async def _select_one(conn: Any, _: int) -> Any:
    cur = await conn.execute("SELECT 1")
    return await cur.fetchone()


async def _pairs(url: str, pairs: int, slice_s: float) -> dict[bool, list[float]]:
    database = DatabasePool(PoolSettings(url=url, min_size=10, max_size=10))
    recorder = database.recorder
    assert recorder is not None
    plain = (Distribution(), Distribution())
    PoolInstruments(MeterProvider(metric_readers=[InMemoryMetricReader()])).attach([database])
    recorded = (recorder.wait, recorder.hold)
    await database.open()
    await database.pool.wait()
    try:

        async def run(on: bool, seconds: float) -> float:
            recorder.wait, recorder.hold = recorded if on else plain
            return await ops_per_second(lambda: transaction(database), _select_one, 64, seconds)

        for on in (True, False):
            await run(on, 0.5)
        slices: dict[bool, list[float]] = {True: [], False: []}
        for pair in range(pairs):
            for on in (True, False) if pair % 2 == 0 else (False, True):
                slices[on].append(await run(on, slice_s))
        return slices
    finally:
        await database.close()


def record_cost(samples: int = 100_000) -> tuple[float, float]:
    """ns per Distribution.add, plain and recording into an SDK histogram (best of 5)."""
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    recorded = _Recorded(_Instruments(provider).wait_time, {POOL_NAME: "default"})
    plain = Distribution()
    best = [
        min(timeit.repeat(partial(item.add, 0.5), number=samples, repeat=5)) / samples * 1e9
        for item in (plain, recorded)
    ]
    return best[0], best[1]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otelcost", description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL to use (default: an embedded one)")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--slice", type=float, default=1.0)
    args = parser.parse_args()
    plain, recorded = record_cost()
    print(f"Distribution.add: {plain:.0f} ns plain, {recorded:.0f} ns recording into the SDK "
          f"(a checkout adds two: wait and use)")  # fmt: skip
    with dbmod.database(args.dsn) as db:
        slices = uvloop.run(_pairs(db.url, args.pairs, args.slice))
    result = summarize([on / off for on, off in zip(slices[True], slices[False], strict=True)])
    low, high = result["ci95"]
    on, off = statistics.median(slices[True]), statistics.median(slices[False])
    print(
        f"otel histograms on / off, pool loop: median {result['median']:.3f} "
        f"(95 % interval {low:.3f} - {high:.3f}, {result['pairs']} pairs); "
        f"{on:,.0f} / {off:,.0f} checkouts/s, {(1 / on - 1 / off) * 1e6:.1f} us more each"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
