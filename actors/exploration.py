"""Exploration: Ape-X per-environment epsilons, and the decaying schedules of the tutorials.

Every schedule answers `epsilons()` with one epsilon per environment of the actor, and
moves on with `advance(steps, finished_episodes)`. Its state (two counters) is what a
checkpoint keeps.
"""
from __future__ import annotations

import math

import numpy as np

from qfleet.common.config import ActorConfig


def apex_epsilons(actor_index: int, num_actors: int, envs_per_actor: int, base: float, alpha: float) -> np.ndarray:
    """eps_i = base ** (1 + alpha * i / (K - 1)) for this actor's slice of all K environments."""
    total = num_actors * envs_per_actor
    i = np.arange(actor_index * envs_per_actor, (actor_index + 1) * envs_per_actor, dtype=np.float64)
    exponent = 1.0 + alpha * i / (total - 1) if total > 1 else np.ones_like(i)
    return np.power(base, exponent)


class EpsilonSchedule:
    """Fixed per-env epsilons ('apex') or one decaying value shared by the actor's envs."""

    def __init__(self, cfg: ActorConfig, actor_index: int, num_actors: int):
        self.kind = cfg.epsilon
        self.cfg = cfg
        self.env_steps = 0   # vector steps x envs, this actor
        self.episodes = 0    # finished episodes, this actor
        self._fixed = apex_epsilons(actor_index, num_actors, cfg.envs_per_actor, cfg.eps_base, cfg.eps_alpha)

    def epsilons(self) -> np.ndarray:
        if self.kind == "apex":
            return self._fixed
        return np.full(self.cfg.envs_per_actor, self.value())

    def value(self) -> float:
        """The current decaying epsilon (for 'apex': the mean of the fixed ones)."""
        c = self.cfg
        if self.kind == "linear":
            frac = min(1.0, self.env_steps / c.eps_decay_steps)
            return c.eps_start + frac * (c.eps_end - c.eps_start)
        if self.kind == "exponential":
            return c.eps_end + (c.eps_start - c.eps_end) * math.exp(-self.env_steps / c.eps_decay_steps)
        if self.kind == "per_episode":
            return max(c.eps_end, c.eps_start * c.eps_decay_rate ** self.episodes)
        return float(self._fixed.mean())

    def advance(self, env_steps: int, finished_episodes: int) -> None:
        self.env_steps += env_steps
        self.episodes += finished_episodes

    def state(self) -> dict:
        return {"env_steps": self.env_steps, "episodes": self.episodes}

    def load(self, state: dict) -> None:
        self.env_steps, self.episodes = int(state["env_steps"]), int(state["episodes"])
