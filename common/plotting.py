"""Learning-curve figures from run directories (what `qfleet plot` draws).

Panel 1: every training episode's return (light points), its 100-episode moving average
(line) and the greedy evaluations (markers with +-1 std bars), against env steps,
episodes or seconds. Panel 2: throughput over time, env steps/s (solid) and updates/s
(dashed). Several runs share the figure, one color each. Everything is read from the files
`common.metrics.MetricsWriter` writes, so DQN runs and baselines compare directly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from qfleet.common.errors import RunDirError
from qfleet.common.extras import require
from qfleet.common.metrics import read_jsonl

X_AXES = {"steps": "env steps", "episodes": "training episodes", "seconds": "seconds"}
AVERAGE_OVER = 100


class RunData(NamedTuple):
    name: str
    episodes: np.ndarray        # columns of episodes.csv: elapsed_s, env_steps, actor, return, length
    evals: list[dict]           # metrics.jsonl records with eval/return_mean
    ticks: list[dict]           # metrics.jsonl records with throughput figures
    threshold: Optional[float]  # solved threshold, when the run's summary names one
    env: Optional[str]


def load_run(run_dir: str | Path) -> RunData:
    """The curves of one run directory; RunDirError if it is missing or has no metrics yet."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    csv, jsonl = run_dir / "episodes.csv", run_dir / "metrics.jsonl"
    if not csv.is_file() and not jsonl.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no episodes.csv or metrics.jsonl in it)")
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:]] if csv.is_file() else []
    episodes = np.array([r for r in rows if len(r) == 5], float).reshape(-1, 5)  # a live run's last line may be partial
    records = read_jsonl(jsonl) if jsonl.is_file() else []
    if len(episodes) == 0 and not records:
        raise RunDirError(f"{run_dir} holds no episodes or metrics yet")
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    return RunData(run_dir.name, episodes, [r for r in records if r.get("eval/return_mean") is not None],
                   [r for r in records if "actors/env_steps_per_s" in r], summary.get("solved_threshold"),
                   summary.get("env"))


def moving_average(values: np.ndarray, window: int = AVERAGE_OVER) -> np.ndarray:
    """Trailing mean over the last `window` values (over all values so far for the first ones)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _x_of(run: RunData, axis: str, steps: np.ndarray, elapsed: np.ndarray) -> np.ndarray:
    if axis == "steps":
        return steps
    if axis == "seconds":
        return elapsed
    return np.searchsorted(run.episodes[:, 0], elapsed, side="right")  # episodes finished by then


def plot_runs(runs: list[RunData], out: str | Path, *, x_axis: str = "steps", width: int = 1200,
              height: int = 900, title: Optional[str] = None) -> Path:
    """Draw `runs` on one figure and write it as a PNG of width x height pixels."""
    matplotlib = require("matplotlib", "drawing learning curves (plot.png, `qfleet plot`)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    dpi = 100
    fig, (curve, speed) = plt.subplots(2, 1, figsize=(width / dpi, height / dpi), dpi=dpi,
                                       gridspec_kw={"height_ratios": [2, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    thresholds = set()
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        ep = run.episodes
        if len(ep):
            x = np.arange(1, len(ep) + 1) if x_axis == "episodes" else _x_of(run, x_axis, ep[:, 1], ep[:, 0])
            curve.scatter(x, ep[:, 3], s=4, color=color, alpha=0.15, linewidths=0)
            curve.plot(x, moving_average(ep[:, 3]), color=color, lw=2,
                       label=f"{run.name}: mean of last {AVERAGE_OVER} episodes")
        if run.evals:
            ex = _x_of(run, x_axis, np.array([e["step"] for e in run.evals], float),
                       np.array([e["time/elapsed_s"] for e in run.evals], float))
            mean = np.array([e["eval/return_mean"] for e in run.evals], float)
            std = np.array([e.get("eval/return_std") or 0.0 for e in run.evals], float)
            curve.errorbar(ex, mean, yerr=std, fmt="o", ms=5, color=color, mec="black", mew=0.6, elinewidth=0.8,
                           capsize=2, alpha=0.9, label=f"{run.name}: greedy evaluation (mean +- std)")
        if run.threshold is not None:
            thresholds.add(run.threshold)
        if run.ticks:
            t = np.array([r["time/elapsed_s"] for r in run.ticks], float)
            for key, style in (("actors/env_steps_per_s", "-"), ("learner/updates_per_s", "--")):
                y = np.array([np.nan if r.get(key) is None else r[key] for r in run.ticks], float)
                if np.any(y > 0):
                    speed.plot(t, np.where(y > 0, y, np.nan), style, color=color, lw=1.5)
    for value in sorted(thresholds):
        curve.axhline(value, color="gray", ls=":", lw=1.2, label=f"solved threshold {value:g}")
    envs = sorted({r.env for r in runs if r.env})
    curve.set_title(title or ("learning curves" + (f": {', '.join(envs)}" if envs else "")))
    curve.set_xlabel(X_AXES[x_axis])
    curve.set_ylabel("episode return")
    curve.grid(alpha=0.3)
    curve.legend(loc="best", fontsize=8)
    speed.set_title("throughput")
    speed.set_xlabel("seconds since start")
    speed.set_ylabel("per second")
    speed.set_yscale("log")
    speed.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=colors[i % len(colors)], lw=2, label=r.name) for i, r in enumerate(runs)]
    handles += [Line2D([], [], color="black", ls="-", label="env steps/s"),
                Line2D([], [], color="black", ls="--", label="updates/s")]
    speed.legend(handles=handles, loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
