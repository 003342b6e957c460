"""Scale-out: the example app under ``uvicorn --workers 2``, direct and through PgBouncer.

``python -m bench --scaleout`` (``make bench BENCH_ARGS=--scaleout``) serves ``example_app``
twice, side by side, each with 2 uvicorn workers and ``DBPOOL_MAX_SIZE`` per worker:

- direct: each worker's pool connects to PostgreSQL;
- pgbouncer: each worker's pool connects to a PgBouncer in transaction mode on 127.0.0.1
  (``DBPOOL_PGBOUNCER=true``), which holds ``default_pool_size`` server connections.

wrk loads both in alternating rounds while a thread samples, every ~100 ms, the client backends
in ``pg_stat_activity`` (from a superuser connection: the embedded server's, or
``BENCH_ADMIN_URL`` with ``--dsn``, else the DSN's own role) and PgBouncer's ``SHOW POOLS``.
The result goes to the run dir (scaleout.json) and, between markers, to docs/deployment.md.
"""

import contextlib
import os
import signal
import statistics
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench import database as dbmod
from bench import load, servers
from bench.pgbouncer import PgBouncer, admin_connect, show
from bench.variants import Variant
from example_app.main import SCHEMA
from fastapi_dbpool import PoolSettings
from fastapi_dbpool.testing import EmbeddedPostgres

T = TypeVar("T")

WORKERS = 2
CONFIGS = ("direct", "pgbouncer")
# Distinct application_name per setup: both apps run at once, and the server tells their
# backends apart by it (PgBouncer sets the client's on the server connection it lends).
APP_NAMES = {"direct": "bench-scaleout-direct", "pgbouncer": "bench-scaleout-pgbouncer"}
SAMPLER_NAME = "bench-scaleout-sampler"
MIN_SIZE = int(PoolSettings.model_fields["min_size"].default)  # opened by each worker at startup

HEADING = "## Measured: 2 workers, direct and through PgBouncer"
START = "<!-- scaleout:start -->"
END = "<!-- scaleout:end -->"

BACKENDS = """
SELECT usename, coalesce(application_name, ''), count(*)::int,
       (count(*) FILTER (WHERE state = 'active'))::int
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
GROUP BY 1, 2
"""


# -- the database -----------------------------------------------------------------------------


@contextmanager
def database(dsn: str | None) -> Iterator[tuple[dbmod.Database, str]]:
    """The run's PostgreSQL (as bench.database) and a DSN that may read all of pg_stat_activity.

    Without --dsn an embedded server is started here, so its superuser URL is known.
    """
    if dsn:
        with dbmod.database(dsn) as db:
            yield db, os.environ.get("BENCH_ADMIN_URL") or dsn
        return
    server = EmbeddedPostgres()
    try:
        server.start()
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            # As bench.database does: the test cluster logs every connection, production rarely.
            conn.execute("ALTER SYSTEM SET log_connections = 'off'")
            conn.execute("ALTER SYSTEM SET log_disconnections = 'off'")
            conn.execute("SELECT pg_reload_conf()")
        with dbmod.database(server.url) as db:
            db.source, db.bin_dir = "embedded", server.bin
            yield db, server.admin_url
    finally:
        server.close()


