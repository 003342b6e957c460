"""Run the core's hand-made mutants (tests/mutation/mutants.py) against the request-path tests.

    python -m tests.mutation.mutate            # all of them (make mutate)
    python -m tests.mutation.mutate --list     # their names and what each breaks
    python -m tests.mutation.mutate --only session-commit-skipped --only sync-claim-kept

The repository is copied to a temporary directory once; each mutant is applied to its file in
that copy, the tests run there (``PYTHONPATH`` points at the copy, so ``fastapi_dbpool`` is the
mutated one), and the file is put back before the next mutant. The working tree is never
written to, and the copy is removed at the end, on an error and on Ctrl-C alike.

Each run is ``pytest -x -q -p no:cacheprovider`` on the request-path test files, within a time
limit: a failing run kills the mutant, a passing one means it survived, and a run past the
limit counts as killed (the mutant hung the tests: a real client would have noticed too).
Mutants marked equivalent are run and shown but left out of the score.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.mutation.mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]

# The request path's tests, the quickest to fail first (the conformance matrix).
TESTS = (
    "tests/integration/test_conformance.py",
    "tests/integration/test_request_transaction.py",
    "tests/integration/test_transactions.py",
    "tests/integration/test_sync_conn.py",
    "tests/integration/test_starlette.py",
    "tests/integration/test_transaction_options.py",
    "tests/integration/test_release.py",
    "tests/integration/test_after_commit.py",
    "tests/integration/test_row_level_security.py",
    "tests/integration/test_connection_hooks.py",
    "tests/integrations/test_otel_psycopg.py",
    "tests/unit",
)

# What the copy leaves out: environments, caches and git; bytecode above all (a stale .pyc of
# the unmutated file must never be run in its place).
_IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "*.egg-info",
)

KILLED, SURVIVED, TIMEOUT = "killed", "survived", "timeout"


@dataclass
class Outcome:
    mutant: Mutant
    result: str
    seconds: float
    detail: str  # the first failing test, or why


def check_mutants(mutants: Sequence[Mutant], root: Path = ROOT) -> list[str]:
    """Why the list cannot be run as it is: each snippet must occur exactly once, and each
    mutated file must still compile."""
    problems: list[str] = []
    names: set[str] = set()
    for mutant in mutants:
        if mutant.name in names:
            problems.append(f"{mutant.name}: the name is used twice")
        names.add(mutant.name)
        path = root / mutant.file
        if not path.is_file():
            problems.append(f"{mutant.name}: no file {mutant.file}")
            continue
        source = path.read_text()
        found = source.count(mutant.original)
        if found != 1:
            problems.append(
                f"{mutant.name}: its original snippet occurs {found} times in {mutant.file} "
                "(it must occur exactly once)"
            )
            continue
        try:  # a mutant that does not even compile would be "killed" by any test
            compile(source.replace(mutant.original, mutant.replacement), mutant.file, "exec")
        except SyntaxError as exc:
            problems.append(f"{mutant.name}: the mutated {mutant.file} does not compile: {exc}")
        if mutant.original == mutant.replacement:
            problems.append(f"{mutant.name}: the replacement is the original")
    return problems


def _environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _imports_from(tree: Path) -> None:
    """Refuse to run if the copy's fastapi_dbpool is not the one the tests would import."""
    found = subprocess.run(
        [sys.executable, "-c", "import fastapi_dbpool; print(fastapi_dbpool.__file__)"],
        cwd=tree,
        env=_environment(tree),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the tests would import {found}, not the copy in {tree}: refusing")


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0][:110]
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1][:110] if lines else ""


