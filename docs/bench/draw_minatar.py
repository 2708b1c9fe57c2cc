"""Redraw docs/minatar-seeds.png and docs/minatar-paper.png from the JSON beside this file.

    python docs/bench/draw_minatar.py      # needs matplotlib (`pip install 'qfleet[plots]'`)

The run directories these figures came from are not kept; their evaluations are, in
minatar-seeds.json (the -v1 seeds table of docs/games.md) and minatar-paper.json (the -v0
runs beside the MinAtar paper's DQN). Redrawing from them keeps the figures and the tables
of docs/games.md telling the same story.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent
SEED_COLORS = {"0": "tab:blue", "1": "tab:orange", "2": "tab:green"}


def label_axes(ax, title: str, xlabel: str, legend_at: str, small: bool = False) -> None:
    """Title, labels, grid; the legend at `legend_at` inside the axes, or under them ("below")."""
    ax.set_title(title, fontsize=9 if small else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    if legend_at == "below":
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    else:
        ax.legend(fontsize=6 if small else 7, loc=legend_at)


def draw_seeds(out: Path = DOCS / "minatar-seeds.png") -> Path:
    """Greedy evaluations of every -v1 seed, against minutes and env frames: the earlier
    minatar.yaml settings dotted and thin, the present step size on plain heads solid, the
    present settings (the same with dueling heads) dashed."""
    data = json.loads((HERE / "minatar-seeds.json").read_text())
    settings = [("earlier settings (lr 2.5e-3, tau 0.02)", data["games"], dict(ls=":", lw=1.0, alpha=0.7)),
                ("plain heads (lr 6.25e-4, tau 0.005)", data["plain_heads"], dict(ls="-", lw=1.6)),
                ("present: dueling heads", data["dueling_heads"], dict(ls="--", lw=1.3))]
    games = list(data["games"])
    fig, axes = plt.subplots(len(games), 2, figsize=(13, 4.4 * len(games)), squeeze=False)
    for row, game in enumerate(games):
        for label, runs, style in settings:
            for seed, run in sorted(runs.get(game, {}).items()):
                ev = run["evaluations"]
                y = [e["eval_mean"] for e in ev]
                name = f"seed {seed}, {label}"
                axes[row][0].plot([e["elapsed_s"] / 60 for e in ev], y, color=SEED_COLORS[seed], label=name, **style)
                axes[row][1].plot([e["env_steps"] / 1e6 for e in ev], y, color=SEED_COLORS[seed], label=name, **style)
        label_axes(axes[row][0], f"MinAtar {game}: greedy mean of 30 episodes", "minutes", "upper left")
        label_axes(axes[row][1], f"MinAtar {game}: against env frames", "million frames (env steps)", "upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def seed_line(name: str) -> str:
    """Seeds 0, 1, 2 of one setting: dotted, solid, dashed."""
    return next((ls for seed, ls in (("seed 0", ":"), ("seed 1", "-"), ("seed 2", "--")) if seed in name), "-")


def paper_style(name: str) -> dict:
    """One look per kind of run, read from the run's name in minatar-paper.json."""
    if "rmsprop" in name:
        return dict(color="tab:gray", marker="x", ls="-", lw=1.2)
    if "dueling" in name:
        return dict(color="tab:cyan", marker="P", ls=seed_line(name), lw=1.4)
    if "samples_per_insert 8" in name:
        return dict(color="tab:purple", marker="D", ls="-", lw=1.4)
    if "lr 2.5e-4" in name:
        return dict(color="tab:brown", marker="v", ls="-", lw=1.4)
    if "6.25e-4" in name:
        return dict(color="tab:green", marker="^", ls=seed_line(name), lw=1.2)
    if "paper exploration" in name:
        return dict(color="tab:orange", marker="s", ls="-", lw=1.0, alpha=0.6)
    return dict(color="tab:blue", marker="o", ls="-", lw=1.0, alpha=0.6)


def draw_paper(out: Path = DOCS / "minatar-paper.png") -> Path:
    """qfleet's epsilon-0.1 evaluations on the -v0 games against env frames, with the
    paper's DQN score at 5M frames as a dashed line."""
    data = json.loads((HERE / "minatar-paper.json").read_text())
    games = ["Breakout", "SpaceInvaders"]
    fig, axes = plt.subplots(1, len(games), figsize=(13, 7.0))
    for ax, game in zip(axes, games):
        for name, run in data["runs"].items():
            if not name.startswith(f"{game}-v0"):
                continue
            ev = run["evaluations"]
            ax.plot([e["frames"] / 1e6 for e in ev], [e["mean"] for e in ev], ms=3,
                    label=run.get("label", name), **paper_style(name))
        paper = data["paper_dqn_approx"]["values"][game]
        ax.axhline(paper, color="tab:red", ls="--",
                   label=f"MinAtar paper's DQN at 5M frames, epsilon 0.1 (~{paper:g}, read off its figure)")
        ax.axvline(5, color="grey", ls=":", lw=1)
        label_axes(ax, f"MinAtar/{game}-v0 (6 actions): qfleet evaluations at epsilon 0.1 (30 episodes)",
                   "env frames (millions; 20-30 minutes on the 2-core machines)", "below", small=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(draw_seeds())
    print(draw_paper())