def seed_users(url: str, count: int) -> None:
    """The example app's users table with ids 1..count, so that every GET /users/{id} finds one.

    Created before the app starts: its lifespan then finds the table (CREATE TABLE IF NOT
    EXISTS) and not empty (no seed), and its two workers do not race to create it.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO users (id, name, email) SELECT i, 'User ' || i, "
            "'user' || i || '@example.com' FROM generate_series(1, %s) AS i ON CONFLICT DO NOTHING",
            (count,),
        )
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users))"
        )
        conn.execute("ANALYZE users")
        row = conn.execute(
            "SELECT count(*) FROM users WHERE id BETWEEN 1 AND %s", (count,)
        ).fetchone()
    if row is None or row[0] != count:
        raise RuntimeError(f"users holds {row and row[0]} of the ids 1..{count} wrk asks for")


# -- sampling ---------------------------------------------------------------------------------


class Sampler:
    """Server backends (pg_stat_activity) and PgBouncer's pool, one snapshot at a time."""

    def __init__(self, admin_url: str, app_url: str, bouncer: PgBouncer, interval: float) -> None:
        info = conninfo_to_dict(app_url)
        self.user = str(info.get("user") or "")
        self.dbname = str(info.get("dbname") or self.user)
        self.interval = interval
        self._pg = psycopg.connect(
            admin_url, autocommit=True, connect_timeout=5, application_name=SAMPLER_NAME
        )
        try:
            self._bouncer = admin_connect(bouncer)
        except BaseException:
            self._pg.close()
            raise

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._pg.close()
        finally:
            self._bouncer.close()

    def snapshot(self, key: str) -> dict[str, int]:
        """Counts for setup key: its server connections, and what its app processes hold."""
        rows = self._pg.execute(BACKENDS).fetchall()
        if key == "direct":
            mine = [r for r in rows if r[1] == APP_NAMES["direct"]]
        else:  # PgBouncer's server connections: the app role's, not the direct app's
            mine = [r for r in rows if r[0] == self.user and r[1] != APP_NAMES["direct"]]
        sample = {
            "server": sum(r[2] for r in mine),
            "server_active": sum(r[3] for r in mine),
            "server_total": sum(r[2] for r in rows),
        }
        pool = next(
            (p for p in show(self._bouncer, "POOLS")
             if p["database"] == self.dbname and p["user"] == self.user),
            {},
        )  # fmt: skip
        sample["bouncer_clients"] = sum(int(v) for k, v in pool.items() if k.startswith("cl_"))
        sample["bouncer_waiting"] = int(pool.get("cl_waiting", 0))
        sample["bouncer_servers"] = sum(int(v) for k, v in pool.items() if k.startswith("sv_"))
        # The connections the app's two pools hold: to the server, or to PgBouncer.
        sample["app_held"] = sample["server"] if key == "direct" else sample["bouncer_clients"]
        return sample

    def during(self, key: str, work: Callable[[], T]) -> tuple[T, list[dict[str, int]]]:
        """Run work() while a thread takes a snapshot every interval."""
        samples: list[dict[str, int]] = []
        failed: list[BaseException] = []
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    samples.append(self.snapshot(key))
                except Exception as exc:
                    failed.append(exc)
                    return
                stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

        thread = threading.Thread(target=loop, name="scaleout-sampler", daemon=True)
        thread.start()
        try:
            result = work()
        finally:
            stop.set()
            thread.join(10)
        if failed:
            raise RuntimeError(f"sampling failed: {failed[0]!r}") from failed[0]
        return result, samples


# -- the apps ---------------------------------------------------------------------------------


def _variant(key: str, pool_size: int) -> Variant:
    env = {
        "DBPOOL_MAX_SIZE": str(pool_size),
        "WEB_CONCURRENCY": str(WORKERS),
        "DBPOOL_APPLICATION_NAME": APP_NAMES[key],
    }
    if key == "pgbouncer":
        env["DBPOOL_PGBOUNCER"] = "true"
    return Variant(f"scaleout-{key}", 0, f"example_app, {WORKERS} workers, {key}",
                   "example_app.main", env=env)  # fmt: skip


def _start(key: str, database_url: str, log_dir: Path, pool_size: int) -> servers.App:
    """uvicorn with the harness's options, but --workers 2; in its own session."""
    variant = _variant(key, pool_size)
    port = servers.free_port()
    command = servers.command(variant, port)
    command[command.index("--workers") + 1] = str(WORKERS)
    log = log_dir / f"{variant.key}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=log_dir,  # no stray .env is read
            env=servers.app_env(database_url, variant, pool_size),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return servers.App(variant, port, process, log)


def _stop(app: servers.App) -> None:
    """SIGTERM to uvicorn's supervisor (it stops its workers), then SIGKILL whatever is left."""
    try:
        servers.stop(app)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(app.process.pid, signal.SIGKILL)


def _wait_workers(app: servers.App, key: str, sampler: Sampler) -> None:
    """Both workers up: each opened its pool's min_size connections at startup."""
    want = WORKERS * MIN_SIZE
    deadline = time.monotonic() + servers.START_TIMEOUT
    while (held := sampler.snapshot(key)["app_held"]) < want:
        if app.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"{app.variant.key}: {held} of the {want} connections {WORKERS} workers open at "
                f"startup:\n{app.log.read_text()[-3000:]}"
            )
        time.sleep(0.1)


@contextmanager
def running(
    database_url: str, bouncer: PgBouncer, log_dir: Path, pool_size: int, sampler: Sampler
) -> Iterator[dict[str, servers.App]]:
    """Both setups serving at once; every process stopped on exit."""
    urls = {"direct": database_url, "pgbouncer": bouncer.url}
    apps: dict[str, servers.App] = {}
    try:
        for key in CONFIGS:
            apps[key] = _start(key, urls[key], log_dir, pool_size)
        for key, app in apps.items():
            servers.wait_ready(app)
            _wait_workers(app, key, sampler)
        yield apps
    finally:
        for app in apps.values():
            _stop(app)


