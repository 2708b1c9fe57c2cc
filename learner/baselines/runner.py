"""The training loop around a baseline learner (random search, REINFORCE): budgets, greedy
evaluations, episodes and metrics, in one process. `qfleet baseline` (deploy/cli/baseline.py)
runs it and writes the same run directory as `qfleet train`."""
from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qfleet.common.config import BaselineRunConfig
from qfleet.common.envs import EnvSpec
from qfleet.common.metrics import Episode, MetricsWriter
from qfleet.learner.evaluation import evaluate


def make_learner(method: str, parts: dict, env: EnvSpec, seed: int):
    """The learner of `method` ('random-search' or 'reinforce'), from its section of `parts`."""
    if method == "random-search":
        from qfleet.learner.baselines.random_search import RandomSearch
        return RandomSearch(cfg=parts["random_search"], env=env, seed=seed)
    from qfleet.learner.baselines.reinforce import Reinforce
    return Reinforce(cfg=parts["reinforce"], env=env, seed=seed)


class BaselineRun:
    """The training loop around a baseline learner: budgets, greedy evaluations, metrics."""

    def __init__(self, *, learner, cfg: BaselineRunConfig, env: EnvSpec, threshold: Optional[float],
                 writer: MetricsWriter, stop: Callable[[], bool], on_eval: Callable[[dict], None] = lambda r: None,
                 say: Callable[[str], None] = print):
        """`on_eval` gets each evaluation's record (the caller writes it as a DQN run's eval/ metrics)."""
        self.learner, self.cfg, self.env, self.threshold = learner, cfg, env, threshold
        self.writer, self.stop, self.on_eval, self.say = writer, stop, on_eval, say
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
        r = evaluate(self.learner.greedy(), self.env, self.cfg.eval_episodes, seed)
        solved = self.threshold is not None and r.mean >= self.threshold
        if solved and self.solved_after_s is None:
            self.solved_after_s = self.elapsed
        self.evals.append({"eval_mean": r.mean, "eval_std": r.std, "eval_min": r.min, "eval_max": r.max,
                           "eval_episodes": len(r.returns), "eval_version": self.learner.updates,
                           "updates": self.learner.updates, "solved": self.solved_after_s is not None,
                           "elapsed_s": self.elapsed, "env_steps": self.env_steps})
        self.on_eval(self.evals[-1])

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
