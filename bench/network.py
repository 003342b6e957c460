"""``python -m bench.network``: what loopback hides. Every app reaches PostgreSQL through
``bench.delayproxy``, which adds 0, 1 and 5 ms of round trip; per request shape: p50 and p99
at c=1, req/s at c=32, and the round trips the proxy counted per request.

python -m bench.network                full run (~7 min): 2 interleaved rounds, 3 s per cell
python -m bench.network --quick        1 round, 2 s per cell (~3 min)
python -m bench.network --rtt 0,1,5    the added round trips, ms

The effective round trip is measured too (median of 200 ``SELECT 1`` in autocommit through the
proxy, minus the same on loopback): the proxy's threads overshoot by ~0.1 ms each way.
Results: bench/results/<time>-network/network.json, and a chart with --chart.
"""

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench import database as dbmod
from bench import delayproxy, load, servers
from bench.cpu import write_script
from bench.variants import Variant

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CHART = ROOT / "docs" / "images" / "bench-network.svg"


@dataclass(frozen=True)
class Shape:
    key: str
    title: str
    module: str
    prefix: str


SHAPES: tuple[Shape, ...] = (
    Shape("conndep-read", "`Depends(get_conn)`, one-row read", "bench.apps.shapes_dbpool",
          "/users/"),
    Shape("readconndep-read", "`ReadConnDep`, one-row read", "bench.apps.shapes_dbpool",
          "/read/"),
    Shape("conndep-write", "`Depends(get_conn)`, one-row write", "bench.apps.shapes_dbpool",
          "/write/"),
    Shape("psycopg-read", "raw psycopg pool, one-row read", "bench.apps.shapes_psycopg",
          "/users/"),
    Shape("psycopg-write", "raw psycopg pool, one-row write", "bench.apps.shapes_psycopg",
          "/write/"),
    Shape("asyncpg-read", "asyncpg pool, one-row read (autocommit)", "bench.apps.shapes_asyncpg",
          "/users/"),
    Shape("asyncpg-write-tx", "asyncpg pool, one-row write in `conn.transaction()`",
          "bench.apps.shapes_asyncpg", "/write/"),
    Shape("sqlalchemy-read", "SQLAlchemy async (psycopg), `engine.connect()`, one-row read",
          "bench.apps.sqlalchemy_async", "/users/"),
)  # fmt: skip


def ping_ms(url: str, count: int = 200) -> float:
    """Median ms of SELECT 1 in autocommit on one connection to url."""
    with psycopg.connect(url, autocommit=True) as conn:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def quiet(proxy: delayproxy.Control) -> int:
    """Wait until no round trip passes the proxy for 0.2 s (wrk stops sending, not the requests
    it had in flight: they finish after it); the round trips counted so far."""
    last, deadline = proxy.stats()["round_trips"], time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = proxy.stats()["round_trips"]
        if now == last:
            break
        last = now
    return int(last)


def _cell(app: servers.App, script: Path, proxy: delayproxy.Control, seconds: float
          ) -> dict[str, Any]:  # fmt: skip
    before = quiet(proxy)
    one = load.run(app.url, script, 1, seconds)
    trips = quiet(proxy) - before
    many = load.run(app.url, script, 32, seconds)
    return {"p50_ms": one["p50_ms"], "p99_ms": one["p99_ms"], "rps_c1": one["rps"],
            "round_trips": trips / max(1, one["requests"]), "rps": many["rps"],
            "errors": one["errors"] + many["errors"]}  # fmt: skip


