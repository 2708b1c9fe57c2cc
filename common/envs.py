"""Environment factory: resolve an id, describe its spaces, build vectorized batches.

`--env` takes a registered gymnasium id (`CartPole-v1`) or the import path of your own
environment class (`my_pkg.my_env:MyEnv`), which is registered under `qfleet/<Class>`.
qfleet needs a discrete action space and a Box observation space; anything else is refused
with a message that says so before any process starts.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple, Optional

import gymnasium as gym
import numpy as np

from common.errors import EnvironmentSpecError


class EnvSpec(NamedTuple):
    env_id: str               # the id gymnasium knows (after registering a user class)
    obs_shape: tuple
    obs_dtype: np.dtype
    num_actions: int
    reward_threshold: Optional[float]
    max_episode_steps: Optional[int]


def resolve_env_id(env: str) -> str:
    """The gymnasium id for `env`, registering `module:Class` paths on first use."""
    if ":" not in env or env in gym.registry:
        if env not in gym.registry:
            try:
                gym.spec(env)  # imports 'module:Id' namespaces and raises a helpful error
            except Exception as exc:
                raise EnvironmentSpecError(f"unknown environment '{env}': {exc}") from None
        return env
    module_name, _, attr = env.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EnvironmentSpecError(f"cannot import '{module_name}' for environment '{env}': {exc}") from None
    target = getattr(module, attr, None)
    if target is None:
        raise EnvironmentSpecError(f"module '{module_name}' has no attribute '{attr}' (from --env {env})")
    env_id = f"qfleet/{attr}-v0"
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=target)
    return env_id


def describe_env(env: str) -> EnvSpec:
    """Spaces and thresholds of `env`; EnvironmentSpecError if qfleet cannot train on it."""
    env_id = resolve_env_id(env)
    try:
        probe = gym.make(env_id)
    except Exception as exc:
        raise EnvironmentSpecError(f"cannot create environment '{env}': {type(exc).__name__}: {exc}") from None
    try:
        obs_space, act_space = probe.observation_space, probe.action_space
        if not isinstance(act_space, gym.spaces.Discrete):
            raise EnvironmentSpecError(
                f"'{env}' has a {type(act_space).__name__} action space; qfleet's DQN needs a Discrete one")
        if not isinstance(obs_space, gym.spaces.Box):
            raise EnvironmentSpecError(
                f"'{env}' has a {type(obs_space).__name__} observation space; qfleet needs a Box")
        spec = probe.spec
        threshold = spec.reward_threshold if spec is not None else None
        max_steps = spec.max_episode_steps if spec is not None else None
        dtype = np.dtype(np.float32) if obs_space.dtype.kind == "f" else np.dtype(obs_space.dtype)
        return EnvSpec(env_id, tuple(obs_space.shape), dtype, int(act_space.n),
                       None if threshold is None else float(threshold), max_steps)
    finally:
        probe.close()


def make_vec_env(env_id: str, num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    """`num_envs` copies as one batch: the environment's native vector implementation when it
    has one (CartPole does), else gymnasium's synchronous wrapper. Autoreset is NEXT_STEP:
    the step after an episode ends is a reset step whose output is not a transition."""
    spec = gym.spec(env_id)
    mode = "vector_entry_point" if spec.vector_entry_point is not None and not kwargs.get("render_mode") else "sync"
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, **kwargs)
    autoreset = env.metadata.get("autoreset_mode")
    if autoreset is not None and getattr(autoreset, "name", str(autoreset)) != "NEXT_STEP":
        env.close()
        raise EnvironmentSpecError(f"'{env_id}' vector env uses autoreset mode {autoreset}; qfleet expects NEXT_STEP")
    return env
