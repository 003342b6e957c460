"""``python -m bench.limits`` (the second half of ``make bench``): issue 22's measurements in
one go, each printed as the markdown of docs/performance.md's "Performance at the limits"
section and saved together to bench/results/<time>-limits.md.

1. ``bench.cpu``: CPU per request and req/s against the DI floors, and the multi-statement
   shapes;
2. ``bench.network``: through a delaying proxy at 0, 1 and 5 ms (and the chart
   docs/images/bench-network.svg);
3. ``bench.roundtrips``: statements and round trips per request shape;
4. ``bench.ourframes``: where the µs of ConnDep and ReadConnDep go, by package.

python -m bench.limits [--quick]   (--quick: short rounds, no chart; ~8 min instead of ~20)

Runs against whatever version of fastapi_dbpool is installed: the same command gives the
"before" and the "after" figures.
"""

import argparse
import contextlib
import io
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from bench import cpu, network, ourframes, roundtrips

ROOT = Path(__file__).resolve().parent.parent


class _Tee(io.StringIO):
    def write(self, text: str) -> int:
        sys.__stdout__.write(text)  # type: ignore[union-attr]
        return super().write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)  # fmt: skip
    quick = ["--quick"] if args.quick else []
    steps: list[tuple[str, Callable[[], object]]] = [
        ("CPU per request", lambda: cpu.main(quick)),
        ("Network", lambda: network.main(quick or ["--chart"])),
        ("Round trips", roundtrips.main),
        ("Our frames", lambda: ourframes.main(["--seconds", "5", "--rounds", "1"] if quick
                                              else [])),
    ]  # fmt: skip
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "bench" / "results" / f"{stamp}-limits.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for title, step in steps:
        tee = _Tee()
        with contextlib.redirect_stdout(tee):
            step()
        parts.append(f"## {title}\n\n{tee.getvalue()}")
        out.write_text("\n".join(parts))
    print(f"bench.limits: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