# -- the measurement --------------------------------------------------------------------------


def _spread(values: list[int]) -> dict[str, float]:
    return {"max": max(values), "median": statistics.median(values)} if values else {}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds; connection counts: max of the rounds' max, median of their medians."""
    out = load.median_of(runs)
    for name in runs[0]["connections"]:
        spreads = [r["connections"][name] for r in runs if r["connections"][name]]
        if spreads:
            out[name] = {
                "max": max(s["max"] for s in spreads),
                "median": statistics.median(s["median"] for s in spreads),
            }
    return out


def measure(
    apps: dict[str, servers.App], scripts: dict[str, Path], config: dict[str, Any],
    sampler: Sampler, deadline: float, notes: list[str],
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per level: a warm-up of each, then alternating rounds, each sampled while wrk runs."""
    http: dict[str, dict[str, Any]] = {}
    for level in config["levels"]:
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in apps}
        for app in apps.values():  # warm-up: pools grown, statements prepared
            load.run(app.url, scripts["users"], level, config["warmup"])
        for r in range(config["rounds"]):
            if r > 0 and time.monotonic() > deadline:
                notes.append(f"c={level}: time budget reached after {r} rounds")
                break
            for key in list(apps) if r % 2 == 0 else list(apps)[::-1]:
                app = apps[key]
                work = partial(load.run, app.url, scripts["users"], level, config["duration"])
                result, samples = sampler.during(key, work)
                if not samples:
                    raise RuntimeError(f"{key} c={level}: no connection sample during the run")
                result["samples"] = len(samples)
                result["connections"] = {n: _spread([s[n] for s in samples]) for n in samples[0]}
                runs[key].append(result)
                server, held = result["connections"]["server"], result["connections"]["app_held"]
                print(f"  c={level:<3} round {r + 1} {key:<9} {result['rps']:>8,.0f} req/s  "
                      f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
                      f"server conns max {server['max']} med {server['median']:g}  "
                      f"app-held max {held['max']}"
                      + (f"  errors {result['error_kinds']}" if result["errors"] else ""),
                      flush=True)  # fmt: skip
        http[f"c{level}"] = {key: _summary(v) for key, v in runs.items() if v}
    return http


# -- the report -------------------------------------------------------------------------------


def _conns(item: dict[str, Any], name: str) -> str:
    spread = item.get(name)
    return f"{spread['max']} / {spread['median']:g}" if spread else "?"


def table(results: dict[str, Any]) -> str:
    rows = [
        "| c | setup | req/s | p50 ms | p99 ms | errors | server conns max / median "
        "| app-held conns max / median |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for level_key, by_config in results["http"].items():
        for key in CONFIGS:
            item = by_config.get(key)
            if item is None:
                continue
            rows.append(
                f"| {level_key[1:]} | {key} | {item['rps']:,.0f} | {item['p50_ms']:.2f} "
                f"| {item['p99_ms']:.2f} | {item['errors']} | {_conns(item, 'server')} "
                f"| {_conns(item, 'app_held')} |"
            )
    return "\n".join(rows)


def _reading(results: dict[str, Any]) -> str:
    """Three or four sentences, every figure taken from the results."""
    config, http = results["config"], results["http"]
    levels = [k for k in http if all(c in http[k] for c in CONFIGS)]
    if not levels:
        return "No level completed for both setups."
    top = levels[-1]
    direct, bounced = http[top]["direct"], http[top]["pgbouncer"]
    waiting = bounced.get("bouncer_waiting", {}).get("max", 0)
    sentences = [
        f"At c={top[1:]} PostgreSQL saw up to {direct['server']['max']} connections from the "
        f"direct setup ({WORKERS} workers x DBPOOL_MAX_SIZE={config['pool_size']}) and up to "
        f"{bounced['server']['max']} through PgBouncer (default_pool_size = "
        f"{config['pgbouncer_pool_size']}), while the two workers' pools held up to "
        f"{bounced['app_held']['max']} client connections to PgBouncer"
        + (f", up to {waiting} of them queued for a server connection." if waiting else ".")
    ]
    ratios = [f"{http[k]['pgbouncer']['rps'] / http[k]['direct']['rps']:.0%} of direct at "
              f"c={k[1:]}" for k in levels]  # fmt: skip
    errors = sum(item["errors"] for by in http.values() for item in by.values())
    sentences.append(
        f"Throughput through PgBouncer was {' and '.join(ratios)}, with p99 "
        f"{bounced['p99_ms']:.1f} ms against {direct['p99_ms']:.1f} ms at c={top[1:]}; "
        + ("no request failed." if errors == 0 else f"{errors} requests failed (see the JSON).")
    )
    slower = [k for k in levels if http[k]["pgbouncer"]["rps"] < 0.97 * http[k]["direct"]["rps"]]
    cost = (
        f"on these {results['meta']['cpus']} CPUs, shared by wrk, both apps, PgBouncer and "
        "PostgreSQL, the extra hop per transaction costs throughput"
        if slower
        else "the extra hop cost no measurable throughput here (within 3 %)"
    )
    sentences.append(
        f"So {cost}; what PgBouncer buys is a server connection count set by its pool size "
        f"rather than by workers x DBPOOL_MAX_SIZE."
    )
    return " ".join(sentences)


def _wrap(text: str, bullet: bool = False) -> str:
    return textwrap.fill(
        text, width=100, initial_indent="- " if bullet else "",
        subsequent_indent="  " if bullet else "", break_long_words=False, break_on_hyphens=False,
    )  # fmt: skip


def render(results: dict[str, Any]) -> str:
    """The markdown between the markers."""
    config, meta, versions = results["config"], results["meta"], results["meta"]["versions"]
    names = ("python", "psycopg", "psycopg-pool", "fastapi", "uvicorn", "uvloop", "wrk")
    others = ", ".join(f"{name} {versions.get(name, '?')}" for name in names)
    when = datetime.strptime(meta["started"], "%Y%m%dT%H%M%SZ").strftime("%Y-%m-%d %H:%M UTC")
    bullets = [
        f"**Setup**: `example_app` (`GET /users/{{id}}`, {config['users']:,} rows) under "
        f"`uvicorn --workers {WORKERS}`, `WEB_CONCURRENCY={WORKERS}`, "
        f"`DBPOOL_MAX_SIZE={config['pool_size']}` per worker. **direct**: the pools connect to "
        "PostgreSQL. **pgbouncer**: they connect to PgBouncer on 127.0.0.1, "
        f"`pool_mode = transaction`, `default_pool_size = {config['pgbouncer_pool_size']}`, "
        f"`max_client_conn = {config['pgbouncer_max_client_conn']}`, with "
        "`DBPOOL_PGBOUNCER=true`. Both serve at once, on their own ports.",
        f"**Load**: wrk, 1 thread, random ids, on 127.0.0.1; per level a {config['warmup']} s "
        f"warm-up of each setup, then {config['rounds']} rounds of {config['duration']} s "
        "alternating direct and pgbouncer; medians of the rounds, errors summed.",
        "**Connections**: during each wrk run, client backends in `pg_stat_activity` (the "
        f"sampler's own excluded) every {config['sample_interval'] * 1000:.0f} ms. *server*: "
        "the setup's own backends (told apart by application_name); *app-held*: the "
        "connections the two workers' pools hold, to "
        "PostgreSQL for direct (the same backends), to PgBouncer for pgbouncer (its "
        "`SHOW POOLS` clients). Max over the rounds / median of the rounds' medians.",
        f"**Machine**: {meta['cpus']} CPUs ({meta['cpu_model']}), {meta['kernel']}; wrk, the "
        "apps, PgBouncer and PostgreSQL share the CPUs (1-minute load average "
        f"{meta['loadavg_start'][0]:.2f} before the run, {meta['loadavg_end'][0]:.2f} after).",
        f"**Versions**: {versions.get('PgBouncer', '?')}, PostgreSQL "
        f"{versions.get('PostgreSQL', '?')} ({results['database']['source']}), {others}.",
        *(f"**Note**: {note}." for note in results.get("notes", [])),
    ]
    intro = (
        f"Generated on {when} by the command below, in {meta['elapsed_s']:.0f} s; raw results in "
        f"`{meta['json']}` (not committed)."
    )
    command = "make bench BENCH_ARGS=--scaleout    # or: .venv/bin/python -m bench --scaleout"
    body = "\n".join(_wrap(b, bullet=True) for b in bullets)
    return (
        f"\n{_wrap(intro)}\n\n```sh\n{command}\n```\n\n{body}\n\n{table(results)}\n\n"
        f"{_wrap(_reading(results))}\n"
    )


def write_doc(results: dict[str, Any], path: Path) -> None:
    """Replace what lies between the markers; append heading and markers when absent."""
    text = path.read_text()
    if START in text and END in text.split(START, 1)[1]:
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
    else:
        head, tail = text.rstrip("\n") + f"\n\n{HEADING}\n\n", "\n"
    path.write_text(f"{head}{START}{render(results)}{END}{tail}")
