"""`qfleet baseline random-search|reinforce`: the seed tutorials' baselines, in one process,
writing the same run directory as `qfleet train` (config.yaml, metrics.jsonl, TensorBoard
events, episodes.csv, summary.json, plot.png) so `qfleet plot` compares them with DQN."""
from __future__ import annotations

import argparse
import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qfleet.common.config import BASELINE_SECTIONS, BaselineRunConfig
from qfleet.common.config_loader import load_sections, save_config
from qfleet.common.envs import EnvSpec, describe_env
from qfleet.common.metrics import Episode, MetricsWriter
from qfleet.deploy.eval_command import add_gif_options, write_gif
from qfleet.deploy.processes import StopFlag
from qfleet.deploy.progress import Progress
from qfleet.learner.evaluation import evaluate

METHODS = {"random-search": "random_search", "reinforce": "reinforce"}  # method -> its config section
FLAGS = {"env": "baseline.env", "seed": "baseline.seed", "max_seconds": "baseline.max_seconds",
         "max_episodes": "baseline.max_episodes", "run_dir": "baseline.run_dir", "name": "baseline.name"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", choices=tuple(METHODS),
                   help="random-search: random linear policies, best kept; reinforce: numpy policy gradient")
    p.add_argument("--env", help="gymnasium id or module:Class (default CartPole-v1)")
    p.add_argument("--seed", type=int, help="seed for environments, sampling and initialisation")
    p.add_argument("--max-seconds", type=float, help="wall-clock budget (default 120)")
    p.add_argument("--max-episodes", type=int, help="training-episode budget (default 5000; 0: none)")
    p.add_argument("--config", help="YAML or TOML file with sections baseline, random_search, reinforce")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a field, e.g. reinforce.lr=0.005 (qfleet config --docs lists them)")
    p.add_argument("--run-dir", help="folder for run directories (default runs)")
    p.add_argument("--name", help="run name (default <method>-<env>-<time>)")
    p.add_argument("--gif", action="store_true",
                   help="after the run, record the final policy (random search: the best found) as RUN_DIR/agent.gif")
    p.add_argument("--no-plot", action="store_true", help="do not draw RUN_DIR/plot.png after the run")
    add_gif_options(p)


def make_learner(method: str, parts: dict, env: EnvSpec, seed: int):
    if method == "random-search":
        from qfleet.learner.baselines.random_search import RandomSearch
        return RandomSearch(cfg=parts["random_search"], env=env, seed=seed)
    from qfleet.learner.baselines.reinforce import Reinforce
    return Reinforce(cfg=parts["reinforce"], env=env, seed=seed)


