"""``python -m bench.cpu``: the app process's CPU per request (user + sys, from /proc), beside
req/s, for each variant under uvicorn (1 worker, uvloop, httptools) and wrk at c=32.

CPU per request is steadier than req/s on a shared machine: other load slows the app, it does
not make its requests dearer. Variants run in interleaved rounds (rotated, reversed every
other round) and each is compared with its floor *in the same round*; the tables show the
median and min-max of those per-round figures.

python -m bench.cpu                  both tables (one-query variants, multi-statement shapes)
python -m bench.cpu --set single     only the one-query variants against the DI floors
python -m bench.cpu --set multi      only 20 reads, 20 updates, the 12-row page
python -m bench.cpu --quick          2 rounds of 2 s
python -m bench.cpu --dsn URL        this PostgreSQL instead of an embedded one

Every app also reports its garbage collections (``BENCH_GC_STATS``, see bench/apps/__init__.py),
and one variant runs ``Depends(get_conn)`` with the collector disabled (``BENCH_GC=off``): how
much of its cost, and of its round-to-round spread, is the collector's.
"""

import argparse
import json
import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import database as dbmod
from bench import load, overhead, servers
from bench.variants import Variant

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TICK = os.sysconf("SC_CLK_TCK")
CONNECTIONS = 32


@dataclass(frozen=True)
class Cell:
    """One measured thing: an app (module + environment) and the path wrk asks for."""

    key: str
    title: str
    module: str
    prefix: str = "/users/"
    env: dict[str, str] = field(default_factory=dict)
    floor: str | None = None  # the key this cell is compared with, same round

    @property
    def app(self) -> str:
        return self.module + "".join(f" {k}={v}" for k, v in sorted(self.env.items()))


AUTOCOMMIT = {"BENCH_AUTOCOMMIT": "1"}
SINGLE: tuple[Cell, ...] = (
    Cell("raw", "(a) raw psycopg pool inline", "bench.apps.psycopg_pool", floor="floor"),
    Cell("floor", "(b) DI floor: coroutine dependency returning the raw pool",
         "bench.apps.di_floor"),
    Cell("conndep", "(c) `Depends(get_conn)` (ConnDep)", "bench.apps.dbpool", floor="floor"),
    Cell("conndep-nogc", "(c') ConnDep, garbage collector disabled", "bench.apps.dbpool",
         env={"BENCH_GC": "off"}, floor="floor"),
    Cell("conndep-nometrics", "(c'') ConnDep, DBPOOL_METRICS=false (no recorder, no leak "
         "sweep)", "bench.apps.dbpool", env={"DBPOOL_METRICS": "false"}, floor="floor"),
    Cell("raw-ac", "(d) raw pool, autocommit, prepare_threshold=0, inline",
         "bench.apps.psycopg_pool_autocommit", floor="floor-ac"),
    Cell("floor-ac", "(e) DI floor over that autocommit pool", "bench.apps.di_floor",
         env=AUTOCOMMIT),
    Cell("readconndep", "(f) `ReadConnDep`", "bench.apps.dbpool_read", floor="floor-ac"),
    Cell("asyncpg", "(g) asyncpg pool inline", "bench.apps.asyncpg_pool", floor="floor"),
)  # fmt: skip
MULTI: tuple[Cell, ...] = tuple(
    Cell(f"{shape}-{driver}", f"{title}, {label}", f"bench.apps.shapes_{driver}", f"/{shape}/",
         floor=None if driver == "psycopg" else f"{shape}-psycopg")
    for shape, title in (("reads20", "20 reads"), ("updates20", "20 updates (executemany)"),
                         ("page", "page of 12 rows"))
    for driver, label in (("psycopg", "raw psycopg pool"), ("dbpool", "fastapi_dbpool"),
                          ("asyncpg", "asyncpg pool"))
)  # fmt: skip
# Each of ours right after (or before) its floor, ABBA, many short rounds: ratios of runs
# seconds apart, which the machine's drift moves less; and whether a variant grows dearer
# with the requests it has served (first half of the rounds against the second).
PAIRED = tuple(
    next(c for c in SINGLE if c.key == key)
    for key in ("floor", "conndep", "floor-ac", "readconndep")
)
SETS = {"single": SINGLE, "multi": MULTI, "paired": PAIRED}


