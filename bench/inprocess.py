"""``python -m bench.inprocess MODULE...``: CPU per request of each app module, called as an
ASGI app in one process (no HTTP server, no wrk: none of their noise), in interleaved rounds.

Each sample runs a fresh process per module: 8 concurrent callers, 3,000 ``GET /users/{id}``.
The first module is the reference of the ratios. Needs DBPOOL_URL with bench_users seeded
(``python -m bench`` seeds it), e.g.::

    python -m bench.inprocess bench.apps.psycopg_pool bench.apps.dbpool --rounds 5
"""

import argparse
import asyncio
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

CALLERS = 8


async def _call(app: Any, path: str, state: dict[str, Any]) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [], "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80), "state": dict(state),
    }  # fmt: skip
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


async def _sample(module: str, requests: int) -> dict[str, float]:
    app = importlib.import_module(module).app
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    state = scope["state"]

    async def caller(count: int) -> None:
        for _ in range(count):
            assert await _call(app, f"/users/{random.randint(1, 10_000)}", state) == 200

    await caller(200)  # warm-up: the pool filled, statements prepared
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(requests // CALLERS) for _ in range(CALLERS)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await lifespan
    return {"cpu_us": cpu / requests * 1e6, "rps": requests / wall}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess")
    parser.add_argument("modules", nargs="+")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--sample", help=argparse.SUPPRESS)  # one sample, in a child process
    args = parser.parse_args()
    if args.sample:
        import uvloop

        print(json.dumps(uvloop.run(_sample(args.sample, args.requests))))
        return
    samples: dict[str, list[dict[str, float]]] = {module: [] for module in args.modules}
    for _ in range(args.rounds):
        for module in args.modules:
            out = subprocess.run(
                [sys.executable, "-m", "bench.inprocess", "--sample", module, "x",
                 "--requests", str(args.requests)],
                check=True, capture_output=True, text=True, env=os.environ,
            ).stdout  # fmt: skip
            samples[module].append(json.loads(out.strip().splitlines()[-1]))
    reference = samples[args.modules[0]]
    for module, runs in samples.items():
        ratio = statistics.median(
            run["rps"] / ref["rps"] for run, ref in zip(runs, reference, strict=True)
        )
        print(
            f"{module:45s} cpu/request {statistics.median(r['cpu_us'] for r in runs):6.0f} us  "
            f"{statistics.median(r['rps'] for r in runs):6.0f} req/s  x first {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