def _stop(process: "subprocess.Popen[str]") -> str:
    """Interrupt pytest (its fixtures stop the embedded server), then kill what is left."""
    try:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
        return out or ""
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        return out or ""


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_tests(tree: Path, limit: float, tests: Sequence[str]) -> tuple[str, float, str]:
    """pytest on tests in tree: (killed/survived/timeout, seconds, detail)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=tree,
        env=_environment(tree),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # A runner started in the background ignores SIGINT, and its children would too:
        # pytest must take one as Ctrl-C (and stop its embedded server) when _stop sends it.
        preexec_fn=_interruptible,
    )
    try:
        out, _ = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _stop(process)
        return TIMEOUT, time.monotonic() - started, f"past the {limit:.0f} s limit"
    except BaseException:  # Ctrl-C: leave no pytest (nor its server) behind
        _stop(process)
        raise
    took = time.monotonic() - started
    if process.returncode == 0:
        return SURVIVED, took, ""
    return KILLED, took, _first_failure(out)


def run_mutant(tree: Path, mutant: Mutant, limit: float, tests: Sequence[str]) -> Outcome:
    path = tree / mutant.file
    original = path.read_text()
    if original.count(mutant.original) != 1:
        raise SystemExit(f"{mutant.name}: its snippet is not exactly once in the copy")
    try:
        path.write_text(original.replace(mutant.original, mutant.replacement, 1))
        result, took, detail = run_tests(tree, limit, tests)
    finally:
        path.write_text(original)
    return Outcome(mutant, result, took, detail)


def score(outcomes: Sequence[Outcome]) -> tuple[int, int, int, int]:
    """(counted, killed (timeouts included), survived, equivalent)."""
    counted = [o for o in outcomes if not o.mutant.equivalent]
    killed = sum(o.result in (KILLED, TIMEOUT) for o in counted)
    survived = sum(o.result == SURVIVED for o in counted)
    return len(counted), killed, survived, len(outcomes) - len(counted)


def report(outcomes: Sequence[Outcome], took: float) -> str:
    width = max((len(o.mutant.name) for o in outcomes), default=10)
    lines = [f"{'mutant':<{width}}  {'result':<10} {'secs':>6}  detail", "-" * (width + 60)]
    for o in outcomes:
        result = o.result + (" (eq.)" if o.mutant.equivalent else "")
        lines.append(f"{o.mutant.name:<{width}}  {result:<10} {o.seconds:6.1f}  {o.detail}")
    counted, killed, survived, equivalent = score(outcomes)
    timeouts = sum(o.result == TIMEOUT for o in outcomes if not o.mutant.equivalent)
    lines.append("-" * (width + 60))
    lines.append(
        f"{len(outcomes)} mutants: {killed} killed ({timeouts} of them by the time limit, "
        f"which counts as killed), {survived} survived, {equivalent} equivalent (not scored)"
    )
    if counted:
        lines.append(f"score: {killed}/{counted} = {100 * killed / counted:.1f} % killed")
    for o in outcomes:
        if o.result == SURVIVED and not o.mutant.equivalent:
            lines.append(f"survived: {o.mutant.name}: {o.mutant.description}")
        if o.mutant.equivalent:
            lines.append(f"equivalent: {o.mutant.name}: {o.mutant.equivalent}")
    lines.append(f"took {took / 60:.1f} min")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation.mutate", description=__doc__)
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run this mutant (repeatable; a trailing * matches a prefix)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds per mutant before it counts as killed by timeout")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the unmutated tests that comes first")
    parser.add_argument("--json", type=Path, help="also write the outcomes to this file")
    parser.add_argument("--tests", nargs="+", default=list(TESTS), metavar="PATH",
                        help="pytest paths or node ids to run instead of the request-path tests "
                        "(to check that a new test kills a mutant; the score needs the default)")
    args = parser.parse_args(argv)

    problems = check_mutants(MUTANTS)
    if problems:
        print("refusing to run: the mutant list does not match the code", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if args.list:
        for mutant in MUTANTS:
            mark = "  [equivalent]" if mutant.equivalent else ""
            print(f"{mutant.name:<42} {mutant.file:<30} {mutant.description}{mark}")
        print(f"{len(MUTANTS)} mutants")
        return 0
    chosen = list(MUTANTS)
    if args.only:
        def wanted(name: str) -> bool:
            return any(
                name == only or (only.endswith("*") and name.startswith(only[:-1]))
                for only in args.only
            )

        chosen = [m for m in MUTANTS if wanted(m.name)]
        unknown = [o for o in args.only if not any(
            m.name == o or (o.endswith("*") and m.name.startswith(o[:-1])) for m in MUTANTS)]
        if unknown:
            print(f"no such mutant: {', '.join(unknown)} (see --list)", file=sys.stderr)
            return 2

    # kill (SIGTERM) cleans up as Ctrl-C does: the running pytest is stopped, the copy removed.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    started = time.monotonic()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="dbpool-mutate-") as workdir:
        tree = Path(workdir) / "tree"
        shutil.copytree(ROOT, tree, ignore=_IGNORED)
        _imports_from(tree)
        if not args.no_baseline:
            result, took, detail = run_tests(tree, args.timeout, args.tests)
            print(f"baseline (no mutant): {result}, {took:.1f} s {detail}", flush=True)
            if result != SURVIVED:
                print("the unmutated tests do not pass: nothing to measure", file=sys.stderr)
                return 1
        for number, mutant in enumerate(chosen, 1):
            outcome = run_mutant(tree, mutant, args.timeout, args.tests)
            outcomes.append(outcome)
            print(
                f"[{number}/{len(chosen)}] {mutant.name}: {outcome.result} "
                f"({outcome.seconds:.1f} s) {outcome.detail}",
                flush=True,
            )
    took = time.monotonic() - started
    print()
    print(report(outcomes, took))
    if args.json is not None:
        args.json.write_text(json.dumps([
            {"name": o.mutant.name, "file": o.mutant.file, "result": o.result,
             "seconds": round(o.seconds, 1), "detail": o.detail,
             "equivalent": o.mutant.equivalent}
            for o in outcomes
        ], indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the copy is removed; the working tree was never written to")
        sys.exit(130)