def against(checkout: Path) -> tuple[Cell, ...]:
    """The paired set, plus ConnDep and ReadConnDep imported from checkout (its package and
    its bench apps), each beside the same floor as ours: before and after in one run."""
    other = {"PYTHONPATH": str(checkout)}
    by_key = {cell.key: cell for cell in SINGLE}
    return (
        by_key["floor"],
        by_key["conndep"],
        Cell("conndep-other", f"(c) ConnDep from {checkout.name}", "bench.apps.dbpool",
             env=other, floor="floor"),
        by_key["floor-ac"],
        by_key["readconndep"],
        Cell("readconndep-other", f"(f) ReadConnDep from {checkout.name}",
             "bench.apps.dbpool_read", env=other, floor="floor-ac"),
    )  # fmt: skip


def process_cpu(pid: int) -> float:
    """user + sys CPU seconds of the process pid (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def gc_stats(app: servers.App, path: Path) -> dict[str, Any]:
    """Ask the app (SIGUSR2) for its collector's totals so far; wait for the answer."""
    before = json.loads(path.read_text())["dump"] if path.exists() else 0
    app.process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            stats: dict[str, Any] = json.loads(path.read_text())
            if stats["dump"] > before:
                return stats
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{app.variant.key} did not write {path}")


def write_script(directory: Path, prefix: str) -> Path:
    """A wrk script for GET {prefix}{random user id}."""
    request = (f'function request()\n  return wrk.format("GET", "{prefix}" .. '
               f"math.random(1, {load.USER_IDS}))\nend\n")  # fmt: skip
    path = directory / f"wrk{prefix.replace('/', '-')}lua"
    path.write_text(load._SCRIPT % {"request": request})
    return path


def measure(app: servers.App, gc_file: Path, script: Path, seconds: float) -> dict[str, Any]:
    """One wrk run at c=32 with the app's CPU and garbage collections around it."""
    gc_before = gc_stats(app, gc_file)
    cpu_before = process_cpu(app.process.pid)
    result = load.run(app.url, script, CONNECTIONS, seconds)
    cpu = process_cpu(app.process.pid) - cpu_before
    gc_after = gc_stats(app, gc_file)
    requests = max(1, result["requests"])
    counts = [a - b for a, b in zip(gc_after["counts"], gc_before["counts"], strict=True)]
    gc_s = sum(gc_after["seconds"]) - sum(gc_before["seconds"])
    return {
        "cpu_us": cpu / requests * 1e6, "rps": result["rps"], "requests": result["requests"],
        "errors": result["errors"], "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
        "gc_per_1k": [n * 1000 / requests for n in counts], "gc_us": gc_s / requests * 1e6,
        "gc_gen2_ms": (gc_after["seconds"][2] - gc_before["seconds"][2]) * 1000,
        "tracked": gc_after["tracked"],
    }  # fmt: skip


