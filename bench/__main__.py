"""``python -m bench`` (``make bench``): every variant side by side, in one run, on loopback.

python -m bench                 full run (~12 min on 2 cores), writes docs/performance.md
python -m bench --quick         c=16 and c=64, short rounds; prints, writes no docs
python -m bench --dsn URL       use this PostgreSQL instead of an embedded one
python -m bench --report FILE   rewrite docs/performance.md (and its charts) from a raw JSON result
python -m bench.charts [FILE]   only the charts (docs/images/bench-*.svg) from a raw JSON result
python -m bench --profile       py-spy on variant 1 under load (see bench/profile.py)
python -m bench --overhead      only the DBPOOL_METRICS on/off pairs (see bench/overhead.py)
python -m bench --scaleout      2 uvicorn workers, direct vs PgBouncer (see bench/scaleout.py)
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

from bench import charts, load, overhead, pgbouncer, poolloop, report, scaleout, servers
from bench import database as dbmod
from bench.variants import VARIANTS, Variant
from fastapi_dbpool import PoolSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"
SCALEOUT_DOC = ROOT / "docs" / "deployment.md"

FULL = {
    "levels": [1, 16, 64, 256],
    "rounds": 3,
    "duration": 4,
    "warmup": 2,
    "loop_seconds": 2.0,
    "loop_rounds": 3,
    "connects": 100,
    "pgbench_seconds": 5,
    "overhead_pairs": 20,
    "overhead_slice": 1.0,
    "overhead_http_pairs": 10,
    "overhead_http_levels": [64],
}
QUICK = {"levels": [16, 64], "rounds": 2, "duration": 2, "warmup": 1,
         "loop_seconds": 1.0, "loop_rounds": 1, "connects": 20, "pgbench_seconds": 2,
         "overhead_pairs": 6, "overhead_slice": 1.0, "overhead_http_pairs": 3,
         "overhead_http_levels": [64]}  # fmt: skip
OVERHEAD = {"levels": [], "overhead_pairs": 40, "overhead_slice": 1.0, "overhead_http_pairs": 24,
            "overhead_http_levels": [16, 64], "duration": 3}  # fmt: skip
SCALEOUT = {"levels": [16, 64], "rounds": 3, "duration": 4, "warmup": 2, "sample_interval": 0.1,
            "pgbouncer_pool_size": 10, "pgbouncer_max_client_conn": 500}  # fmt: skip


class _Stopped(Exception):
    pass


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(f"signal {signum}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer levels, short rounds")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BENCH_DATABASE_URL"),
        help="PostgreSQL to use (default: an embedded throwaway server)",
    )
    parser.add_argument(
        "--levels",
        type=lambda s: [int(x) for x in s.split(",")],
        help="concurrency levels, e.g. 1,16,64,256",
    )
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=int, help="seconds per wrk run")
    parser.add_argument("--variants", help="comma-separated keys (default: all)")
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument(
        "--budget",
        type=float,
        default=840.0,
        help="seconds after which no new round starts (default 840)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/performance.md")
    parser.add_argument("--report", type=Path, help="rewrite the docs from this JSON and exit")
    parser.add_argument("--profile", action="store_true", help="profile variant 1 with py-spy")
    parser.add_argument(
        "--overhead", action="store_true", help="only the DBPOOL_METRICS on/off pairs"
    )
    parser.add_argument(
        "--scaleout", action="store_true", help="2 uvicorn workers, direct vs PgBouncer"
    )
    parser.add_argument("--profile-variant", default="dbpool")
    parser.add_argument("--profile-seconds", type=int, default=15)
    parser.add_argument("--profile-connections", type=int, default=16)
    return parser.parse_args(argv)  # fmt: skip


def _versions(db_version: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("psycopg", "psycopg-pool", "asyncpg", "sqlalchemy", "fastapi", "starlette",
                 "uvicorn", "uvloop", "httptools", "pydantic"):  # fmt: skip
        try:
            out[name] = version(name)
        except Exception:
            out[name] = "?"
    out["PostgreSQL"] = db_version.split()[0]
    wrk = subprocess.run([load.wrk_path(), "-v"], capture_output=True, text=True, check=False)
    out["wrk"] = (wrk.stdout or wrk.stderr).split()[1] if (wrk.stdout or wrk.stderr) else "?"
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _meta(
    stamp: str, started: float, versions: dict[str, str], json_path: Path,
    load_before: tuple[float, float, float],
) -> dict[str, Any]:  # fmt: skip
    """What a run's JSON says of the run itself: when, how long, where, with what."""
    return {
        "started": stamp, "elapsed_s": time.monotonic() - started, "versions": versions,
        "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "json": str(json_path.relative_to(ROOT)), "argv": sys.argv[1:],
        "loadavg_start": load_before, "loadavg_end": os.getloadavg(),
    }  # fmt: skip


