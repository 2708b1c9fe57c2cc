"""Actor side of frame-at-a-time replay (replay_server/frames.py): each environment's
stacked observation (k, H, W) becomes the number of its newest frame, and only frames the
replay server has not been sent are queued.

A stack continues the previous one of its environment when its first k - 1 frames are that
one's last k - 1 (compared byte for byte, so the rebuilt stack is exactly the observed one,
whatever the environment does at resets); then only its newest frame is new, linked to the
one before. Otherwise (an episode start, the first step) all k frames are sent as a new
chain. Every KEYFRAME_EVERY steps of an environment its whole stack is sent again, so a
replay server that restarted from a snapshot (and lost the frames sent since) can rebuild
that environment's stacks again soon.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from qfleet.common import messages as m

KEYFRAME_EVERY = 256  # steps per environment between whole stacks: 3 / 256 = 1.2% more frames


class FrameEncoder:
    def __init__(self, num_envs: int, obs_shape: Sequence[int], keyframe_every: int = KEYFRAME_EVERY):
        self.stack = obs_shape[0]
        self.keyframe_every = keyframe_every
        self._tail = np.zeros((num_envs, self.stack - 1, *obs_shape[1:]), np.uint8)  # the last k - 1 frames seen
        self._ids = np.full((num_envs, self.stack), -1, np.int64)  # numbers of the last stack's frames
        self._age = np.full(num_envs, keyframe_every, np.int64)   # steps since a whole stack was sent
        self.next_number = 0    # frames numbered so far
        self._queued: list[tuple[np.ndarray, np.ndarray]] = []   # (frames, links) not taken yet
        self._first_queued = 0

    def encode(self, obs: np.ndarray) -> np.ndarray:
        """Numbers of each environment's newest frame for this step's observations."""
        k = self.stack
        continues = (self._age < self.keyframe_every) & np.all(obs[:, :-1] == self._tail, axis=(1, 2, 3))
        cont, whole = np.flatnonzero(continues), np.flatnonzero(~continues)
        base = self.next_number
        new_cont = base + np.arange(len(cont))
        new_whole = base + len(cont) + np.arange(len(whole) * k).reshape(len(whole), k)
        links = np.concatenate([self._ids[cont, -1], np.where(np.arange(k) == 0, -1, new_whole - 1).reshape(-1)])
        frames = np.concatenate([obs[cont, -1], obs[whole].reshape(-1, *obs.shape[2:])])
        self._queued.append((frames, links))
        self.next_number = base + len(frames)
        self._ids[cont] = np.concatenate([self._ids[cont, 1:], new_cont[:, None]], axis=1)
        self._ids[whole] = new_whole
        self._age[cont] += 1
        self._age[whole] = 0
        self._tail[:] = obs[:, 1:]
        return self._ids[:, -1].copy()

    def take(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(number of the first, frames, links) queued since the last take, in number order."""
        first = self._first_queued
        if len(self._queued) == 1:  # the usual case (one encode per step): no copy
            frames, links = self._queued[0]
        elif self._queued:
            frames = np.concatenate([f for f, _ in self._queued])
            links = np.concatenate([link for _, link in self._queued])
        else:
            frames, links = np.zeros((0, *self._tail.shape[2:]), np.uint8), np.zeros(0, np.int64)
        self._queued.clear()
        self._first_queued = self.next_number
        return first, frames, links


def frame_messages(steps: list[dict], *, actor_id: int, version: int, stream: int,
                   max_transitions: int, max_frames: int) -> Iterator[m.InsertFrames]:
    """Insert messages for consecutive steps ({frame_first, frames, frame_prev} and the
    step's transitions with obs/next_obs holding frame numbers), whole steps per message so
    every frame a transition refers to is in its message or an earlier one. Their seq is 0:
    the sender numbers them as it sends."""
    group: list[dict] = []
    count = frames = 0
    for step in steps + [None]:
        n, f = (len(step["action"]), len(step["frames"])) if step is not None else (0, 0)
        if group and (step is None or count + n > max_transitions or frames + f > max_frames):
            yield _message(group, actor_id, version, stream)
            group, count, frames = [], 0, 0
        if step is not None:
            group.append(step)
            count, frames = count + n, frames + f


def _message(group: list[dict], actor_id: int, version: int, stream: int) -> m.InsertFrames:
    cat = {k: np.concatenate([g[k] for g in group]) for k in ("frames", "frame_prev", "obs", "next_obs",
                                                               "action", "reward", "discount")}
    return m.InsertFrames(actor_id, 0, version, stream, int(group[0]["frame_first"]), cat["frames"],
                          cat["frame_prev"], cat["obs"], cat["next_obs"], cat["action"], cat["reward"], cat["discount"])
