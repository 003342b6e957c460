"""One tiny app per variant, all serving GET /users/{id} (and GET /ping) the same way.

Every app reads the database from ``DBPOOL_URL`` and its pool size from ``BENCH_POOL_SIZE``
(default 10), and returns the same JSON body built the same way, so that only the way the
connection is obtained differs.

Two switches for the CPU harness (``bench/cpu.py``), read when any app is imported:
``BENCH_GC=off`` disables the cyclic garbage collector; ``BENCH_GC_STATS=FILE`` times every
collection and writes the totals to FILE on SIGUSR2.
"""

import gc
import json
import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any


def _gc_hooks() -> None:
    if os.environ.get("BENCH_GC") == "off":
        gc.disable()
    path = os.environ.get("BENCH_GC_STATS")
    if not path:
        return
    counts, seconds, started, dumps = [0, 0, 0], [0.0, 0.0, 0.0], [0.0], [0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            counts[info["generation"]] += 1
            seconds[info["generation"]] += time.perf_counter() - started[0]

    def dump(signum: int, frame: FrameType | None) -> None:
        dumps[0] += 1
        stats = {"dump": dumps[0], "counts": counts, "seconds": seconds,
                 "tracked": len(gc.get_objects()), "enabled": gc.isenabled()}  # fmt: skip
        Path(path).write_text(json.dumps(stats))

    gc.callbacks.append(timed)
    signal.signal(signal.SIGUSR2, dump)


_gc_hooks()
