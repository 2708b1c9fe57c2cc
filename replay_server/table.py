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

from qfleet.common import messages as m
from qfleet.common.errors import ConfigError, RequestError
from qfleet.common.importance import importance_weights
from qfleet.replay_server.frames import FrameStore
from qfleet.replay_server.rate_limiter import RateLimiter
from qfleet.replay_server.storage import RingBuffer
from qfleet.replay_server.sum_tree import SumTree


COUNTS = ("stored", "sampled", "priorities_applied", "priorities_stale")


class Table:
    def __init__(self, *, capacity: int, obs_shape: Sequence[int], obs_dtype: np.dtype, num_actions: int,
                 prioritized: bool, alpha: float, limiter: RateLimiter, seed: int = 0, frames: bool = False,
                 frame_codec: str = "none"):
        if limiter.min_size_to_sample > capacity:
            raise ConfigError(f"min_size_to_sample = {limiter.min_size_to_sample} exceeds capacity = {capacity}: "
                             f"the learner would wait forever for data that cannot fit")
        # frames: stacked-frame observations stored a frame at a time (replay_server/frames.py)
        self.storage = (FrameStore(capacity, obs_shape, obs_dtype, frame_codec) if frames
                        else RingBuffer(capacity, obs_shape, obs_dtype))
        self.tree = SumTree(capacity) if prioritized else None
        self.num_actions = num_actions
        self.alpha = alpha
        self.limiter = limiter
        self.rng = np.random.default_rng(seed)
        self.max_priority = 1.0
        self.counts: Counter = Counter()  # see COUNTS
        self._cleared_to = 0  # frame tables: leaves of keys below this were zeroed at eviction

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
        so a rejected batch leaves the table untouched. A frame table takes whole stacks
        here too (each frame then stored as often as it is sent)."""
        self._check(batch, priority)
        if isinstance(self.storage, FrameStore):
            obs, nxt, ok = self.storage.add_stacks(batch["obs"], batch["next_obs"])
            return self._store_resolved(batch, priority, obs, nxt, ok)
        return self._store(batch, priority)

    def insert_frames(self, msg: m.InsertFrames) -> tuple[int, int]:
        """Store an actor's frames and the transitions that refer to them (frame tables);
        transitions whose frames are unknown (sent before this server started) are dropped
        and counted in `storage.frames_missing`. Returns (first_key, stored)."""
        if not isinstance(self.storage, FrameStore):
            raise RequestError("no_frame_store", "this replay table stores whole observations; send InsertBatch")
        batch = {"action": msg.action, "reward": msg.reward, "discount": msg.discount}
        self._check(batch, msg.priority)
        obs, nxt, ok = self.storage.add_frames(msg.actor_id, msg.stream, msg.frame_first, msg.frames, msg.frame_prev,
                                               msg.obs_frame, msg.next_frame)
        return self._store_resolved(batch, msg.priority, obs, nxt, ok)

    def _check(self, batch: dict[str, np.ndarray], priority: Optional[np.ndarray]) -> None:
        action, discount = batch["action"], batch["discount"]
        if len(action) and (action.min() < 0 or action.max() >= self.num_actions):
            raise RequestError("bad_action", f"actions must be in [0, {self.num_actions})")
        if len(discount) and (discount.min() < 0 or discount.max() > 1):
            raise RequestError("bad_discount", "discounts must be in [0, 1]")
        if priority is not None and len(priority) and not priority.min() > 0:
            raise RequestError("bad_priority", "priorities must be > 0")

    def _store_resolved(self, batch, priority, obs, nxt, ok) -> tuple[int, int]:
        kept = {"obs": obs[ok], "next_obs": nxt[ok], **{k: batch[k][ok] for k in ("action", "reward", "discount")}}
        return self._store(kept, None if priority is None else priority[ok])

    def _store(self, batch: dict[str, np.ndarray], priority: Optional[np.ndarray]) -> tuple[int, int]:
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
        self._clear_evicted()
        n = len(batch["action"])
        self.limiter.record_insert(n)
        self.counts["stored"] += n
        return first_key, stored

    def _clear_evicted(self) -> None:
        """A frame table evicts transitions whose frames left the ring, ahead of their slots
        being overwritten: their leaves must stop being sampled."""
        if self.tree is None or not isinstance(self.storage, FrameStore):
            return
        oldest, capacity = self.storage.oldest, self.storage.capacity
        cleared = self._cleared_to
        start = max(cleared, self.storage.inserted - capacity)  # slots older than that were overwritten
        if oldest > start:
            for lo, hi in self.storage.spans(start % capacity, oldest - start):
                self.tree.set_range(lo, np.zeros(hi - lo, np.float32))
        self._cleared_to = max(cleared, oldest)

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
            slots = (self.storage.oldest + self.rng.integers(0, size, n)) % capacity
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
            live = keys >= self.storage.oldest  # a frame table evicts some keys early
            stale, top = self.tree.set_live(keys[live], priority[live], self.alpha, self.storage.inserted)
            stale += int(len(keys) - live.sum())
            self.max_priority = max(self.max_priority, top)
        else:
            stale = int(len(keys) - self.storage.live(keys).sum())
        self.counts["priorities_applied"] += len(keys) - stale
        self.counts["priorities_stale"] += stale
        return stale

    def forget_frames_below(self, lowest: int) -> None:
        """A frame table restored without the frames below id `lowest` evicts their transitions."""
        self.storage.forget_frames_below(lowest)
        self._clear_evicted()

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to restore the table (for snapshots)."""
        state = self.storage.state()
        state["inserted"] = np.int64(self.storage.inserted)
        state["capacity"] = np.int64(self.storage.capacity)
        state["max_priority"] = np.float64(self.max_priority)
        state["limiter"] = np.array([self.limiter.inserts, self.limiter.samples], np.int64)
        state["counts"] = np.array([self.counts[k] for k in COUNTS], np.int64)
        if self.tree is not None:
            state["priorities"] = self.tree.state()[:self.storage.slots_in_use()]
        return state

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Restore from `state()`; the caller has checked shapes and dtypes match this table."""
        # Slots are key % capacity, so contents only keep their keys under the same capacity.
        if int(state["capacity"]) != self.storage.capacity:
            raise ValueError(f"snapshot was taken with capacity {int(state['capacity'])}, "
                             f"this table has {self.storage.capacity}")
        self.storage.load(state, int(state["inserted"]))
        used = self.storage.slots_in_use()
        self.max_priority = float(state["max_priority"])
        self.limiter.load({"inserts": int(state["limiter"][0]), "samples": int(state["limiter"][1])})
        if "counts" in state:
            self.counts.update(dict(zip(COUNTS, (int(x) for x in state["counts"]))))
        if self.tree is not None:
            leaves = np.zeros(self.storage.capacity, np.float32)
            if "priorities" in state:
                leaves[:used] = state["priorities"]
            else:
                leaves[:used] = self.max_priority ** self.alpha
            self.tree.load(leaves)
            self._cleared_to = self.storage.oldest
