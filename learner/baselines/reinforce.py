"""REINFORCE (Monte-Carlo policy gradient) in numpy.

A small MLP (tanh hidden layers, softmax over actions) is the policy. Each train_step
plays `episodes_per_update` episodes at once as one vector env, sampling actions from the
policy; every step's action is weighted by its discounted return-to-go (normalised over the
batch when `normalize_returns`), and one Adam step descends
    loss = -mean_t [ G_t * log pi(a_t | s_t) ].
The greedy policy for evaluation plays the most probable action.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from qfleet.common.config import ReinforceConfig
from qfleet.common.envs import EnvSpec, make_vec_env
from qfleet.learner.adam import Adam
from qfleet.learner.baselines import Played

ADAM_EPS = 1e-8
MAX_EPISODE_STEPS = 100_000  # for environments without a step limit


class PolicyNet:
    """tanh MLP -> action logits, with the backward pass REINFORCE needs."""

    def __init__(self, sizes: list[int], rng: np.random.Generator):
        self.params: list[np.ndarray] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            scale = 0.01 if i == len(sizes) - 2 else 1.0  # near-uniform first policy
            self.params += [rng.standard_normal((fan_in, fan_out)) * scale / np.sqrt(fan_in), np.zeros(fan_out)]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits and the activations the backward pass needs."""
        acts = [x]
        for i in range(0, len(self.params) - 2, 2):
            acts.append(np.tanh(acts[-1] @ self.params[i] + self.params[i + 1]))
        return acts[-1] @ self.params[-2] + self.params[-1], acts

    def backward(self, d_logits: np.ndarray, acts: list[np.ndarray]) -> list[np.ndarray]:
        grads: list[np.ndarray] = [None] * len(self.params)  # type: ignore[list-item]
        d = d_logits
        for layer in range(len(self.params) // 2 - 1, -1, -1):
            grads[2 * layer], grads[2 * layer + 1] = acts[layer].T @ d, d.sum(axis=0)
            if layer:
                d = (d @ self.params[2 * layer].T) * (1.0 - acts[layer] ** 2)
        return grads


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Return-to-go along axis 0 of a (T, B) reward array (zero past each episode's end)."""
    out = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1:])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


class Reinforce:
    gradient_updates = True  # `updates` counts gradient steps

    def __init__(self, *, cfg: ReinforceConfig, env: EnvSpec, seed: int = 0):
        self.cfg, self.env, self.seed = cfg, env, seed
        self.rng = np.random.default_rng(seed)
        obs_dim = int(np.prod(env.obs_shape))
        self.net = PolicyNet([obs_dim, *cfg.hidden, env.num_actions], self.rng)
        self.adam = Adam(self.net.params, lr=cfg.lr, eps=ADAM_EPS)
        self.updates = 0
        self.loss = float("nan")
        self._envs = make_vec_env(env, cfg.episodes_per_update)
        self._max_steps = env.max_episode_steps or MAX_EPISODE_STEPS

    def _play(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One episode per copy: observations, actions, rewards and a live mask, each (T, B, ...)."""
        n = self.cfg.episodes_per_update
        obs, _ = self._envs.reset(seed=(self.seed * 1_000_003 + self.updates * n) % 2**31)
        running = np.ones(n, bool)
        trajectory: list[tuple] = []
        for _ in range(self._max_steps):
            x = obs.reshape(n, -1).astype(np.float64)
            p = softmax(self.net.forward(x)[0])
            actions = (self.rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1).clip(0, p.shape[1] - 1)
            obs, reward, terminated, truncated, _ = self._envs.step(actions)
            trajectory.append((x, actions, np.where(running, reward, 0.0), running.copy()))
            running &= ~(terminated | truncated)
            if not running.any():
                break
        xs, acts, rewards, live = (np.stack(z) for z in zip(*trajectory))
        return xs, acts, rewards, live

    def train_step(self) -> Played:
        xs, acts, rewards, live = self._play()
        returns = discounted_returns(rewards, self.cfg.gamma)[live]
        if self.cfg.normalize_returns:
            returns = (returns - returns.mean()) / (returns.std() + 1e-8)
        x, a = xs[live], acts[live]
        logits, cache = self.net.forward(x)
        p = softmax(logits)
        rows = np.arange(len(a))
        self.loss = float(-(returns * np.log(p[rows, a] + 1e-12)).mean())
        d_logits = p.copy()
        d_logits[rows, a] -= 1.0
        d_logits *= (returns / len(a))[:, None]
        self.adam.step(self.net.backward(d_logits, cache))
        self.updates += 1
        return Played(rewards.sum(axis=0), live.sum(axis=0))

    def greedy(self) -> Callable[[np.ndarray], np.ndarray]:
        net = PolicyNet.__new__(PolicyNet)
        net.params = [p.copy() for p in self.net.params]  # a snapshot: training goes on
        return lambda obs: net.forward(obs.reshape(len(obs), -1).astype(np.float64))[0]

    def metrics(self) -> dict:
        return {"learner/loss": self.loss}

    def close(self) -> None:
        self._envs.close()
