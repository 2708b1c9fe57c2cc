"""Preallocated numpy ring buffer of n-step transitions.

The transitions are one structured array (obs, action, reward, next_obs, discount side by
side), so sampling a transition touches one or two cache lines instead of five; on a
1M-slot table random gathers are memory-bound and this halves their cost.

Every stored transition gets a *key*: its global insertion index (0, 1, 2, ... over the
whole run). The slot is `key % capacity`. A key is live while `inserted - capacity <= key
< inserted`, so the server can tell a stale priority update (its slot was overwritten
since the sample) from a current one without storing anything per slot.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from qfleet.common.messages import TRANSITION_FIELDS, transition_layout


def transition_dtype(obs_shape: Sequence[int], obs_dtype) -> np.dtype:
    """One stored transition; its itemsize is the storage per transition (uint8 frames: 1 byte a pixel)."""
    return np.dtype([(name, *layout) for name, layout in transition_layout(obs_shape, obs_dtype).items()])


def ring_spans(start: int, count: int, capacity: int) -> list[tuple[int, int]]:
    """The one or two contiguous slot ranges [lo, hi) that `count` slots from `start` cover."""
    end = start + count
    if end <= capacity:
        return [(start, end)]
    return [(start, capacity), (0, end - capacity)]


class RingBuffer:
    """Fixed-capacity arrays for obs, action, n-step reward, next obs and discount."""

    frames_missing = 0  # whole observations never wait on frames (see frames.FrameStore)

    def __init__(self, capacity: int, obs_shape: Sequence[int], obs_dtype: np.dtype):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.obs_shape = tuple(obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.dtype = transition_dtype(self.obs_shape, self.obs_dtype)
        self.records = np.zeros(capacity, self.dtype)
        self.arrays = {name: self.records[name] for name in TRANSITION_FIELDS}  # writable views per field
        # Fancy-indexing a structured array copies field by field; indexing rows of raw
        # bytes copies each record in one go (3x faster), then a view restores the fields.
        self._rows = self.records.view(np.uint8).reshape(capacity, self.dtype.itemsize)
        self.inserted = 0  # total transitions ever written

    @property
    def size(self) -> int:
        return min(self.inserted, self.capacity)

    @property
    def oldest(self) -> int:
        """The oldest live key."""
        return max(0, self.inserted - self.capacity)

    @property
    def nbytes(self) -> int:
        return self.records.nbytes

    @property
    def bytes_per_transition(self) -> float:
        return float(self.dtype.itemsize)

    def slots_in_use(self) -> int:
        """Slots 0 .. slots_in_use() - 1 hold transitions (all of them once it wrapped)."""
        return self.size

    def add(self, batch: dict[str, np.ndarray]) -> tuple[int, int]:
        """Append a batch (arrays with a shared leading dimension). Returns (first_key, count).

        A batch larger than the capacity keeps only its newest `capacity` items.
        """
        n = len(batch["action"])
        skip = max(0, n - self.capacity)
        first_key = self.inserted + skip
        start = first_key % self.capacity
        src = skip
        for lo, hi in self.spans(start, n - skip):
            for name, store in self.arrays.items():
                store[lo:hi] = batch[name][src:src + hi - lo]
            src += hi - lo
        self.inserted += n
        return first_key, n - skip

    def spans(self, start: int, count: int) -> list[tuple[int, int]]:
        return ring_spans(start, count, self.capacity)

    def gather(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        rows = self._rows[slots].view(self.dtype).reshape(len(slots))
        return {name: rows[name] for name in TRANSITION_FIELDS}

    def live(self, keys: np.ndarray) -> np.ndarray:
        """Mask of keys whose slot still holds the transition they were sampled as."""
        return (keys >= self.inserted - self.capacity) & (keys < self.inserted)

    def state(self) -> dict[str, np.ndarray]:
        size = self.size
        return {f"data.{k}": v[:size] for k, v in self.arrays.items()}

    def load(self, state: dict[str, np.ndarray], inserted: int) -> None:
        size = len(state["data.action"])
        for k, store in self.arrays.items():
            store[:size] = state[f"data.{k}"]
        self.inserted = inserted
