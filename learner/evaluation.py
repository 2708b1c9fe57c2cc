"""Greedy evaluation (epsilon 0, or a given epsilon) over many episodes at once, and its
background runner.

`evaluate` runs E copies of the environment as one vector env, one episode each (steps of
copies whose episode ended are ignored), and returns the episode returns; given
`on_frames`, it also renders them (what `learner.recording` turns into GIFs). With pixel
settings the copies are observed as stacked frames, exactly as the actors see them.
`BackgroundEvaluator` runs it in a child process on a snapshot of the weights, so
training goes on while it plays (a CNN policy runs in torch on the CPU there). A failed
evaluation (the environment raised, the child died) is an `EvaluationError` for the
learner to report: that evaluation is skipped and a dead child is replaced.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
from multiprocessing.connection import Connection
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from qfleet.common.config import PixelConfig
from qfleet.common.envs import EnvSpec, make_vec_env
from qfleet.common.errors import EvaluationError
from qfleet.common.netspec import NetSpec
from qfleet.common.policy import make_policy


class EvalResult(NamedTuple):
    version: int
    mean: float
    std: float
    min: float
    max: float
    returns: np.ndarray
    lengths: np.ndarray


FrameSink = Callable[[Sequence[np.ndarray], np.ndarray], None]


def evaluate(policy: Callable[[np.ndarray], np.ndarray], env: str | EnvSpec, episodes: int, seed: int,
             max_steps: int = 100_000, version: int = -1, on_frames: Optional[FrameSink] = None,
             pixels: Optional[PixelConfig] = None, epsilon: float = 0.0) -> EvalResult:
    """Returns of the greedy policy (policy: obs -> Q-values or action scores; it takes the
    argmax) over `episodes` episodes; with `epsilon` > 0, each step of each copy takes a
    uniformly random action with that probability instead (drawn from `seed`), the
    epsilon-greedy scoring that papers report (0.1 in MinAtar's, 0.05 in Nature DQN's). With `on_frames`, every copy is rendered (rgb_array)
    after the reset and after each step, and `on_frames(frames, live)` gets the frames and
    which copies they belong to an episode of (the frame of a final step included). With
    `pixels`, the policy sees stacked preprocessed frames (`common.pixel_env`); an EnvSpec
    for `env` brings its own pixels and env_kwargs."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon {epsilon} is not a probability: use a value from 0 to 1")
    env = make_vec_env(env, episodes, pixels=pixels, render_mode="rgb_array" if on_frames else None)
    explore = np.random.default_rng([seed, 0xE75]) if epsilon > 0 else None
    try:
        obs, _ = env.reset(seed=seed)
        returns = np.zeros(episodes)
        lengths = np.zeros(episodes, np.int64)
        running = np.ones(episodes, bool)
        if on_frames:
            on_frames(env.render(), running.copy())
        for _ in range(max_steps):
            actions = policy(obs).argmax(axis=1)
            if explore is not None:
                random_actions = explore.integers(env.single_action_space.n, size=episodes)
                actions = np.where(explore.random(episodes) < epsilon, random_actions, actions)
            obs, reward, terminated, truncated, _ = env.step(actions)
            returns += reward * running
            lengths += running
            if on_frames:
                on_frames(env.render(), running.copy())
            running &= ~(terminated | truncated)
            if not running.any():
                break
    finally:
        env.close()
    return EvalResult(version, float(returns.mean()), float(returns.std()), float(returns.min()),
                      float(returns.max()), returns, lengths)


def greedy_policy(spec: NetSpec, params: dict) -> Callable[[np.ndarray], np.ndarray]:
    """obs -> Q-values for a parameter dict (numpy for MLPs, torch on the CPU for CNNs)."""
    net = make_policy(spec)
    net.load(params)
    return net


def _serve(conn: Connection, spec: NetSpec, env: EnvSpec, episodes: int, epsilon: float) -> None:
    """The evaluator process: evaluate each (params, version, seed) it is sent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the learner decides when it stops
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the learner is gone
            return
        params, version, seed = job
        try:
            result = evaluate(greedy_policy(spec, params), env, episodes, seed, version=version, epsilon=epsilon)
        except Exception as exc:  # the user's environment may raise anything
            result = EvaluationError(f"evaluation of version {version} failed: {type(exc).__name__}: {exc}")
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):  # the learner is gone
            return


_DIED = object()  # what `_receive` says when the child is gone


class BackgroundEvaluator:
    """Greedy evaluation in a child process, one job at a time, so training never waits
    for it and it does not compete with the update loop for the GIL (it takes ~15% of a
    core when it shares the learner's). Weights travel over a local pipe to our own child."""

    def __init__(self, *, spec: NetSpec, env: EnvSpec, episodes: int, seed: int, epsilon: float = 0.0):
        self._args = (spec, env, episodes, epsilon)
        self._seed = seed
        self._pending: Optional[dict] = None
        self.result_params: Optional[dict] = None  # the weights behind the last polled result
        self.evaluations = 0
        self.restarts = 0  # children started to replace a dead one
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, *self._args), daemon=True, name="qfleet-evaluator")
        self._proc.start()
        child.close()

    def _replace_dead_child(self) -> str:
        """Start a new child in place of a dead one; what became of the old one."""
        self._proc.join(1.0)
        code = self._proc.exitcode
        self._conn.close()
        self._pending = None
        self.restarts += 1
        self._start()
        return f"the evaluator process died (exit code {code}); a new one was started"

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, params: dict, version: int) -> bool:
        """Start evaluating `params` unless an evaluation is running; True if started."""
        if self.busy:
            return False
        seed = self._seed + 10_007 * self.evaluations  # fresh start states each time
        self.evaluations += 1
        try:
            self._conn.send((params, version, seed))
        except (BrokenPipeError, OSError):  # died while idle: this evaluation waits for the next turn
            raise EvaluationError(self._replace_dead_child()) from None
        self._pending = params
        return True

    def poll(self, timeout: float = 0.0) -> Optional[EvalResult]:
        """The finished result (once), or None; EvaluationError if the evaluation failed
        (the next `submit` starts a fresh one)."""
        if not self.busy:
            return None
        result = self._receive(timeout)
        if result is None:
            return None
        if result is _DIED:
            raise EvaluationError(self._replace_dead_child())
        self.result_params, self._pending = self._pending, None
        if isinstance(result, EvaluationError):
            raise result
        return result

    def _receive(self, timeout: float) -> object:
        """What the child sent, None while it is still evaluating, or _DIED."""
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()
        except (EOFError, OSError):  # the pipe closed: the child is gone
            return _DIED
        return None if self._proc.is_alive() else _DIED

    def close(self) -> None:
        """Stop the child at once: it holds nothing to save, a running evaluation is no longer
        wanted, and a child asked to return spends ~1 s tearing torch down on a busy 2-core
        machine, which the learner's shutdown grace cannot spare."""
        self._proc.kill()
        self._proc.join(1.0)
        self._conn.close()
