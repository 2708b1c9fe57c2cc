"""Watching an agent: greedy episodes rendered as an animated GIF that opens in any browser.

    info = record_gif(policy, env_spec, "agent.gif", episodes=3, seed=0)

The episodes are played side by side by `learner.evaluation.evaluate` (rgb_array rendering)
and shown one after another. To keep the file small, frames are downscaled to `width`
pixels as they arrive (frames under an eighth of it, such as MinAtar's 10x10 grids, are scaled
up by a whole factor instead, each cell a block) and put on the first frame's palette, and only every k-th frame is
kept, with k chosen from the environment's step limit so that at most `max_frames` are
stored. The GIF plays in real time: render_fps / k frames per second.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image

from qfleet.common.envs import EnvSpec
from qfleet.common.errors import EnvironmentSpecError
from qfleet.learner.evaluation import EvalResult, evaluate

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame renders off-screen: no display needed
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

DEFAULT_FPS = 30.0
MIN_FRAME_MS = 20  # browsers show GIF delays under 20 ms as 100 ms


class GifInfo(NamedTuple):
    path: Path
    frames: int          # frames handed to the encoder (identical neighbours are merged in the file)
    stride: int          # every stride-th rendered frame was kept
    frame_ms: int        # display time of one kept frame
    size: tuple          # (width, height) in pixels
    truncated: bool      # max_frames was reached before the episodes ended
    result: EvalResult   # returns and lengths of the recorded episodes


def frame_stride(episodes: int, max_episode_steps: Optional[int], max_frames: int) -> int:
    """Keep every k-th frame so that `episodes` full-length episodes fit in `max_frames`."""
    if not max_episode_steps:
        return 1
    return max(1, math.ceil(episodes * (max_episode_steps + 1) / max_frames))


def frame_ms(render_fps: Optional[float], stride: int) -> int:
    """Display time of a kept frame for real-time playback, in the GIF's 10 ms units."""
    ms = 1000.0 * stride / (render_fps or DEFAULT_FPS)
    return max(MIN_FRAME_MS, int(round(ms / 10.0)) * 10)


class FrameRecorder:
    """The `on_frames` sink of `evaluate`: keeps every `stride`-th frame of each copy's
    episode, downscaled and palettised, up to `max_frames` in all."""

    def __init__(self, *, copies: int, stride: int, width: int, max_frames: int):
        self.stride, self.width, self.max_frames = stride, width, max_frames
        self._frames: list[list[Image.Image]] = [[] for _ in range(copies)]
        self._seen = np.zeros(copies, np.int64)
        self._palette: Optional[Image.Image] = None
        self.stored = 0
        self.truncated = False

    def __call__(self, frames: Sequence[Optional[np.ndarray]], live: np.ndarray) -> None:
        for i in np.flatnonzero(live):
            if self._seen[i] % self.stride == 0:
                if self.stored >= self.max_frames:
                    self.truncated = True
                else:
                    self._frames[i].append(self._shrink(frames[i]))
                    self.stored += 1
            self._seen[i] += 1

    def _shrink(self, frame: Optional[np.ndarray]) -> Image.Image:
        if frame is None or np.ndim(frame) != 3:
            raise EnvironmentSpecError("the environment returned no rgb_array frame from render(); "
                                       "it needs render_mode='rgb_array' support to be recorded")
        frame = np.asarray(frame)
        if frame.dtype.kind == "f":  # some environments (MinAtar) render colours in [0, 1]
            frame = np.clip(frame * 255.0 if frame.max(initial=0.0) <= 1.0 else frame, 0, 255).round()
        img = Image.fromarray(np.asarray(frame, np.uint8))
        if img.width > self.width:
            img = img.resize((self.width, max(1, round(img.height * self.width / img.width))), Image.BILINEAR)
        elif img.width * 8 <= self.width:  # tiny game grids: whole cells, crisp (nearest neighbour)
            k = self.width // img.width
            img = img.resize((img.width * k, img.height * k), Image.NEAREST)
        if self._palette is None:
            self._palette = img.quantize(colors=256, dither=Image.Dither.NONE)
            return self._palette
        return img.quantize(palette=self._palette, dither=Image.Dither.NONE)

    def frames(self) -> list[Image.Image]:
        """The kept frames, episode after episode."""
        return [f for episode in self._frames for f in episode]


def save_gif(frames: Sequence[Image.Image], path: str | Path, frame_ms: int) -> Path:
    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=frame_ms, loop=0,
                   optimize=False, disposal=1)
    return path


def record_gif(policy: Callable[[np.ndarray], np.ndarray], env: EnvSpec, path: str | Path, *,
               episodes: int = 3, seed: int = 0, max_frames: int = 600, width: int = 320) -> GifInfo:
    """Play `episodes` greedy episodes (seeds seed, seed+1, ...) and write them to `path`."""
    stride = frame_stride(episodes, env.max_episode_steps, max_frames)
    recorder = FrameRecorder(copies=episodes, stride=stride, width=width, max_frames=max_frames)
    result = evaluate(policy, env, episodes, seed, max_steps=max_frames * stride, on_frames=recorder)
    frames = recorder.frames()
    ms = frame_ms(env.render_fps, stride)
    save_gif(frames, path, ms)
    return GifInfo(Path(path), len(frames), stride, ms, frames[0].size, recorder.truncated, result)
