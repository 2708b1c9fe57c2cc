"""The replay table: ring-buffer storage, a sampler (prioritized or uniform), a rate limiter.

This is the whole replay data structure in one process, with no sockets; `ReplayServer`
serves it over ZeroMQ. Content checks that the codec cannot do (action range, discount
range, priority sign, key range) live here and raise `RequestError` with a reason tag, so
the server counts them with every other rejected message.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import numpy as np

from qfleet.common.errors import ConfigError, RequestError
from qfleet.common.importance import importance_weights
from qfleet.replay_server.rate_limiter import RateLimiter
from qfleet.replay_server.storage import RingBuffer
from qfleet.replay_server.sum_tree import SumTree


COUNTS = ("stored", "sampled", "priorities_applied", "priorities_stale")


class Table:
    def __init__(self, *, capacity: int, obs_shape: Sequence[int], obs_dtype: np.dtype, num_actions: int,
                 prioritized: bool, alpha: float, limiter: RateLimiter, seed: int = 0):
        if limiter.min_size_to_sample > capacity:
            raise ConfigError(f"min_size_to_sample = {limiter.min_size_to_sample} exceeds capacity = {capacity}: "
                             f"the learner would wait forever for data that cannot fit")
        self.storage = RingBuffer(capacity, obs_shape, obs_dtype)
        self.tree = SumTree(capacity) if prioritized else None
        self.num_actions = num_actions
        self.alpha = alpha
        self.limiter = limiter
        self.rng = np.random.default_rng(seed)
        self.max_priority = 1.0
        self.counts: Counter = Counter()  # see COUNTS

    @property
    def size(self) -> int:
        return self.storage.size

    @property
    def total_priority(self) -> float:
        """The mass sampling is proportional to: the sum-tree total (sum of p_i**alpha), or
        the size for uniform replay. A sharded learner draws shards in proportion to it."""
        return self.tree.total if self.tree is not None else float(self.size)

    @property
    def nbytes(self) -> int:
        return self.storage.nbytes + (self.tree.nbytes if self.tree is not None else 0)

    def can_insert(self, n: int) -> bool:
        return self.limiter.can_insert(n, self.size)

    def can_sample(self, n: int) -> bool:
        return self.limiter.can_sample(n, self.size)

    def insert(self, batch: dict[str, np.ndarray], priority: Optional[np.ndarray] = None) -> tuple[int, int]:
        """Store a batch of transitions; returns (first_key, stored). Checks content first,
        so a rejected batch leaves the table untouched."""
        action, discount = batch["action"], batch["discount"]
        if len(action) and (action.min() < 0 or action.max() >= self.num_actions):
            raise RequestError("bad_action", f"actions must be in [0, {self.num_actions})")
        if len(discount) and (discount.min() < 0 or discount.max() > 1):
            raise RequestError("bad_discount", "discounts must be in [0, 1]")
        if priority is not None and len(priority) and not priority.min() > 0:
            raise RequestError("bad_priority", "priorities must be > 0")
        first_key, stored = self.storage.add(batch)
        if self.tree is not None and stored:
            if priority is None:
                leaf = np.full(stored, self.max_priority ** self.alpha, np.float32)
            else:
                kept = priority[len(priority) - stored:]
                self.max_priority = max(self.max_priority, float(kept.max()))
                leaf = np.power(kept, self.alpha, dtype=np.float32)
            start, done = first_key % self.storage.capacity, 0
            for lo, hi in self.storage.spans(start, stored):
                self.tree.set_range(lo, leaf[done:done + hi - lo])
                done += hi - lo
        self.limiter.record_insert(len(action))
        self.counts["stored"] += len(action)
        return first_key, stored

    def sample(self, batch_size: int, beta: float, num_batches: int = 1) -> dict[str, np.ndarray]:
        """`num_batches` batches of transitions, concatenated, with their keys, each row's
        probability within this table, and importance weights (normalised by the max within
        each batch, see `common.importance`)."""
        size, capacity = self.size, self.storage.capacity
        n = batch_size * num_batches
        if size == 0:
            raise ValueError("cannot sample from an empty table")
        if self.tree is not None:
            slots, value = self.tree.sample(n, self.rng)
            probability = value / self.tree.total
            weight = importance_weights(probability, size, beta, batch_size)
        else:
            slots = self.rng.integers(0, size, n)
            probability = np.full(n, 1.0 / size)
            weight = np.ones(n, np.float32)
        inserted = self.storage.inserted
        keys = inserted - 1 - (inserted - 1 - slots) % capacity
        out = self.storage.gather(slots)
        out["keys"] = keys
        out["weight"] = weight
        out["probability"] = probability
        self.limiter.record_sample(n)
        self.counts["sampled"] += n
        return out

    def update_priorities(self, keys: np.ndarray, priority: np.ndarray) -> int:
        """Apply priorities to keys still live; returns how many were stale: overwritten
        since they were sampled, or newer than the table (after a restart from a snapshot,
        the learner may still update keys that the restored table never saw)."""
        if len(keys) == 0:
            return 0
        if keys.min() < 0:
            raise RequestError("bad_key", "keys must be >= 0")
        if not priority.min() > 0:
            raise RequestError("bad_priority", "priorities must be > 0")
        if self.tree is not None:
            stale, top = self.tree.set_live(keys, priority, self.alpha, self.storage.inserted)
            self.max_priority = max(self.max_priority, top)
        else:
            stale = int(len(keys) - self.storage.live(keys).sum())
        self.counts["priorities_applied"] += len(keys) - stale
        self.counts["priorities_stale"] += stale
        return stale

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to restore the table (for snapshots)."""
        size = self.size
        state = {f"data.{k}": v[:size] for k, v in self.storage.arrays.items()}
        state["inserted"] = np.int64(self.storage.inserted)
        state["capacity"] = np.int64(self.storage.capacity)
        state["max_priority"] = np.float64(self.max_priority)
        state["limiter"] = np.array([self.limiter.inserts, self.limiter.samples], np.int64)
        state["counts"] = np.array([self.counts[k] for k in COUNTS], np.int64)
        if self.tree is not None:
            state["priorities"] = self.tree.state()[:size]
        return state

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Restore from `state()`; the caller has checked shapes and dtypes match this table."""
        # Slots are key % capacity, so contents only keep their keys under the same capacity.
        if int(state["capacity"]) != self.storage.capacity:
            raise ValueError(f"snapshot was taken with capacity {int(state['capacity'])}, "
                             f"this table has {self.storage.capacity}")
        size = len(state["data.action"])
        for k, store in self.storage.arrays.items():
            store[:size] = state[f"data.{k}"]
        self.storage.inserted = int(state["inserted"])
        self.max_priority = float(state["max_priority"])
        self.limiter.load({"inserts": int(state["limiter"][0]), "samples": int(state["limiter"][1])})
        if "counts" in state:
            self.counts.update(dict(zip(COUNTS, (int(x) for x in state["counts"]))))
        if self.tree is not None:
            leaves = np.zeros(self.storage.capacity, np.float32)
            if "priorities" in state:
                leaves[:size] = state["priorities"]
            else:
                leaves[:size] = self.max_priority ** self.alpha
            self.tree.load(leaves)
