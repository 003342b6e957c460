"""``python -m bench.ourframes``: where a request's CPU goes, in µs, by package and by our own
function, for ``Depends(get_conn)`` and ``ReadConnDep`` beside their DI floors.

Each app runs under uvicorn (as in bench/cpu.py) with wrk at c=32 while py-spy samples it
(non-blocking, idle threads excluded, so samples are CPU) and /proc gives its CPU per request;
a package's µs per request is its share of the samples times that CPU. Rounds alternate the
apps; the figures are the sums over rounds.

- self time by package: where the CPU is spent (fastapi_dbpool's own lines, psycopg's, ...);
- under our frames: samples with a fastapi_dbpool frame on the stack, split by the package of
  the innermost frame: what our code costs including what it calls (getconn, BEGIN, COMMIT);
- our functions: self time of each fastapi_dbpool function.

python -m bench.ourframes [--seconds 12] [--rounds 2] [--rate 250]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import database as dbmod
from bench import load, servers
from bench.cpu import CONNECTIONS, SINGLE, Cell, process_cpu, write_script
from bench.variants import Variant

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEYS = ("floor", "conndep", "floor-ac", "readconndep", "raw", "raw-ac")
PAIRS = (("conndep", "floor"), ("readconndep", "floor-ac"))


OTEL = ("opentelemetry", "_logs", "metrics", "trace", "context", "propagate", "baggage")


def _frame_package(frame: str) -> str:
    """The package of a py-spy frame; py-spy gives paths relative to sys.path."""
    path = frame.rsplit(" (", 1)[-1].rstrip(")").rsplit(":", 1)[0]
    path = path.split("site-packages/", 1)[-1]
    for own in ("fastapi_dbpool", "bench"):
        if path.startswith(f"{own}/") or f"/{own}/" in path:
            return own
    top = path.split("/", 1)[0].removesuffix(".py")
    if path.startswith("<") or top in sys.stdlib_module_names or "/lib/python3" in path:
        return "asyncio and stdlib"
    return "opentelemetry" if top in OTEL else top


def tally(stacks: Path, into: dict[str, Counter[str]]) -> None:
    """Add one py-spy raw file's samples to the counters of into."""
    for line in stacks.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        leaf = _frame_package(frames[-1])
        into["total"]["all"] += count
        into["self"][leaf] += count
        if leaf == "fastapi_dbpool":
            into["ours"][frames[-1].split(" (", 1)[0] + " " + _where(frames[-1])] += count
        if any(_frame_package(frame) == "fastapi_dbpool" for frame in frames):
            into["under_ours"][leaf] += count


def _where(frame: str) -> str:
    path = frame.rsplit(" (", 1)[-1].rstrip(")").rsplit(":", 1)[0]
    return path.rpartition("fastapi_dbpool/")[2]


