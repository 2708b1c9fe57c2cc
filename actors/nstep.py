"""Vectorized n-step adder.

For each of V environments it keeps the last n (obs, action, reward) steps and emits
transitions (obs_t, a_t, R_t, next_obs, discount) with

    R_t = r_t + g r_{t+1} + ... + g^(n-1) r_{t+n-1},   next_obs = obs_{t+n},   discount = g^n

When an episode *terminates*, every pending step is emitted with its partial return and
discount 0 (no bootstrap). When it is *truncated* (time limit), every pending step is
emitted with discount g^m (m = steps to the end) and the last observation, so the learner
bootstraps from it. Steps marked invalid (gymnasium's autoreset step after an episode
ended) are not transitions and are skipped.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from qfleet.common.messages import transition_layout


class NStepAdder:
    def __init__(self, *, num_envs: int, n: int, gamma: float, obs_shape: Sequence[int], obs_dtype=np.float32):
        self.num_envs, self.n, self.gamma = num_envs, n, gamma
        self._obs = np.zeros((num_envs, n, *obs_shape), obs_dtype)
        self._action = np.zeros((num_envs, n), np.int32)
        self._reward = np.zeros((num_envs, n), np.float64)
        self._head = np.zeros(num_envs, np.int64)   # oldest pending step, per env
        self._count = np.zeros(num_envs, np.int64)  # pending steps, per env
        self._powers = gamma ** np.arange(n + 1)
        # _tail_discounts[j, p] = gamma^(j - p) for j >= p: rewards @ it gives every suffix return
        j, p = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        self._tail_discounts = np.where(j >= p, gamma ** np.clip(j - p, 0, None), 0.0)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray, truncated: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        """Record one vector step; returns the transitions it completes (possibly none)."""
        envs = np.flatnonzero(valid)
        pos = (self._head[envs] + self._count[envs]) % self.n
        self._obs[envs, pos] = obs[envs]
        self._action[envs, pos] = action[envs]
        self._reward[envs, pos] = reward[envs]
        self._count[envs] += 1

        ended = valid & (terminated | truncated)
        full = valid & ~ended & (self._count == self.n)
        parts = []
        if full.any():
            parts.append(self._emit_oldest(np.flatnonzero(full), next_obs))
        if ended.any():
            parts.append(self._emit_ended(np.flatnonzero(ended), next_obs, terminated))
        return _concat(parts, self._obs.shape[2:], self._obs.dtype)

    def _emit_oldest(self, envs: np.ndarray, next_obs: np.ndarray) -> dict[str, np.ndarray]:
        head = self._head[envs]
        steps = (head[:, None] + np.arange(self.n)) % self.n
        rewards = np.take_along_axis(self._reward[envs], steps, axis=1)
        out = {"obs": self._obs[envs, head], "action": self._action[envs, head],
               "reward": (rewards @ self._powers[: self.n]).astype(np.float32),
               "next_obs": next_obs[envs], "discount": np.full(len(envs), self._powers[self.n], np.float32)}
        self._head[envs] = (head + 1) % self.n
        self._count[envs] -= 1
        return out

    def _emit_ended(self, envs: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray) -> dict[str, np.ndarray]:
        """Every pending step of every ended env at once (one row per env of the n-step
        window, oldest first; rows past an env's pending count are dropped)."""
        n = self.n
        count = self._count[envs]
        slots = (self._head[envs][:, None] + np.arange(n)) % n          # (k, n), oldest first
        keep = np.arange(n)[None, :] < count[:, None]                   # (k, n)
        rewards = np.where(keep, np.take_along_axis(self._reward[envs], slots, axis=1), 0.0)
        returns = rewards @ self._tail_discounts                        # returns[e, p] = sum_j>=p g^(j-p) r_j
        remaining = count[:, None] - np.arange(n)[None, :]
        discount = np.where(terminated[envs][:, None], 0.0, self._powers[np.clip(remaining, 0, n)])
        rows, cols = np.nonzero(keep)
        env_rows, slot_rows = envs[rows], slots[rows, cols]
        out = {"obs": self._obs[env_rows, slot_rows], "action": self._action[env_rows, slot_rows],
               "reward": returns[rows, cols].astype(np.float32), "next_obs": next_obs[env_rows],
               "discount": discount[rows, cols].astype(np.float32)}
        self._head[envs] = 0
        self._count[envs] = 0
        return out

    def pending(self) -> int:
        return int(self._count.sum())


def _concat(parts: list, obs_shape, obs_dtype) -> dict[str, np.ndarray]:
    if not parts:
        return {name: np.zeros((0, *shape), dtype) for name, (dtype, shape) in
                transition_layout(obs_shape, obs_dtype).items()}
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
