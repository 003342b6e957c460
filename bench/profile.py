"""``python -m bench --profile``: where a variant's CPU goes per request, by package, via py-spy.

Starts the PostgreSQL and the variant (plus variant 3 for comparison), loads each with wrk at
fixed concurrency, samples it with py-spy (non-blocking) and writes the collapsed stacks plus
a summary (self time by package, inclusive time of the calls that matter) to bench/results/.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from bench import database as dbmod
from bench import load, servers
from bench.variants import BY_KEY

# Inclusive time of these frames (function name, file part) says where a request's CPU goes.
MARKERS = (
    ("solve_dependencies", "fastapi/dependencies/utils.py"),
    ("serialize_response", "fastapi/routing.py"),
    ("_prepare_response_content", "fastapi/routing.py"),
    ("jsonable_encoder", "fastapi/encoders.py"),
    ("get_conn", "fastapi_dbpool/dependencies.py"),
    ("get_read_conn", "fastapi_dbpool/dependencies.py"),
    ("__aenter__", "fastapi_dbpool/session.py"),
    ("__aexit__", "fastapi_dbpool/session.py"),
    ("__aenter__", "fastapi_dbpool/pools.py"),
    ("lend", "fastapi_dbpool/session.py"),
    ("_leave", "fastapi_dbpool/session.py"),
    ("_commit", "fastapi_dbpool/session.py"),
    ("acquire", "fastapi_dbpool/database.py"),
    ("release", "fastapi_dbpool/database.py"),
    ("restore", "fastapi_dbpool/_restore.py"),
    ("check", "fastapi_dbpool/_healing.py"),
    ("getconn", "psycopg_pool/pool_async.py"),
    ("putconn", "psycopg_pool/pool_async.py"),
    ("__aenter__", "psycopg/transaction.py"),
    ("__aexit__", "psycopg/transaction.py"),
    ("execute", "psycopg/connection_async.py"),
    ("execute", "psycopg/cursor_async.py"),
    ("fetchone", "psycopg/cursor_async.py"),
    ("commit", "psycopg/connection_async.py"),
    ("set_autocommit", "psycopg/connection_async.py"),
    ("get_user", "bench/apps/"),
    ("app", "fastapi/routing.py"),
    ("__call__", "starlette/middleware/exceptions.py"),
    ("__call__", "starlette/middleware/errors.py"),
    ("run_asgi", "uvicorn/protocols/http/httptools_impl.py"),
    ("data_received", "uvicorn/protocols/http/httptools_impl.py"),
)


def _package(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"
    path = frame.rsplit("(", 1)[-1].rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for own in ("fastapi_dbpool", "bench"):
        if f"/{own}/" in path:
            return own
    if "/lib/python3" in path or path.startswith("<frozen"):
        return "stdlib:" + path.rsplit("/", 1)[-1].removesuffix(".py").split(" ")[-1]
    return path or "?"


def summarize(stacks: Path) -> str:
    total = 0
    own: Counter[str] = Counter()
    funcs: Counter[str] = Counter()
    marked: Counter[str] = Counter()
    for line in stacks.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[_package(frames[-1])] += count
        funcs[frames[-1]] += count
        seen = set()
        for frame in frames:
            for name, where in MARKERS:
                label = f"{name} ({where})"
                function = frame.split(" (", 1)[0].rsplit(".", 1)[-1]  # Class.method -> method
                if function == name and where in frame and label not in seen:
                    seen.add(label)
                    marked[label] += count
    lines = [f"samples: {total}", "", "self time by package:"]
    lines += [f"  {n / total:6.1%}  {pkg}" for pkg, n in own.most_common(25)]
    lines += ["", "inclusive time of chosen calls:"]
    lines += [f"  {n / total:6.1%}  {label}" for label, n in marked.most_common()]
    lines += ["", "top self functions:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in funcs.most_common(40)]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, results: Path) -> int:
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if spy is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = results / f"{stamp}-profile"
    run_dir.mkdir(parents=True, exist_ok=True)
    scripts = load.write_scripts(run_dir)
    keys = [args.profile_variant, *(k for k in ("psycopg-pool",) if k != args.profile_variant)]
    if args.variants:
        keys = args.variants.split(",")
    seconds, connections = args.profile_seconds, args.profile_connections
    with dbmod.database(args.dsn) as db:
        variants = [BY_KEY[key] for key in keys]
        with servers.running(variants, db.url, run_dir, args.pool_size) as apps:
            for key, app in apps.items():
                load.run(app.url, scripts[app.variant.path], connections, 2)  # warm-up
                out = run_dir / f"{key}.stacks"
                started = time.monotonic()
                spy_cmd = [spy, "record", "--pid", str(app.process.pid), "--duration",
                           str(seconds), "--rate", "200", "--nonblocking", "--format", "raw",
                           "--output", str(out)]  # fmt: skip
                spy_proc = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)  # fmt: skip
                time.sleep(0.5)
                result = load.run(app.url, scripts[app.variant.path], connections, seconds)
                spy_proc.wait(timeout=seconds + 30)
                summary = summarize(out)
                text = (f"variant {key}: c={connections}, {result['rps']:,.0f} req/s under "
                        f"py-spy (non-blocking, 200 Hz), {time.monotonic() - started:.0f} s\n\n"
                        + summary)  # fmt: skip
                (run_dir / f"{key}.summary.txt").write_text(text)
                print(text, flush=True)
    print(f"bench: profiles in {run_dir}")
    return 0
