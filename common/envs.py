"""Environment factory: resolve an id, describe its spaces, build vectorized batches.

`--env` takes a registered gymnasium id (`CartPole-v1`) or the import path of your own
environment class (`my_pkg.my_env:MyEnv`). Such a class is registered with gymnasium in
every process that makes it (spawned children included), under `qfleet/<Class>-v0`, with the
class attributes `reward_threshold` and `max_episode_steps` when it defines them (the
threshold decides "solved"; the step limit adds gymnasium's TimeLimit).
qfleet needs a discrete action space and a Box observation space (any shape; networks
flatten it); anything else is refused with a message that says so before any process starts.

With pixel settings (`run.obs: pixels`), the observations are the environment's rendered
frames instead, preprocessed and stacked by `common.pixel_env.PixelObservations`; the
EnvSpec then describes those (k, size, size) uint8 stacks and carries the settings, so
every process builds the same observations from it.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping, NamedTuple, Optional

import gymnasium as gym
import numpy as np

from qfleet.common import atari
from qfleet.common.config import PixelConfig, QfleetConfig
from qfleet.common.errors import EnvironmentSpecError
from qfleet.common.extras import require


class EnvSpec(NamedTuple):
    env_id: str               # what --env said: a gymnasium id or module:Class (see make_vec_env)
    obs_shape: tuple
    obs_dtype: np.dtype
    num_actions: int
    reward_threshold: Optional[float]
    max_episode_steps: Optional[int]
    render_fps: Optional[float] = None  # frames per second of real-time rendering, when declared
    pixels: Optional[PixelConfig] = None  # set: observations are stacked preprocessed frames
    env_kwargs: tuple = ()    # (name, value) pairs for gym.make (run.env_kwargs), in every process
    preset: Optional[str] = None  # "atari": made by common.atari (run.preset)

    @property
    def kwargs(self) -> dict:
        return dict(self.env_kwargs)


# Id namespaces whose environments a package registers, and the extra that installs it.
NAMESPACES = {"ALE": ("ale_py", "Atari games (ALE/...)"), "MinAtar": ("minatar", "MinAtar games (MinAtar/...)")}


def register_namespace(env: str) -> None:
    """Register the package's environments for an ALE/ or MinAtar/ id (MissingExtraError
    with the pip command when its extra is not installed)."""
    namespace = env.split("/", 1)[0] if "/" in env else ""
    if namespace not in NAMESPACES or env in gym.registry:
        return
    module, what = NAMESPACES[namespace]
    package = require(module, f"--env {env} ({what})")
    if module == "ale_py":
        gym.register_envs(package)
    else:
        importlib.import_module("minatar.gym").register_envs()


def resolve_env_id(env: str) -> str:
    """The gymnasium id for `env`, registering `module:Class` paths on first use."""
    register_namespace(env)
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
        if attr in gym.registry:  # gymnasium's 'module:Env-v0' form: importing the module registered it
            return attr
        raise EnvironmentSpecError(f"module '{module_name}' has no attribute '{attr}' (from --env {env})")
    env_id = f"qfleet/{attr}-v0"
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=target, reward_threshold=getattr(target, "reward_threshold", None),
                     max_episode_steps=getattr(target, "max_episode_steps", None))
    return env_id


def describe_run_env(cfg: QfleetConfig) -> EnvSpec:
    """The EnvSpec of a run: its environment, made with run.env_kwargs, observed as run.obs says."""
    return describe_env(cfg.run.env, pixels=cfg.pixels if cfg.run.obs == "pixels" else None,
                        env_kwargs=cfg.run.env_kwargs, preset=cfg.run.preset)


def describe_env(env: str, pixels: Optional[PixelConfig] = None,
                 env_kwargs: Optional[Mapping[str, Any]] = None, preset: Optional[str] = "auto") -> EnvSpec:
    """Spaces and thresholds of `env` made with `env_kwargs` (seen through `pixels` if
    given, or through the Atari preset for ALE ids when `preset` is 'auto' or 'atari');
    EnvironmentSpecError if qfleet cannot train on it."""
    if preset in ("auto", "atari") and pixels is None and atari.is_atari(env):
        return _describe_atari(env, dict(env_kwargs or {}))
    spec = _describe(env, dict(env_kwargs or {}))
    if pixels is None:
        return spec
    _check_pixels(env, pixels, spec.kwargs)
    return spec._replace(obs_shape=(pixels.frame_stack, pixels.size, pixels.size), obs_dtype=np.dtype(np.uint8),
                         pixels=pixels)


def _describe_atari(env: str, kwargs: dict) -> EnvSpec:
    register_namespace(env)  # names the atari extra when ale-py is missing
    if env not in gym.registry:
        raise EnvironmentSpecError(f"unknown environment '{env}': ale-py has no such game "
                                   "(ids are ALE/<Game>-v5, e.g. ALE/Pong-v5, ALE/SpaceInvaders-v5)")
    try:
        probe = atari.make_atari_vec(env, 1, kwargs)
    except ValueError as exc:
        raise EnvironmentSpecError(f"--env {env}: {exc}") from None
    except Exception as exc:  # a bad value for a preset setting
        raise EnvironmentSpecError(f"cannot create environment '{env}' with the Atari preset: "
                                   f"{type(exc).__name__}: {exc}") from None
    try:
        actions = int(probe.single_action_space.n)
    finally:
        probe.close()
    frameskip = atari.preset_kwargs(kwargs)["frameskip"]
    return EnvSpec(env, atari.obs_shape(kwargs), np.dtype(np.uint8), actions, None, None, 60.0 / frameskip,
                   env_kwargs=tuple(sorted(kwargs.items())), preset="atari")


def _describe(env: str, kwargs: dict) -> EnvSpec:
    env_id = resolve_env_id(env)
    try:
        probe = gym.make(env_id, **kwargs)
    except EnvironmentSpecError:
        raise
    except TypeError as exc:
        raise EnvironmentSpecError(f"cannot create environment '{env}' with run.env_kwargs {kwargs}: {exc}") from None
    except Exception as exc:
        hint = " (pip install 'qfleet[box2d]')" if "box2d" in str(exc).lower() else ""
        raise EnvironmentSpecError(f"cannot create environment '{env}': {type(exc).__name__}: {exc}{hint}") from None
    try:
        obs_space, act_space = probe.observation_space, probe.action_space
        if not isinstance(act_space, gym.spaces.Discrete):
            raise EnvironmentSpecError(
                f"'{env}' has a {type(act_space).__name__} action space; qfleet's DQN needs a Discrete one")
        if int(act_space.start) != 0:
            raise EnvironmentSpecError(f"'{env}' has actions numbered from {int(act_space.start)}; qfleet needs them "
                                       "to start at 0 (wrap the environment to renumber them)")
        if not isinstance(obs_space, gym.spaces.Box):
            raise EnvironmentSpecError(
                f"'{env}' has a {type(obs_space).__name__} observation space; qfleet needs a Box")
        spec = probe.spec
        threshold = spec.reward_threshold if spec is not None else None
        max_steps = spec.max_episode_steps if spec is not None else None
        dtype = np.dtype(np.float32) if obs_space.dtype.kind == "f" else np.dtype(obs_space.dtype)
        fps = probe.metadata.get("render_fps")
        return EnvSpec(env, tuple(obs_space.shape), dtype, int(act_space.n),
                       None if threshold is None else float(threshold), max_steps, None if fps is None else float(fps),
                       env_kwargs=tuple(sorted(kwargs.items())))
    finally:
        probe.close()


def _check_pixels(env: str, pixels: PixelConfig, kwargs: dict) -> None:
    """Refuse, before anything starts, pixel settings this environment cannot produce."""
    from qfleet.common.pixel_env import choose_renderer, default_crop
    from qfleet.common.pixels import crop_pixels

    env_id = resolve_env_id(env)
    if choose_renderer(env_id, pixels.renderer) == "fast":
        crop_pixels(default_crop(env_id, pixels), 400, 600)  # the fast renderer draws CartPole's 600x400 screen
        return
    try:
        probe = gym.make(env_id, render_mode="rgb_array", **kwargs)
    except Exception as exc:
        raise EnvironmentSpecError(f"'{env}' cannot render rgb_array frames for --obs pixels: {exc}") from None
    try:
        probe.reset(seed=0)
        frame = probe.render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise EnvironmentSpecError(f"'{env}' rendered {type(frame).__name__}, not an (H, W, 3) rgb_array frame")
        crop_pixels(default_crop(env_id, pixels), frame.shape[0], frame.shape[1])
    finally:
        probe.close()


def make_vec_env(env: str | EnvSpec, num_envs: int, pixels: Optional[PixelConfig] = None,
                 render_mode: Optional[str] = None, env_kwargs: Optional[Mapping[str, Any]] = None
                 ) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env` (an id or module:Class, or an EnvSpec, whose pixels and
    env_kwargs then apply) as one batch: the environment's native vector implementation
    when it has one (CartPole does) and supports the render mode and keyword arguments, else
    gymnasium's synchronous wrapper. Autoreset is NEXT_STEP: the step after an episode ends
    is a reset step whose output is not a transition. With `pixels`, observations are
    stacked frames (`common.pixel_env`)."""
    if isinstance(env, EnvSpec) and env.preset == "atari":
        register_namespace(env.env_id)  # a missing ale-py is named with its pip command in every process
        if render_mode is not None:  # recording: a colour twin shows the console's own frames
            return atari.RecordedAtariVec(env.env_id, num_envs, env.kwargs)
        return atari.make_atari_vec(env.env_id, num_envs, env.kwargs)
    if isinstance(env, EnvSpec):
        env, pixels, env_kwargs = env.env_id, env.pixels, env.kwargs
    kwargs = dict(env_kwargs or {})
    env_id = resolve_env_id(env)
    if pixels is not None:
        from qfleet.common.pixel_env import PixelObservations, choose_renderer  # numba, Pillow: pixel runs only

        renderer = choose_renderer(env_id, pixels.renderer)
        frames = renderer == "stock" or render_mode is not None  # also for recording what it plays
        base = make_vec_env(env_id, num_envs, render_mode="rgb_array" if frames else None, env_kwargs=kwargs)
        return PixelObservations(base, env_id=env_id, cfg=pixels, renderer=renderer)
    spec = gym.spec(env_id)  # rendering copies are synchronous: each is seeded S+i and renders itself
    native = spec.vector_entry_point is not None and not render_mode and not kwargs
    if render_mode:
        kwargs["render_mode"] = render_mode
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point" if native else "sync",
                       **kwargs)
    autoreset = env.metadata.get("autoreset_mode")
    if autoreset is not None and getattr(autoreset, "name", str(autoreset)) != "NEXT_STEP":
        env.close()
        raise EnvironmentSpecError(f"'{env_id}' vector env uses autoreset mode {autoreset}; qfleet expects NEXT_STEP")
    return env
