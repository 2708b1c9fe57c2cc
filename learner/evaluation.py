"""Greedy evaluation (epsilon 0) over many episodes at once, and its background runner.

`evaluate` runs E copies of the environment as one vector env, one episode each (steps of
copies whose episode ended are ignored), and returns the episode returns.
`BackgroundEvaluator` runs it in a thread on a snapshot of the weights, so training
goes on while it plays (the numpy forward and the vector env are cheap next to updates).
"""
from __future__ import annotations

import threading
from typing import Callable, NamedTuple, Optional

import numpy as np

from common.envs import make_vec_env


class EvalResult(NamedTuple):
    version: int
    mean: float
    std: float
    min: float
    max: float
    returns: np.ndarray
    lengths: np.ndarray


def evaluate(policy: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int, seed: int,
             max_steps: int = 100_000, version: int = -1) -> EvalResult:
    """Mean return of the greedy policy over `episodes` episodes (policy: obs -> Q-values)."""
    env = make_vec_env(env_id, episodes)
    try:
        obs, _ = env.reset(seed=seed)
        returns = np.zeros(episodes)
        lengths = np.zeros(episodes, np.int64)
        running = np.ones(episodes, bool)
        for _ in range(max_steps):
            actions = policy(obs).argmax(axis=1)
            obs, reward, terminated, truncated, _ = env.step(actions)
            returns += reward * running
            lengths += running
            running &= ~(terminated | truncated)
            if not running.any():
                break
    finally:
        env.close()
    return EvalResult(version, float(returns.mean()), float(returns.std()), float(returns.min()),
                      float(returns.max()), returns, lengths)


class BackgroundEvaluator:
    """Evaluates submitted weights in a daemon thread; one evaluation at a time."""

    def __init__(self, make_policy: Callable[[dict], Callable[[np.ndarray], np.ndarray]], env_id: str,
                 episodes: int, seed: int):
        self._make_policy = make_policy
        self._env_id, self._episodes, self._seed = env_id, episodes, seed
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._result: Optional[tuple[EvalResult, dict]] = None
        self._error: Optional[BaseException] = None
        self.result_params: Optional[dict] = None  # the weights behind the last polled result
        self.evaluations = 0

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, params: dict, version: int) -> bool:
        """Start evaluating `params` unless an evaluation is running; True if started."""
        if self.busy:
            return False
        seed = self._seed + 10_007 * self.evaluations  # fresh start states each time
        self.evaluations += 1
        self._thread = threading.Thread(target=self._run, args=(params, version, seed), daemon=True,
                                        name="qfleet-eval")
        self._thread.start()
        return True

    def _run(self, params: dict, version: int, seed: int) -> None:
        try:
            result = evaluate(self._make_policy(params), self._env_id, self._episodes, seed, version=version)
            with self._lock:
                self._result = (result, params)
        except BaseException as exc:  # surfaced to the training thread by poll()
            with self._lock:
                self._error = exc

    def poll(self) -> Optional[EvalResult]:
        """The newest finished result (once), or None; re-raises an evaluation error."""
        with self._lock:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            done, self._result = self._result, None
        if done is None:
            return None
        result, self.result_params = done
        return result

    def wait(self, timeout: float) -> Optional[EvalResult]:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()