def _publish(
    args: argparse.Namespace, started: float, results: dict[str, Any], json_path: Path,
    rendered: str, write_doc: Callable[[], None], doc: Path,
) -> int:  # fmt: skip
    """Raw JSON, the tables on the terminal, and the generated part of doc (full runs only)."""
    json_path.write_text(json.dumps(results, indent=2))
    print(rendered)
    if not args.quick and not args.no_docs:
        write_doc()
        print(f"bench: wrote {doc.relative_to(ROOT)}")
    print(f"bench: done in {time.monotonic() - started:.0f} s; raw results {json_path}")
    return 0


def _http(
    apps: dict[str, servers.App], config: dict[str, Any], scripts: dict[str, Path],
    deadline: float, notes: list[str],
) -> dict[str, dict[str, Any]]:  # fmt: skip
    keys = list(apps)
    http: dict[str, dict[str, Any]] = {}
    for level in config["levels"]:
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
        for key in keys:  # warm-up: fill the pool, prepare statements, JIT nothing
            app = apps[key]
            load.run(app.url, scripts[app.variant.path], level, config["warmup"])
        for r in range(config["rounds"]):
            if r > 0 and time.monotonic() > deadline:
                notes.append(f"c={level}: time budget reached after {r} rounds")
                break
            # Rotate, and reverse every other round, so no variant always follows the same one.
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            order = order[::-1] if r % 2 else order
            for key in order:
                app = apps[key]
                result = load.run(app.url, scripts[app.variant.path], level, config["duration"])
                runs[key].append(result)
                print(f"  c={level:<3} round {r + 1} {key:<17} {result['rps']:>8,.0f} req/s  "
                      f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:7.2f} ms"
                      + (f"  errors {result['error_kinds']}" if result["errors"] else ""),
                      flush=True)  # fmt: skip
        http[f"c{level}"] = {key: load.median_of(v) for key, v in runs.items() if v}
    return http


def _overhead_pool(url: str, config: dict[str, Any], pool_size: int) -> dict[str, Any]:
    print(f"bench: instrumentation overhead, pool loop, {config['overhead_pairs']} pairs...")
    result = overhead.pool(
        url, pool_size, config["loop_tasks"], config["overhead_slice"], config["overhead_pairs"]
    )
    print("  " + overhead.line("pool loop", result), flush=True)
    return result


def _overhead_http(url: str, config: dict[str, Any], run_dir: Path, pool_size: int) -> Any:
    return overhead.http(url, run_dir, pool_size, config["overhead_http_levels"],
                         config["duration"], config["overhead_http_pairs"])  # fmt: skip


def run_overhead(args: argparse.Namespace) -> int:
    """Only the paired on/off measurement: python -m bench --overhead."""
    started = time.monotonic()
    config: dict[str, Any] = {**FULL, **OVERHEAD, "loop_tasks": 64}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / (stamp + "-overhead")
    run_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": config, "loadavg_start": os.getloadavg()}
    with dbmod.database(args.dsn) as db:
        results["pool"] = _overhead_pool(db.url, config, args.pool_size)
        results["http"] = _overhead_http(db.url, config, run_dir, args.pool_size)
    results["elapsed_s"] = time.monotonic() - started
    results["versions"] = _versions(db.version)
    (run_dir / "overhead.json").write_text(json.dumps(results, indent=2))
    print(f"bench: done in {results['elapsed_s']:.0f} s; raw results {run_dir / 'overhead.json'}")
    return 0


