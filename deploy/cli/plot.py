"""`qfleet plot RUN_DIR [RUN_DIR ...]`: learning curves and throughput of runs as one PNG."""
from __future__ import annotations

import argparse
from pathlib import Path

from qfleet.common.errors import ConfigError, QfleetError
from qfleet.common.extras import require
from qfleet.common.plotting import X_AXES, load_run, plot_runs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories of qfleet train or qfleet baseline (several: compared on one figure)")
    p.add_argument("--out", help="PNG to write (default RUN_DIR/plot.png for one run, comparison.png for several)")
    p.add_argument("--x", choices=tuple(X_AXES), default="steps",
                   help="x axis of the learning curve: env steps (default), training episodes or seconds")
    p.add_argument("--width", type=int, default=1200, help="image width in pixels (default 1200)")
    p.add_argument("--height", type=int, default=900, help="image height in pixels (default 900)")
    p.add_argument("--title", help="title of the learning-curve panel")


def run(args: argparse.Namespace) -> int:
    if args.width < 200 or args.height < 200:
        raise ConfigError(f"--width {args.width} --height {args.height}: both must be at least 200 pixels")
    require("matplotlib", "drawing learning curves (`qfleet plot`)")  # before reading runs: say what is missing first
    runs = [load_run(d) for d in args.run_dirs]
    out = Path(args.out) if args.out else (
        Path(args.run_dirs[0]) / "plot.png" if len(runs) == 1 else Path("comparison.png"))
    plot_runs(runs, out, x_axis=args.x, width=args.width, height=args.height, title=args.title)
    for r in runs:
        best = max((e["eval/return_mean"] for e in r.evals), default=None)
        print(f"{r.name}: {len(r.episodes):,} training episodes, {len(r.evals)} evaluations"
              + ("" if best is None else f", best greedy mean {best:.1f}"))
    print(f"wrote {out} ({args.width} x {args.height} pixels)")
    return 0


def plot_run_dir(run_dir: Path) -> str:
    """RUN_DIR/plot.png at the end of a run; returns a line saying what happened."""
    try:
        return f"learning curves in {plot_runs([load_run(run_dir)], run_dir / 'plot.png')}"
    except QfleetError as exc:
        return f"no plot: {exc}"
