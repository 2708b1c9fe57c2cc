"""Random search over linear policies: sample weights, play, keep the best.

A candidate is a matrix W (obs_dim + 1, actions) with Gaussian entries; it plays the action
argmax([obs, 1] @ W) (with two actions that is the sign of one linear function of the
observation, as in the seed tutorial). Each candidate plays `episodes_per_candidate`
episodes through `learner.evaluation.evaluate`; the one with the best mean return is kept.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from qfleet.common.config import RandomSearchConfig
from qfleet.common.envs import EnvSpec
from qfleet.learner.baselines import Played
from qfleet.learner.evaluation import evaluate


def linear_policy(weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """obs batch -> action scores [obs, 1] @ weights."""
    w, b = weights[:-1], weights[-1]

    def scores(obs: np.ndarray) -> np.ndarray:
        return obs.reshape(len(obs), -1).astype(np.float64) @ w + b
    return scores


class RandomSearch:
    gradient_updates = False  # `updates` counts replacements of the best policy, not learning steps

    def __init__(self, *, cfg: RandomSearchConfig, env: EnvSpec, seed: int = 0):
        self.cfg, self.env, self.seed = cfg, env, seed
        self.rng = np.random.default_rng(seed)
        self.shape = (int(np.prod(env.obs_shape)) + 1, env.num_actions)
        self.best = self._sample()        # before any search: a random policy
        self.best_return = -np.inf
        self.candidates = 0
        self.updates = 0                  # times a better candidate replaced the best

    def _sample(self) -> np.ndarray:
        return self.rng.standard_normal(self.shape) * self.cfg.weight_scale

    def train_step(self) -> Played:
        candidate = self._sample()
        seed = (self.seed * 1_000_003 + self.candidates * self.cfg.episodes_per_candidate) % 2**31
        result = evaluate(linear_policy(candidate), self.env, self.cfg.episodes_per_candidate, seed)
        self.candidates += 1
        if result.mean > self.best_return:
            self.best, self.best_return = candidate, result.mean
            self.updates += 1
        return Played(result.returns, result.lengths)

    def greedy(self) -> Callable[[np.ndarray], np.ndarray]:
        return linear_policy(self.best)

    def metrics(self) -> dict:
        return {"search/candidates": self.candidates,
                "search/best_return": None if self.candidates == 0 else float(self.best_return)}

    def close(self) -> None:
        pass  # every candidate's episodes use their own vector env