def run_scaleout(args: argparse.Namespace) -> int:
    """2 uvicorn workers, direct and through PgBouncer: python -m bench --scaleout."""
    started = time.monotonic()
    config: dict[str, Any] = dict(SCALEOUT)
    if args.quick:
        config.update(rounds=2, duration=2, warmup=1)
    for name in ("levels", "rounds", "duration"):
        if getattr(args, name):
            config[name] = getattr(args, name)
    config.update(quick=args.quick, pool_size=args.pool_size, users=load.USER_IDS,
                  workers=scaleout.WORKERS)  # fmt: skip
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / (stamp + "-scaleout")
    run_dir.mkdir(parents=True, exist_ok=True)
    load.wrk_path()  # fail before starting anything
    pgbouncer.binary()
    scripts = load.write_scripts(run_dir)
    notes: list[str] = []
    results: dict[str, Any] = {"config": config, "notes": notes}
    print(f"bench: scale-out, results in {run_dir}", flush=True)
    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1):
        notes.append(f"the machine was busy at the start (load average {load_before[0]:.1f})")
        print(f"bench: warning: {notes[-1]}")
    with scaleout.database(args.dsn) as (db, admin_url):
        print(f"bench: PostgreSQL {db.version} ({db.source}); PgBouncer, 2 apps...", flush=True)
        scaleout.seed_users(db.url, load.USER_IDS)
        with (
            pgbouncer.running(db.url, run_dir, config["pgbouncer_pool_size"],
                              config["pgbouncer_max_client_conn"]) as bouncer,
            scaleout.Sampler(admin_url, db.url, bouncer, config["sample_interval"]) as sampler,
            scaleout.running(db.url, bouncer, run_dir, args.pool_size, sampler) as apps,
        ):  # fmt: skip
            print(f"bench: {bouncer.version}; levels {config['levels']}...", flush=True)
            results["http"] = scaleout.measure(
                apps, scripts, config, sampler, started + args.budget, notes
            )
        results["database"] = {"source": db.source, "version": db.version}
        versions = _versions(db.version)
        versions["PgBouncer"] = bouncer.version
    json_path = run_dir / "scaleout.json"
    # The run itself keeps every CPU busy: the load average is reported, not judged.
    results["meta"] = _meta(stamp, started, versions, json_path, load_before)
    return _publish(args, started, results, json_path, scaleout.table(results),
                    lambda: scaleout.write_doc(results, SCALEOUT_DOC), SCALEOUT_DOC)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    config: dict[str, Any] = dict(QUICK if args.quick else FULL)
    if args.levels:
        config["levels"] = args.levels
    if args.rounds:
        config["rounds"] = args.rounds
    if args.duration:
        config["duration"] = args.duration
    config.update(quick=args.quick, pool_size=args.pool_size, users=dbmod.USERS,
                  loop_tasks=64, pgbench_clients=args.pool_size)  # fmt: skip
    variants: list[Variant] = list(VARIANTS)
    if args.variants:
        wanted = set(args.variants.split(","))
        variants = [v for v in variants if v.key in wanted]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / (stamp + ("-quick" if args.quick else ""))
    run_dir.mkdir(parents=True, exist_ok=True)
    load.wrk_path()  # fail before starting anything
    charts.require()
    scripts = load.write_scripts(run_dir)
    metrics = "metrics" in PoolSettings.model_fields
    notes: list[str] = []
    deadline = started + args.budget
    results: dict[str, Any] = {"config": config, "metrics_setting": metrics, "notes": notes}
    print(f"bench: results in {run_dir}", flush=True)
    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1):
        note = f"the machine was busy at the start (load average {load_before[0]:.1f})"
        print(f"bench: warning: {note}; absolute figures will be low, ratios less so")
        notes.append(note)
    if not metrics:
        print("bench: DBPOOL_METRICS does not exist yet: variant 2 runs identical to variant 1")
    with dbmod.database(args.dsn) as db:
        print(f"bench: PostgreSQL {db.version} ({db.source}); connect cost...", flush=True)
        results["connect"] = poolloop.connect_cost(db.url, config["connects"])
        print(f"bench: {json.dumps(results['connect'])}\nbench: pool loop...", flush=True)
        results["pool_loop"] = poolloop.pool_loop(
            db.url, args.pool_size, config["loop_tasks"], config["loop_seconds"],
            config["loop_rounds"],
        )  # fmt: skip
        for key, item in results["pool_loop"].items():
            print(f"  {key:<34} {item['ops']:>8,.0f} queries/s", flush=True)
        results["overhead"] = {"pool": _overhead_pool(db.url, config, args.pool_size)}
        print("bench: pgbench...", flush=True)
        results["pgbench"] = dbmod.ceiling(
            db, config["pgbench_seconds"], config["pgbench_clients"], run_dir
        )
        for key, item in results["pgbench"].items():
            print(f"  {key:<20} {item.get('tps', 0):>8,.0f} tps", flush=True)
        print(f"bench: HTTP, {len(variants)} apps, levels {config['levels']}...", flush=True)
        with servers.running(variants, db.url, run_dir, args.pool_size) as apps:
            results["http"] = _http(apps, config, scripts, deadline, notes)
        results["overhead"]["http"] = _overhead_http(db.url, config, run_dir, args.pool_size)
        results["database"] = {"source": db.source, "version": db.version,
                               "settings": db.settings or {}}  # fmt: skip
        versions = _versions(db.version)
    results["targets"] = report.targets(results["http"])
    json_path = run_dir / "results.json"
    results["meta"] = _meta(stamp, started, versions, json_path, load_before)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    written = charts.write(results, run_dir)  # beside the raw results, quick runs too
    print(f"bench: charts {', '.join(str(path.relative_to(ROOT)) for path in written)}")
    return _publish(args, started, results, json_path, report.render(results),
                    lambda: write_docs(results), DOC)  # fmt: skip


def write_docs(results: dict[str, Any]) -> None:
    """The generated part of docs/performance.md and the charts it shows."""
    report.write(results, DOC)
    charts.write(results)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # SIGTERM and SIGINT unwind through every finally: apps and PostgreSQL are stopped.
    signal.signal(signal.SIGTERM, _terminate)
    if args.report:
        write_docs(json.loads(args.report.read_text()))
        return 0
    try:
        if args.profile:
            from bench import profile

            return profile.run(args, RESULTS)
        if args.scaleout:
            return run_scaleout(args)
        return run_overhead(args) if args.overhead else run(args)
    except (_Stopped, KeyboardInterrupt) as exc:
        print(f"bench: stopped ({exc or 'interrupt'}); every server was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
