"""Pixel observations for any vector env: rendered frames, preprocessed and stacked.

`PixelObservations` wraps a vector env (NEXT_STEP autoreset) so that each observation is
the stack of the last k preprocessed frames of that environment, (k, size, size) uint8,
newest last. Frames come either from the environment's own rgb_array rendering ('stock':
`common.pixels.preprocess_frames`) or, for CartPole, from `common.cartpole_render`
drawing the same scene from the state ('fast').

Episode boundaries with NEXT_STEP autoreset: the step after an episode ended returns the
first observation of the next episode (reward 0, not a transition). Its frame starts a new
stack (all k slots hold it), so a stack never mixes two episodes; the terminal observation
of the ended episode is still the stack of that episode's last k frames.

Actors and the evaluator get this through `common.envs.make_vec_env(..., pixels=cfg)`.
"""
from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np

from qfleet.common.config import PixelConfig
from qfleet.common.errors import EnvironmentSpecError
from qfleet.common.pixels import Crop, FrameStack, crop_pixels, preprocess_frames

CARTPOLE_ENTRY_POINT = "gymnasium.envs.classic_control.cartpole:CartPoleEnv"


def is_cartpole(env_id: str) -> bool:
    return gym.spec(env_id).entry_point == CARTPOLE_ENTRY_POINT


def choose_renderer(env_id: str, requested: str) -> str:
    """'fast' or 'stock' for a pixels.renderer setting of auto, fast or stock."""
    if requested == "fast" and not is_cartpole(env_id):
        raise EnvironmentSpecError(f"pixels.renderer = 'fast' draws CartPole only, not '{env_id}'; "
                                   "use 'stock' or 'auto'")
    if requested == "auto":
        return "fast" if is_cartpole(env_id) else "stock"
    return requested


def default_crop(env_id: str, cfg: PixelConfig) -> tuple[float, ...]:
    if cfg.crop:
        return tuple(cfg.crop)
    if is_cartpole(env_id):
        from qfleet.common.cartpole_render import CARTPOLE_CROP

        return CARTPOLE_CROP
    return (0.0, 1.0, 0.0, 1.0)


class PixelObservations(gym.vector.VectorWrapper):
    """Observations become (k, size, size) uint8 stacks of preprocessed rendered frames."""

    def __init__(self, env: gym.vector.VectorEnv, *, env_id: str, cfg: PixelConfig, renderer: str):
        super().__init__(env)
        self.cfg, self.renderer = cfg, renderer
        self._crop_fractions = default_crop(env_id, cfg)
        self._crop: Optional[Crop] = None
        self._fast = None
        if renderer == "fast":
            from qfleet.common.cartpole_render import CartPoleRenderer  # numba: only for pixel runs

            base = env.unwrapped
            height, width = getattr(base, "screen_height", 400), getattr(base, "screen_width", 600)
            self._crop = crop_pixels(self._crop_fractions, height, width)
            self._fast = CartPoleRenderer(size=cfg.size, crop=self._crop,
                                          x_threshold=getattr(base, "x_threshold", 2.4),
                                          pole_half_length=getattr(base, "length", 0.5),
                                          screen_width=width, screen_height=height)
        self._stack = FrameStack(num_envs=env.num_envs, k=cfg.frame_stack, size=cfg.size)
        self._ended = np.zeros(env.num_envs, bool)  # episodes that ended on the previous step
        self.single_observation_space = gym.spaces.Box(0, 255, (cfg.frame_stack, cfg.size, cfg.size), np.uint8)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)

    def frames(self, obs: np.ndarray) -> np.ndarray:
        """The preprocessed (N, size, size) frames of the current states."""
        if self._fast is not None:
            return self._fast.render(obs)
        images = self.env.render()
        if images is None:
            raise EnvironmentSpecError("the environment rendered nothing; it needs render_mode='rgb_array'")
        if self._crop is None:
            self._crop = crop_pixels(self._crop_fractions, *np.asarray(images[0]).shape[:2])
        return preprocess_frames(images, self._crop, self.cfg.size)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._ended[:] = False
        return self._stack.reset(self.frames(obs)), info

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        stacked = self._stack.push(self.frames(obs), self._ended)  # a reset step starts a new stack
        self._ended = np.logical_or(terminated, truncated)
        return stacked, reward, terminated, truncated, info
