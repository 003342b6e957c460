"""Raw results (JSON) -> SVG charts of req/s and p99 by concurrency, one line per variant.

python -m bench.charts [results.json] [--out DIR]   (default: bench/results/latest.json into
docs/images/, where docs/performance.md shows them). ``make bench`` writes them with the tables.
The SVGs carry no date and fixed ids: the same results give the same files.
"""

import argparse
import json
from pathlib import Path
from typing import Any

from bench.variants import BY_KEY

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
LATEST = ROOT / "bench" / "results" / "latest.json"
# name: (results key, y label, log scale); on the linear req/s scale, /ping (5x the rest)
# is written in a note instead of squeezing every database variant into the bottom fifth.
CHARTS = {
    "bench-rps.svg": ("rps", "requests per second (median of rounds)", False),
    "bench-p99.svg": ("p99_ms", "p99 latency, ms (median of rounds, log scale)", True),
}
OURS = ("dbpool", "dbpool-nometrics", "dbpool-read")  # drawn bold


def require() -> None:
    """Fail before a run, not after it, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit('bench: the charts need matplotlib: pip install -e ".[bench]"') from None


def write(results: dict[str, Any], out: Path = IMAGES) -> list[Path]:
    """One SVG per entry of CHARTS, into out; returns their paths."""
    import matplotlib  # the bench extra: imported here so that the tables never need it

    matplotlib.use("Agg")
    from matplotlib import pyplot

    pyplot.rcParams["svg.hashsalt"] = "fastapi-dbpool-bench"  # stable element ids
    pyplot.rcParams["svg.fonttype"] = "none"  # text as text: small files, searchable
    levels = sorted(int(name.removeprefix("c")) for name in results["http"])
    keys = [key for key in BY_KEY if any(key in level for level in results["http"].values())]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (field, label, log) in CHARTS.items():
        figure, axes = pyplot.subplots(figsize=(9, 5.2))
        notes = []
        for index, key in enumerate(keys):
            variant = BY_KEY[key]
            points = [(c, results["http"][f"c{c}"].get(key)) for c in levels]
            xs = [c for c, item in points if item]
            ys = [item[field] for _, item in points if item]
            if variant.path == "ping" and not log:
                figures = ", ".join(f"{y:,.0f} at c={x}" for x, y in zip(xs, ys, strict=True))
                notes.append(f"{variant.number}. {variant.title}, off the scale: {figures}")
                continue
            axes.plot(
                xs, ys, marker="o", color=f"C{index % 10}",
                linewidth=2.6 if key in OURS else 1.3,
                linestyle="-" if variant.path == "users" else ":",
                label=f"{variant.number}. {variant.title}",
            )  # fmt: skip
        axes.set_xscale("log", base=2)
        axes.set_xticks(levels, [str(c) for c in levels])
        axes.minorticks_off()
        if log:
            axes.set_yscale("log")
        else:
            axes.set_ylim(bottom=0)
        axes.set_xlabel("concurrent connections (wrk)")
        axes.set_ylabel(label)
        axes.grid(True, which="major", alpha=0.3)
        axes.set_title(f"GET /users/{{id}}, run {results['meta']['started']}", fontsize=10)
        axes.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        for line, note in enumerate(notes):
            axes.annotate(note, (0, -0.16 - 0.05 * line), xycoords="axes fraction", fontsize=7.5)
        path = out / filename
        figure.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
        pyplot.close(figure)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.charts", description=__doc__)
    parser.add_argument("results", nargs="?", type=Path, default=LATEST)
    parser.add_argument("--out", type=Path, default=IMAGES, help="where the SVGs go")
    args = parser.parse_args(argv)
    for path in write(json.loads(args.results.read_text()), args.out):
        print(f"bench: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
