"""Tiny environments that stand for a user's own, loaded by import path
(`--env tests.user_envs:ReachTarget`)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np


class ReachTarget(gym.Env):
    """Walk left, stay or right on a line of 9 cells to reach the target cell. The observation
    is a (2, 3) array (position and target one-hot-ish features), to exercise multi-dimensional
    Box observations; reward -0.1 per step, +1 on arrival."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    reward_threshold = 0.5
    max_episode_steps = 30

    def __init__(self, render_mode: str | None = None):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self.render_mode = render_mode
        self.pos = self.target = 0

    def _obs(self) -> np.ndarray:
        p, t = self.pos / 8.0, self.target / 8.0
        return np.array([[p, t, p - t], [1.0, -p, -t]], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.target = (int(x) for x in self.np_random.choice(9, 2, replace=False))
        return self._obs(), {}

    def step(self, action):
        self.pos = int(np.clip(self.pos + int(action) - 1, 0, 8))
        done = self.pos == self.target
        return self._obs(), (1.0 if done else -0.1), done, False, {}

    def render(self):
        frame = np.full((20, 90, 3), 255, np.uint8)
        frame[5:15, 10 * self.target:10 * self.target + 10] = (0, 160, 0)
        frame[8:12, 10 * self.pos + 2:10 * self.pos + 8] = (200, 0, 0)
        return frame


class SteerContinuously(ReachTarget):
    """The same task with a continuous action: qfleet must refuse it."""

    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


class Corridor(gym.Env):
    """Walk right along a corridor of `length` cells (a constructor keyword argument, for
    run.env_kwargs): the observation is the one-hot position, so its shape is (length,);
    reward -0.1 per step, +1 at the far end."""

    max_episode_steps = 50

    def __init__(self, length: int = 6, render_mode: str | None = None):
        self.length = int(length)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.length,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.render_mode = render_mode
        self.pos = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.length, np.float32)
        obs[self.pos] = 1.0
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = int(np.clip(self.pos + (1 if int(action) == 1 else -1), 0, self.length - 1))
        done = self.pos == self.length - 1
        return self._obs(), (1.0 if done else -0.1), done, False, {}


class FrameCounter(gym.Env):
    """Stacks of 4 tiny uint8 frames whose pixels say which episode and step they show
    (pixel [0, 0] the episode, [0, 1] the step), for checking that stacks rebuilt from
    single frames are the ones observed. A reset stack repeats the first frame 4 times.
    Episodes last 3-25 steps and terminate, or are truncated at 20 steps; reward 1 a step."""

    metadata = {"render_modes": [], "render_fps": 10}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = gym.spaces.Box(0, 255, (4, 6, 6), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.episode, self.t, self.length = -1, 0, 0
        self.stack = np.zeros((4, 6, 6), np.uint8)

    @staticmethod
    def frame(episode: int, step: int) -> np.ndarray:
        f = np.full((6, 6), (episode * 31 + step * 7) % 256, np.uint8)
        f[0, 0], f[0, 1] = episode % 256, step % 256
        return f

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t, self.length = 0, int(self.np_random.integers(3, 26))
        self.stack = np.stack([self.frame(self.episode, 0)] * 4)
        return self.stack.copy(), {}

    def step(self, action):
        self.t += 1
        self.stack = np.concatenate([self.stack[1:], self.frame(self.episode, self.t)[None]])
        terminated = self.t >= self.length
        return self.stack.copy(), 1.0, terminated, not terminated and self.t >= 20, {}
