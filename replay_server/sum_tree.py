"""A B-ary sum-tree over float32 leaves, with numba kernels for the per-item loops.

Memory: a binary float64 sum-tree costs 16 bytes per slot; this one keeps the leaves in
float32 (4 bytes) and the internal levels in float64, B times smaller each, so the whole
tree costs about 4.6 bytes per slot at B = 16 (one 64-byte cache line of leaves per
parent). Parents are always recomputed from their children, never updated by deltas, so
rounding errors cannot accumulate however long the run.

Why numba: a batch of 256 descents is ~6 levels x 16 children of scalar work. In numpy
each level costs ~10 array calls of ~5 us overhead each (~130 us a batch on the 2-core
machine); the compiled loop does the whole batch in ~20 us.
"""
from __future__ import annotations

import numba
import numpy as np


class SumTree:
    """Priorities (already raised to alpha) of `capacity` slots; sampling proportional to them."""

    def __init__(self, capacity: int, branching: int = 16):
        if capacity < 1 or branching < 2:
            raise ValueError(f"SumTree needs capacity >= 1 and branching >= 2, got {capacity}, {branching}")
        self.capacity = capacity
        self.branching = b = branching
        self.leaves = np.zeros(-(-capacity // b) * b, np.float32)
        sizes, n = [], len(self.leaves)
        while n > 1:  # internal levels, bottom (parents of leaves) to top (root)
            n = -(-n // b)
            if n > 1:
                n = -(-n // b) * b  # padded, so every node has exactly b children
            sizes.append(n)
        sizes = sizes or [1]
        self._offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self._internal = np.zeros(int(self._offsets[-1]), np.float64)

    @property
    def total(self) -> float:
        return float(self._internal[-1])

    @property
    def nbytes(self) -> int:
        return self.leaves.nbytes + self._internal.nbytes

    def get(self, slots: np.ndarray) -> np.ndarray:
        return self.leaves[slots]

    def set(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Set leaves (duplicates: the last value wins). Values must be finite and >= 0."""
        slots = np.asarray(slots, np.int64)
        self.leaves[slots] = values
        # Sorted parents let the kernel recompute each touched parent once per level.
        _refresh(self.leaves, self._internal, self._offsets, self.branching, np.sort(slots // self.branching))

    def set_live(self, keys: np.ndarray, raw: np.ndarray, alpha: float, inserted: int) -> tuple[int, float]:
        """Set raw**alpha at slot key % capacity for each key still live in a ring buffer
        that has seen `inserted` items; returns (stale count, max raw value applied)."""
        stale, top = _set_live(self.leaves, self._internal, self._offsets, self.branching,
                               np.ascontiguousarray(keys, np.int64), np.ascontiguousarray(raw, np.float32),
                               alpha, inserted, self.capacity)
        return int(stale), float(top)

    def set_range(self, start: int, values: np.ndarray) -> None:
        """Set the contiguous leaves [start, start + len(values)) (no wrap-around)."""
        stop = start + len(values)
        self.leaves[start:stop] = values
        _refresh_range(self.leaves, self._internal, self._offsets, self.branching, start, stop)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`n` slots drawn proportionally to their values, stratified over n equal segments,
        and the value of each drawn slot."""
        total = self.total
        if not total > 0:
            raise ValueError("cannot sample from a sum-tree whose total priority is 0")
        slots = np.empty(n, np.int64)
        values = np.empty(n, np.float64)
        _descend(self.leaves, self._internal, self._offsets, self.branching, rng.random(n), total / n, slots, values)
        return slots, values

    def state(self) -> np.ndarray:
        """The leaves (enough to rebuild the tree)."""
        return self.leaves[: self.capacity].copy()

    def load(self, leaves: np.ndarray) -> None:
        self.leaves[:] = 0
        self.set_range(0, np.asarray(leaves, np.float32)[: self.capacity])


@numba.njit(cache=True, nogil=True, inline="always")  # a real call here costs 4x the sum itself
def _child_sum(leaves, internal, offsets, b, level, node):
    """Sum of the b children of `node` at internal `level` (0 = parents of leaves)."""
    s = 0.0
    if level == 0:
        first = node * b
        for j in range(b):
            s += leaves[first + j]
    else:
        first = offsets[level - 1] + node * b
        for j in range(b):
            s += internal[first + j]
    return s


@numba.njit(cache=True, nogil=True)
def _refresh(leaves, internal, offsets, b, parents):
    """Recompute the given sorted parents of leaves, then their ancestors, level by level."""
    nodes = parents.copy()
    count = nodes.shape[0]
    for level in range(offsets.shape[0] - 1):
        kept, previous = 0, -1
        for i in range(count):
            node = nodes[i]
            if node != previous:
                internal[offsets[level] + node] = _child_sum(leaves, internal, offsets, b, level, node)
                nodes[kept] = node // b
                kept += 1
                previous = node
        count = kept


@numba.njit(cache=True, nogil=True)
def _set_live(leaves, internal, offsets, b, keys, raw, alpha, inserted, capacity):
    parents = np.empty(keys.shape[0], np.int64)
    kept, top = 0, 0.0
    for i in range(keys.shape[0]):
        key = keys[i]
        if key >= inserted - capacity and key < inserted:
            slot = key % capacity
            leaves[slot] = raw[i] ** alpha
            parents[kept] = slot // b
            kept += 1
            top = max(top, raw[i])
    _refresh(leaves, internal, offsets, b, np.sort(parents[:kept]))
    return keys.shape[0] - kept, top


@numba.njit(cache=True, nogil=True)
def _refresh_range(leaves, internal, offsets, b, start, stop):
    lo, hi = start, stop - 1
    for level in range(offsets.shape[0] - 1):
        lo //= b
        hi //= b
        for node in range(lo, hi + 1):
            internal[offsets[level] + node] = _child_sum(leaves, internal, offsets, b, level, node)


@numba.njit(cache=True, nogil=True)
def _descend(leaves, internal, offsets, b, uniform, segment, out, values):
    """Walk all queries down one level at a time: the queries are independent, so the CPU
    overlaps their cache misses (a query-at-a-time walk waits for each miss in turn)."""
    n = uniform.shape[0]
    mass = np.empty(n, np.float64)
    for q in range(n):
        mass[q] = (q + uniform[q]) * segment  # stratified: one draw in each of the n segments
        out[q] = 0
    for level in range(offsets.shape[0] - 2, -1, -1):
        for q in range(n):
            m = mass[q]
            first = out[q] * b
            chosen, last_nonzero = -1, -1
            for j in range(b):
                if level == 0:
                    v = np.float64(leaves[first + j])
                else:
                    v = internal[offsets[level - 1] + first + j]
                if v > 0.0:
                    last_nonzero = j
                    if m < v:
                        chosen = j
                        break
                    m -= v
            if chosen < 0:  # rounding pushed the mass past this node's total
                chosen = last_nonzero
                m = 0.0
            mass[q] = m
            out[q] = first + chosen
    for q in range(n):
        values[q] = leaves[out[q]]