def run_cells(
    cells: tuple[Cell, ...],
    url: str,
    run_dir: Path,
    rounds: int,
    seconds: float,
    warmup: float,
    rotate: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Every cell once per round, in a rotated and alternately reversed order (not rotated:
    A B C D, D C B A, ...: each cell beside the same neighbours, in ABBA pairs)."""
    variants: dict[str, Variant] = {}
    for cell in cells:
        if cell.app not in variants:
            name = f"app{len(variants)}"
            gc_file = run_dir / f"{name}.gc.json"
            gc_file.unlink(missing_ok=True)  # a file of an earlier set has later dump numbers
            env = {**cell.env, "BENCH_GC_STATS": str(gc_file)}
            variants[cell.app] = Variant(name, -1, cell.app, cell.module, env=env)
    scripts = {cell.prefix: write_script(run_dir, cell.prefix) for cell in cells}
    runs: dict[str, list[dict[str, Any]]] = {cell.key: [] for cell in cells}
    with servers.running(list(variants.values()), url, run_dir, 10) as apps:

        def app_of(cell: Cell) -> tuple[servers.App, Path]:
            app = apps[variants[cell.app].key]
            return app, Path(app.variant.env["BENCH_GC_STATS"])

        for cell in cells:  # warm-up: pools filled, statements prepared
            load.run(app_of(cell)[0].url, scripts[cell.prefix], CONNECTIONS, warmup)
        for r in range(rounds):
            shift = r % len(cells) if rotate else 0
            order = list(cells[shift:] + cells[:shift])
            for position, cell in enumerate(order[::-1] if r % 2 else order):
                app, gc_file = app_of(cell)
                result = measure(app, gc_file, scripts[cell.prefix], seconds)
                result.update(round=r, position=position, loadavg=os.getloadavg()[0])
                runs[cell.key].append(result)
                print(f"  round {r + 1} {cell.key:18s} {result['cpu_us']:6.0f} us CPU/request "
                      f"{result['rps']:7,.0f} req/s  gc {result['gc_us']:5.1f} us/request "
                      f"(gen2 {result['gc_per_1k'][2]:.2f}/1k requests)"
                      + (f"  errors {result['errors']}" if result["errors"] else ""),
                      flush=True)  # fmt: skip
    return runs


def summarize(cells: tuple[Cell, ...], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cell in cells:
        mine = runs[cell.key]
        cpu = [r["cpu_us"] for r in mine]
        item: dict[str, Any] = {
            "title": cell.title, "floor": cell.floor,
            "cpu_us": statistics.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
            "rps": statistics.median(r["rps"] for r in mine),
            "gc_us": statistics.median(r["gc_us"] for r in mine),
            "gen2_per_1k": statistics.median(r["gc_per_1k"][2] for r in mine),
            "errors": sum(r["errors"] for r in mine), "rounds": mine,
        }  # fmt: skip
        if cell.floor:
            floor = {r["round"]: r for r in runs[cell.floor]}
            pairs = [(r, floor[r["round"]]) for r in mine if r["round"] in floor]
            ratios = [r["cpu_us"] / f["cpu_us"] for r, f in pairs]
            extra = [r["cpu_us"] - f["cpu_us"] for r, f in pairs]
            rps = [r["rps"] / f["rps"] for r, f in pairs]
            half = len(ratios) // 2
            item.update(ratio=statistics.median(ratios), ratio_min=min(ratios),
                        ratio_max=max(ratios), extra_us=statistics.median(extra),
                        rps_ratio=statistics.median(rps), ci95=overhead.summarize(ratios)["ci95"],
                        first_half=statistics.median(ratios[: max(1, half)]),
                        second_half=statistics.median(ratios[half:]))  # fmt: skip
        out[cell.key] = item
    return out


def table(cells: tuple[Cell, ...], summary: dict[str, Any]) -> str:
    """Markdown: CPU per request, its ratio to the floor (per round), req/s."""
    rows = ["| variant | µs CPU/request, median (min-max) | x floor CPU, median (min-max) "
            "| 95 % CI of that median | 1st / 2nd half | + µs vs floor | req/s | req/s x floor "
            "| gc µs/request | gen-2 GCs per 1k |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for cell in cells:
        s = summary[cell.key]
        ratio = (f"{s['ratio']:.2f} ({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) vs "
                 f"{cell.floor}" if cell.floor else "floor")  # fmt: skip
        extra = f"{s['extra_us']:+.0f}" if cell.floor else ""
        ci = f"{s['ci95'][0]:.2f}-{s['ci95'][1]:.2f}" if cell.floor else ""
        halves = f"{s['first_half']:.2f} / {s['second_half']:.2f}" if cell.floor else ""
        rps_ratio = f"{s['rps_ratio']:.2f}" if cell.floor else ""
        rows.append(f"| {cell.title} (`{cell.key}`) | {s['cpu_us']:.0f} ({s['cpu_min']:.0f}-"
                    f"{s['cpu_max']:.0f}) | {ratio} | {ci} | {halves} | {extra} | "
                    f"{s['rps']:,.0f} | {rps_ratio} | "
                    f"{s['gc_us']:.1f} | {s['gen2_per_1k']:.2f} |")  # fmt: skip
    return "\n".join(rows) + "\n"


def variance(runs: dict[str, list[dict[str, Any]]], key: str, floor: str) -> str:
    """Round by round: key's CPU, its floor's, the ratio, and key's collections."""
    rows = [
        "| round | position | µs CPU/request | floor µs | x floor | gc µs/request | "
        "gen-0/1/2 per 1k requests | load avg |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    floors = {r["round"]: r for r in runs[floor]}
    for r in runs[key]:
        f = floors.get(r["round"])
        if f is None:
            continue
        gens = "/".join(f"{n:.1f}" for n in r["gc_per_1k"])
        rows.append(f"| {r['round'] + 1} | {r['position'] + 1} | {r['cpu_us']:.0f} | "
                    f"{f['cpu_us']:.0f} | {r['cpu_us'] / f['cpu_us']:.2f} | {r['gc_us']:.1f} | "
                    f"{gens} | {r['loadavg']:.1f} |")  # fmt: skip
    return "\n".join(rows) + "\n"


def diagnose(runs: dict[str, list[dict[str, Any]]], key: str, floor: str) -> str:
    """What moves key's per-round ratio to its floor: the machine (the req/s ratio moves with
    it), the collector (the GC µs difference), or the requests served (first half, second)."""
    floors = {r["round"]: r for r in runs[floor]}
    pairs = [(r, floors[r["round"]]) for r in runs[key] if r["round"] in floors]
    if len(pairs) < 3:
        return ""
    ratio = [r["cpu_us"] / f["cpu_us"] for r, f in pairs]
    rps = [r["rps"] / f["rps"] for r, f in pairs]
    gc_diff = [r["gc_us"] - f["gc_us"] for r, f in pairs]
    no_gc = [(r["cpu_us"] - r["gc_us"]) / (f["cpu_us"] - f["gc_us"]) for r, f in pairs]
    cpu = [r["cpu_us"] for r, _ in pairs]
    own_rps = [r["rps"] for r, _ in pairs]

    def corr(x: list[float], y: list[float]) -> str:
        try:
            return f"{statistics.correlation(x, y):+.2f}"
        except statistics.StatisticsError:
            return "-"

    return (f"`{key}` / `{floor}`: correlation of the CPU ratio with the req/s ratio "
            f"{corr(ratio, rps)}, with the GC µs difference {corr(ratio, gc_diff)} (median "
            f"{statistics.median(gc_diff):+.1f} µs); the ratio with GC time taken out "
            f"{statistics.median(no_gc):.2f} ({min(no_gc):.2f}-{max(no_gc):.2f}); `{key}`'s CPU "
            f"per request against its own req/s {corr(cpu, own_rps)}.\n")  # fmt: skip


def render(results: dict[str, Any]) -> str:
    out = [f"CPU run of {results['started']}: c={CONNECTIONS}, load average "
           f"{results['loadavg_start']:.1f} at the start, {results['loadavg_end']:.1f} at the end; "
           f"fastapi_dbpool {results['package']}.\n"]  # fmt: skip
    for name, cells in SETS.items():
        if name in results["sets"]:
            done = results["sets"][name]
            out.append(
                f"{name}: {done.get('rounds', '?')} rounds of {done.get('seconds', '?')} s"
                f"{' (ABBA pairs)' if name == 'paired' else ' (rotated order)'}\n"
            )
            out.append(table(cells, done["summary"]))
    for name in ("paired", "single"):
        if name not in results["sets"]:
            continue
        runs = {k: v["rounds"] for k, v in results["sets"][name]["summary"].items()}
        for key in [k for k in ("conndep", "conndep-nogc", "readconndep") if k in runs]:
            floor = "floor-ac" if key == "readconndep" else "floor"
            out.append(f"Round by round ({name}), `{key}` against `{floor}`:\n")
            out.append(variance(runs, key, floor))
            out.append(diagnose(runs, key, floor))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--set", choices=["paired", "single", "multi", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s")
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--against", metavar="CHECKOUT", help="also run ConnDep and "
                        "ReadConnDep from another checkout of the repository (e.g. a git "
                        "worktree of an older commit), paired with the same floors")
    args = parser.parse_args(argv)  # fmt: skip
    if args.against:
        SETS["paired"] = against(Path(args.against).resolve())
    rounds, seconds = (2, 2.0) if args.quick else (args.rounds, args.duration)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / f"{stamp}-cpu"
    run_dir.mkdir(parents=True, exist_ok=True)
    load.wrk_path()
    from importlib.metadata import version

    results: dict[str, Any] = {"started": stamp, "rounds": rounds, "seconds": seconds,
                               "loadavg_start": os.getloadavg()[0], "sets": {},
                               "package": version("fastapi-dbpool")}  # fmt: skip
    names = list(SETS) if args.set == "all" else [args.set]
    with dbmod.database(args.dsn) as db:
        for name in names:
            cells = SETS[name]
            print(f"bench.cpu: {name}, {len(cells)} cells, {rounds} rounds", flush=True)
            paired = name == "paired"
            n, secs = (rounds * 3, seconds * 0.75) if paired else (rounds, seconds)
            runs = run_cells(cells, db.url, run_dir, n, secs, min(2.0, seconds),
                             rotate=not paired)  # fmt: skip
            results["sets"][name] = {"summary": summarize(cells, runs), "rounds": n,
                                     "seconds": secs}  # fmt: skip
            (run_dir / "cpu.json").write_text(json.dumps(results, indent=2))
    results["loadavg_end"] = os.getloadavg()[0]
    (run_dir / "cpu.json").write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"bench.cpu: raw results {run_dir / 'cpu.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
