"""Pixel observations: crop, grayscale, downscale, and stack the last k frames.

A rendered RGB frame (H, W, 3) becomes one uint8 (size, size) frame in three steps:

1. crop to rows [top, bottom) and columns [left, right) (`Crop`, from fractions of H and W);
2. grayscale with ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B), Pillow's "L" mode;
3. downscale to size x size with a box filter: each output pixel averages the source
   pixels whose centres fall inside its footprint (Pillow's Image.BOX, horizontal pass
   first, rounded to uint8 between the passes).

`preprocess_frames` does this with Pillow. `box_taps` gives the same filter as
integer index/weight tables (Pillow's own fixed-point arithmetic), for renderers that
draw at screen resolution and filter as they go (`common.cartpole_render`): their output
is then the stock pipeline's, pixel for pixel, wherever they draw the same pixels.

`FrameStack` keeps the last k frames of every environment of a vector env, newest last.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

from qfleet.common.errors import ConfigError

PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)


class Crop(NamedTuple):
    """Pixel bounds of the kept part of a frame: rows [top, bottom), columns [left, right)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


def crop_pixels(fractions: Sequence[float], height: int, width: int) -> Crop:
    """The Crop of an (height, width) frame for (top, bottom, left, right) fractions."""
    if len(fractions) != 4:
        raise ConfigError(f"pixels.crop = {tuple(fractions)} must hold 4 fractions (top, bottom, left, right)")
    top, bottom = round(fractions[0] * height), round(fractions[1] * height)
    left, right = round(fractions[2] * width), round(fractions[3] * width)
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ConfigError(f"pixels.crop = {tuple(fractions)} keeps nothing of a {height}x{width} frame "
                          "(needs top < bottom and left < right)")
    return Crop(top, bottom, left, right)


def luma(rgb: Sequence[int]) -> int:
    """Pillow's RGB -> L conversion of one colour (ITU-R 601-2, rounded in fixed point)."""
    r, g, b = rgb
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def preprocess_frames(frames: Sequence[np.ndarray], crop: Crop, size: int) -> np.ndarray:
    """(N, size, size) uint8 from N RGB frames: crop, grayscale, box downscale."""
    out = np.empty((len(frames), size, size), np.uint8)
    box = (crop.left, crop.top, crop.right, crop.bottom)
    for i, frame in enumerate(frames):
        image = Image.fromarray(np.asarray(frame, np.uint8)).crop(box).convert("L")
        out[i] = np.asarray(image.resize((size, size), Image.BOX))
    return out


def box_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's box filter from in_size to out_size pixels as integer taps.

    Returns (first, count, weight): output pixel j averages source pixels first[j] ..
    first[j] + count[j] - 1 with weights weight[j, :count[j]] in units of 2**-22, and is
    (2**21 + sum(weight * pixel)) >> 22 clipped to [0, 255], as Pillow computes it.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    width = int(np.ceil(support)) * 2 + 1
    first = np.zeros(out_size, np.int64)
    count = np.zeros(out_size, np.int64)
    weight = np.zeros((out_size, width), np.int64)
    for j in range(out_size):
        center = (j + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        x = (np.arange(lo, hi) - center + 0.5) / filterscale
        w = ((x > -0.5) & (x <= 0.5)).astype(np.float64)
        w /= w.sum()
        first[j], count[j] = lo, hi - lo
        weight[j, :hi - lo] = np.floor(0.5 + w * (1 << PRECISION_BITS)).astype(np.int64)
    return first, count, weight


def box_resize(gray: np.ndarray, size: int) -> np.ndarray:
    """(H, W) uint8 -> (size, size) uint8 with `box_taps` (horizontal pass first), for tests
    and for frames that do not come from Pillow."""
    out = gray.astype(np.int64)
    for axis in (1, 0):
        first, count, weight = box_taps(out.shape[axis], size)
        moved = np.moveaxis(out, axis, 0)
        acc = np.full((size,) + moved.shape[1:], 1 << (PRECISION_BITS - 1), np.int64)
        for t in range(weight.shape[1]):
            rows = np.minimum(first + t, moved.shape[0] - 1)
            acc += weight[:, t].reshape((-1,) + (1,) * (moved.ndim - 1)) * moved[rows]
        out = np.moveaxis(np.clip(acc >> PRECISION_BITS, 0, 255), 0, axis)
    return out.astype(np.uint8)


class FrameStack:
    """The last k frames of each of N environments, newest last: an (N, k, size, size) array.

    `push(frames, new_episode)` shifts every stack by one frame; for the environments in
    `new_episode` (their episode starts with this frame) the whole stack becomes that frame,
    so no observation ever mixes frames of two episodes.
    """

    def __init__(self, *, num_envs: int, k: int, size: int):
        self.frames = np.zeros((num_envs, k, size, size), np.uint8)

    def reset(self, frames: np.ndarray) -> np.ndarray:
        self.frames[:] = frames[:, None]
        return self.frames.copy()

    def push(self, frames: np.ndarray, new_episode: np.ndarray) -> np.ndarray:
        self.frames[:, :-1] = self.frames[:, 1:]
        self.frames[:, -1] = frames
        if new_episode.any():
            self.frames[new_episode] = frames[new_episode][:, None]
        return self.frames.copy()