def measure(url: str, run_dir: Path, rtts: list[float], rounds: int, seconds: float
            ) -> dict[str, Any]:  # fmt: skip
    info = conninfo_to_dict(url)
    out: dict[str, Any] = {"rtt": {}}
    with delayproxy.running(str(info.get("host", "127.0.0.1")), int(str(info.get("port", 5432)))
                            ) as proxy:  # fmt: skip
        proxied = make_conninfo(url, host=delayproxy.HOST, port=str(proxy.port))
        modules = list(dict.fromkeys(shape.module for shape in SHAPES))
        variants = {m: Variant(m.rsplit(".", 1)[1], -1, m, m) for m in modules}
        scripts = {s.prefix: write_script(run_dir, s.prefix) for s in SHAPES}
        with servers.running(list(variants.values()), proxied, run_dir, 10) as apps:
            for shape in SHAPES:  # warm-up: pools filled, statements prepared
                app = apps[variants[shape.module].key]
                load.run(app.url, scripts[shape.prefix], 32, 2)
            for rtt in rtts:
                proxy.set_rtt(rtt)
                loopback = ping_ms(url)
                effective = ping_ms(proxied) - loopback
                print(f"bench.network: +{rtt:g} ms set, {effective:.2f} ms effective "
                      f"(SELECT 1 through the proxy less loopback's {loopback:.3f} ms)",
                      flush=True)  # fmt: skip
                runs: dict[str, list[dict[str, Any]]] = {s.key: [] for s in SHAPES}
                for r in range(rounds):
                    order = SHAPES[r % len(SHAPES) :] + SHAPES[: r % len(SHAPES)]
                    for shape in order[::-1] if r % 2 else order:
                        app = apps[variants[shape.module].key]
                        result = _cell(app, scripts[shape.prefix], proxy, seconds)
                        runs[shape.key].append(result)
                        print(f"  rtt {rtt:g} round {r + 1} {shape.key:18s} p50 "
                              f"{result['p50_ms']:6.2f} ms p99 {result['p99_ms']:6.2f} ms "
                              f"{result['round_trips']:.2f} round trips, c=32 "
                              f"{result['rps']:7,.0f} req/s", flush=True)  # fmt: skip
                out["rtt"][f"{rtt:g}"] = {
                    "effective_ms": effective,
                    "cells": {key: {name: statistics.median(r[name] for r in v)
                                    for name in v[0] if name != "errors"}
                              | {"errors": sum(r["errors"] for r in v), "rounds": v}
                              for key, v in runs.items()},
                }  # fmt: skip
    return out


def table(results: dict[str, Any]) -> str:
    rtts = list(results["rtt"])
    head = "| request | round trips | " + " | ".join(
        f"+{rtt} ms ({results['rtt'][rtt]['effective_ms']:.2f}): p50 / p99 ms, req/s c=32"
        for rtt in rtts
    )
    rows = [head + " |", "|---|---:|" + "---:|" * len(rtts)]
    for shape in SHAPES:
        cells = [results["rtt"][rtt]["cells"][shape.key] for rtt in rtts]
        trips = statistics.median(c["round_trips"] for c in cells)
        figures = [f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f}, {c['rps']:,.0f}" for c in cells]
        rows.append(f"| {shape.title} | {trips:.2f} | " + " | ".join(figures) + " |")
    return "\n".join(rows) + "\n"


def chart(results: dict[str, Any], path: Path = CHART) -> Path:
    """p50 at c=1 and req/s at c=32 against the added round trip, one line per shape."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    pyplot.rcParams["svg.hashsalt"] = "fastapi-dbpool-bench"
    pyplot.rcParams["svg.fonttype"] = "none"
    rtts = list(results["rtt"])
    xs = [results["rtt"][r]["effective_ms"] for r in rtts]
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.6))
    for index, shape in enumerate(SHAPES):
        cells = [results["rtt"][r]["cells"][shape.key] for r in rtts]
        style = {"marker": "o", "color": f"C{index}", "label": shape.title.replace("`", ""),
                 "linewidth": 2.4 if "dbpool" in shape.module else 1.2}  # fmt: skip
        left.plot(xs, [c["p50_ms"] for c in cells], **style)
        right.plot(xs, [c["rps"] for c in cells], **style)
    left.set_ylabel("p50 ms at c=1")
    right.set_ylabel("req/s at c=32")
    for axes in (left, right):
        axes.set_xlabel("round trip added by the proxy, ms (measured)")
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
    right.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.suptitle(f"One request through a delaying proxy, run {results['started']}",
                    fontsize=10)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    pyplot.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.network",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rtt", default="0,1,5", help="added round trips, ms")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    parser.add_argument("--chart", action="store_true", help=f"write {CHART.name} too")
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DATABASE_URL"))
    args = parser.parse_args(argv)  # fmt: skip
    rounds, seconds = (1, 2.0) if args.quick else (args.rounds, args.duration)
    rtts = [float(x) for x in args.rtt.split(",")]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / f"{stamp}-network"
    run_dir.mkdir(parents=True, exist_ok=True)
    load.wrk_path()
    loadavg = os.getloadavg()[0]
    with dbmod.database(args.dsn) as db:
        results = measure(db.url, run_dir, rtts, rounds, seconds)
    results.update(started=stamp, rounds=rounds, seconds=seconds, loadavg_start=loadavg,
                   loadavg_end=os.getloadavg()[0])  # fmt: skip
    (run_dir / "network.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    if args.chart:
        print(f"bench.network: wrote {chart(results)}")
    print(f"bench.network: raw results {run_dir / 'network.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