def profile_app(spy: str, app: servers.App, script: Path, seconds: float, rate: int,
                out: Path) -> dict[str, Any]:  # fmt: skip
    """py-spy on app while wrk loads it; CPU per request from /proc over the same wrk run."""
    spy_proc = subprocess.Popen(
        [spy, "record", "--pid", str(app.process.pid), "--duration", str(int(seconds) + 2),
         "--rate", str(rate), "--nonblocking", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)
    cpu = process_cpu(app.process.pid)
    result = load.run(app.url, script, CONNECTIONS, seconds)
    cpu = process_cpu(app.process.pid) - cpu
    spy_proc.wait(timeout=seconds + 60)
    return {"cpu_s": cpu, "requests": result["requests"], "rps": result["rps"]}


def run(url: str, run_dir: Path, seconds: float, rounds: int, rate: int) -> dict[str, Any]:
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if spy is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    cells: dict[str, Cell] = {cell.key: cell for cell in SINGLE if cell.key in KEYS}
    variants = {key: Variant(key, -1, cell.title, cell.module, env=dict(cell.env))
                for key, cell in cells.items()}  # fmt: skip
    script = write_script(run_dir, "/users/")
    counters: dict[str, dict[str, Counter[str]]] = {
        key: {name: Counter() for name in ("total", "self", "ours", "under_ours")} for key in cells
    }
    totals: dict[str, dict[str, float]] = {key: {"cpu_s": 0.0, "requests": 0} for key in cells}
    with servers.running(list(variants.values()), url, run_dir, 10) as apps:
        for key in cells:
            load.run(apps[key].url, script, CONNECTIONS, 2)
        for r in range(rounds):
            for key in list(cells)[:: -1 if r % 2 else 1]:
                out = run_dir / f"{key}-{r}.stacks"
                got = profile_app(spy, apps[key], script, seconds, rate, out)
                totals[key]["cpu_s"] += got["cpu_s"]
                totals[key]["requests"] += got["requests"]
                tally(out, counters[key])
                cpu_us = got["cpu_s"] / got["requests"] * 1e6
                print(f"  round {r + 1} {key:12s} {cpu_us:5.0f} us CPU/request "
                      f"{got['rps']:6,.0f} req/s under py-spy", flush=True)  # fmt: skip
    results: dict[str, Any] = {}
    for key, counter in counters.items():
        per_request = totals[key]["cpu_s"] / max(1, totals[key]["requests"]) * 1e6
        samples = max(1, counter["total"]["all"])

        def us(
            counts: Counter[str], per: float = per_request, n: int = samples
        ) -> dict[str, float]:
            return {name: count / n * per for name, count in counts.most_common()}

        results[key] = {"cpu_us": per_request, "samples": samples,
                        "self": us(counter["self"]), "under_ours": us(counter["under_ours"]),
                        "ours": us(counter["ours"])}  # fmt: skip
    return results


GROUPS = ("fastapi_dbpool", "fastapi", "starlette", "psycopg", "psycopg_pool", "uvicorn",
          "anyio", "pydantic", "opentelemetry", "asyncio and stdlib")  # fmt: skip


def table(results: dict[str, Any]) -> str:
    """Self µs per request by package, each of ours beside its floor, and the difference."""
    head = "| self time, µs per request |"
    cols = [k for pair in PAIRS for k in (pair[1], pair[0]) if k in results]
    rows = [head + "".join(f" `{k}` |" for k in cols) + " conndep - floor | read - floor-ac |",
            "|---|" + "---:|" * (len(cols) + 2)]  # fmt: skip

    def get(key: str, name: str) -> float:
        selfs = results[key]["self"]
        if name == "other":
            return float(sum(v for k, v in selfs.items() if k not in GROUPS))
        return float(selfs.get(name, 0.0))

    for name in (*GROUPS, "other"):
        diffs = [get(a, name) - get(b, name) for a, b in PAIRS if a in results and b in results]
        rows.append(f"| {name} |" + "".join(f" {get(k, name):.0f} |" for k in cols)
                    + "".join(f" {d:+.0f} |" for d in diffs))  # fmt: skip
    diffs = [results[a]["cpu_us"] - results[b]["cpu_us"] for a, b in PAIRS
             if a in results and b in results]  # fmt: skip
    rows.append("| **all** (CPU/request from /proc) |"
                + "".join(f" **{results[k]['cpu_us']:.0f}** |" for k in cols)
                + "".join(f" **{d:+.0f}** |" for d in diffs))  # fmt: skip
    out = ["\n".join(rows) + "\n"]
    for key in ("conndep", "readconndep"):
        if key not in results:
            continue
        under = results[key]["under_ours"]
        out.append(
            f"Under our frames in `{key}` (inclusive, by the innermost frame's package), "
            f"{sum(under.values()):.0f} µs: "
            + ", ".join(f"{k} {v:.0f}" for k, v in under.items() if v >= 0.5)
            + ".\n"
        )
        ours = results[key]["ours"]
        out.append(
            f"Our own functions in `{key}` (self, µs): "
            + ", ".join(f"`{k}` {v:.1f}" for k, v in list(ours.items())[:12])
            + ".\n"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ourframes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DATABASE_URL"))
    args = parser.parse_args(argv)  # fmt: skip
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / f"{stamp}-ourframes"
    run_dir.mkdir(parents=True, exist_ok=True)
    load.wrk_path()
    loadavg = os.getloadavg()[0]
    with dbmod.database(args.dsn) as db:
        results = run(db.url, run_dir, args.seconds, args.rounds, args.rate)
    meta = {"started": stamp, "seconds": args.seconds, "rounds": args.rounds, "rate": args.rate,
            "loadavg_start": loadavg, "loadavg_end": os.getloadavg()[0]}  # fmt: skip
    (run_dir / "ourframes.json").write_text(json.dumps({"meta": meta, **results}, indent=2))
    print(table(results))
    print(f"bench.ourframes: raw results {run_dir / 'ourframes.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