class BaselineRun:
    """The training loop around a baseline learner: budgets, greedy evaluations, metrics."""

    def __init__(self, *, learner, cfg: BaselineRunConfig, env: EnvSpec, threshold: Optional[float],
                 writer: MetricsWriter, stop: Callable[[], bool], say: Callable[[str], None] = print):
        self.learner, self.cfg, self.env, self.threshold = learner, cfg, env, threshold
        self.writer, self.stop, self.say = writer, stop, say
        self.started = time.monotonic()
        self.env_steps = self.episodes = 0
        self.returns100: deque = deque(maxlen=100)
        self.evals: list[dict] = []
        self.solved_after_s: Optional[float] = None
        self._last = (self.started, 0, 0)  # (time, env steps, updates) of the previous tick

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def run(self) -> str:
        """Train until a budget is spent or the task is solved; returns why it stopped."""
        next_eval, last_tick = self.cfg.eval_every_episodes, time.monotonic()
        while True:
            reason = self._stop_reason()
            if reason:
                break
            self._take(self.learner.train_step())
            if self.episodes >= next_eval:
                self._evaluate()
                next_eval = self.episodes + self.cfg.eval_every_episodes
            if time.monotonic() - last_tick >= self.cfg.status_every_s:
                self._tick()
                last_tick = time.monotonic()
        if not self.evals or self.evals[-1]["updates"] != self.learner.updates:
            self._evaluate()  # the final policy's score
        self._tick()
        return reason

    def _stop_reason(self) -> Optional[str]:
        if self.stop():
            return "interrupted"
        if self.solved_after_s is not None and self.cfg.stop_when_solved:
            return "solved"
        if self.elapsed >= self.cfg.max_seconds:
            return "time budget reached"
        if self.cfg.max_episodes and self.episodes >= self.cfg.max_episodes:
            return "episode budget reached"
        return None

    def _take(self, played) -> None:
        elapsed, steps = self.elapsed, self.env_steps + np.cumsum(played.lengths)
        self.writer.episodes(Episode(elapsed, int(s), 0, float(r), int(n))
                             for s, r, n in zip(steps, played.returns, played.lengths))
        self.env_steps = int(steps[-1]) if len(steps) else self.env_steps
        self.episodes += len(played.returns)
        self.returns100.extend(played.returns.tolist())

    def _evaluate(self) -> None:
        seed = self.cfg.seed + 1 + 10_007 * len(self.evals)  # fresh start states each time, as in DQN
        r = evaluate(self.learner.greedy(), self.env.env_id, self.cfg.eval_episodes, seed)
        solved = self.threshold is not None and r.mean >= self.threshold
        if solved and self.solved_after_s is None:
            self.solved_after_s = self.elapsed
        self.evals.append({"eval_mean": r.mean, "eval_std": r.std, "eval_min": r.min, "eval_max": r.max,
                           "eval_episodes": len(r.returns), "eval_version": self.learner.updates,
                           "updates": self.learner.updates, "solved": self.solved_after_s is not None,
                           "elapsed_s": self.elapsed, "env_steps": self.env_steps})
        self.writer.write(Progress.eval_metrics(self.evals[-1]), step=self.env_steps, elapsed_s=self.elapsed)

    def _tick(self) -> None:
        now, updates = time.monotonic(), self.learner.updates
        t0, steps0, updates0 = self._last
        dt = max(now - t0, 1e-9)
        self._last = (now, self.env_steps, updates)
        tick = {"actors/env_steps": self.env_steps, "actors/env_steps_per_s": (self.env_steps - steps0) / dt,
                **({"learner/updates": updates, "learner/updates_per_s": (updates - updates0) / dt}
                   if self.learner.gradient_updates else {}),
                "train/episodes": self.episodes,
                "train/return_mean100": float(np.mean(self.returns100)) if self.returns100 else None,
                **self.learner.metrics()}
        self.writer.write(tick, step=self.env_steps, elapsed_s=now - self.started)
        last = self.evals[-1] if self.evals else None
        self.say(f"[{now - self.started:6.1f}s] steps {self.env_steps:,} ({tick['actors/env_steps_per_s']:,.0f}/s) | "
                 f"episodes {self.episodes:,} | updates {updates:,} | return100 "
                 f"{'-' if not self.returns100 else format(tick['train/return_mean100'], '.1f')} | eval "
                 f"{'-' if last is None else format(last['eval_mean'], '.1f')}")

    def summary(self, method: str, reason: str, run_dir: Path) -> dict:
        best = max(self.evals, key=lambda e: e["eval_mean"]) if self.evals else None
        return {"algorithm": method, "reason": reason, "env": self.cfg.env, "solved_threshold": self.threshold,
                "solved": self.solved_after_s is not None, "solved_after_s": self.solved_after_s,
                "elapsed_s": self.elapsed, "env_steps": self.env_steps, "episodes": self.episodes,
                "updates": self.learner.updates, "best_eval": best, "evaluations": len(self.evals),
                "final_eval": self.evals[-1] if self.evals else None, "run_dir": str(run_dir)}


def run(args: argparse.Namespace) -> int:
    from qfleet.deploy.launcher import write_summary
    from qfleet.deploy.plot_command import plot_run_dir
    from qfleet.deploy.train_command import make_run_dir

    stop = StopFlag()
    overrides = [f"{field}={getattr(args, flag)}" for flag, field in FLAGS.items() if getattr(args, flag) is not None]
    parts = load_sections(BASELINE_SECTIONS, args.config, list(args.set) + overrides)
    cfg: BaselineRunConfig = parts["baseline"]
    env = describe_env(cfg.env)
    threshold = cfg.solved_threshold if cfg.solved_threshold is not None else env.reward_threshold
    learner = make_learner(args.method, parts, env, cfg.seed)
    run_dir = make_run_dir(cfg.run_dir, cfg.name, f"{args.method}-{cfg.env}")
    save_config({"baseline": cfg, METHODS[args.method]: parts[METHODS[args.method]]}, run_dir / "config.yaml")
    print(f"qfleet: {args.method} on {env.env_id}; solved at greedy mean >= {threshold}; run directory {run_dir}",
          flush=True)
    writer = MetricsWriter(run_dir=run_dir)
    loop = BaselineRun(learner=learner, cfg=cfg, env=env, threshold=threshold, writer=writer, stop=stop.is_set,
                       say=lambda line: print(line, flush=True))
    try:
        reason = loop.run()
    finally:
        writer.close()
        learner.close()
    summary = loop.summary(args.method, reason, run_dir)
    write_summary(run_dir, summary)
    best = summary["best_eval"]
    head = f"solved in {summary['solved_after_s']:.1f} s" if summary["solved"] else f"stopped ({reason})"
    print(f"qfleet: {args.method} {head} after {summary['episodes']:,} episodes, {summary['env_steps']:,} env steps: "
          f"best greedy mean {best['eval_mean']:.1f} +- {best['eval_std']:.1f} over {best['eval_episodes']} episodes "
          f"(min {best['eval_min']:g}, max {best['eval_max']:g})", flush=True)
    if not args.no_plot:
        print("qfleet: " + plot_run_dir(run_dir), flush=True)
    if args.gif:
        print("qfleet: " + write_gif(learner.greedy(), env, run_dir / "agent.gif", args, cfg.seed), flush=True)
    return 130 if reason == "interrupted" else 0
