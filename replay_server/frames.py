"""Frame-ring storage for stacked pixel observations: each frame is stored once.

An observation of shape (k, H, W) is the last k frames of one environment, and consecutive
observations of that environment share k - 1 of them; storing obs and next_obs whole keeps
every frame 2k times. Here actors send each new frame once, with a link to the frame before
it in its stack (actors/frames.py), and this storage keeps:

  - frames in a ring of F slots, by *frame id* (0, 1, 2, ... in arrival order over the
    whole table; slot = id % F), each with the id of the frame before it in its stack;
  - transitions in a ring of `capacity` slots, by key as in storage.RingBuffer, each holding
    the frame slots of its observation's and next observation's k frames, resolved from the
    links when it arrives (after that, sampling is one gather, no pointer chasing);
  - per actor stream, a window mapping the actor's own frame numbers to frame ids.

Sampling gathers the frames back into stacks, byte for byte what the actor observed.

Lifetimes: frames are overwritten in arrival order, so a transition must leave before any of
its frames does. Each transition slot keeps a *floor*: the smallest frame id it or any later
transition uses (a suffix minimum, so floors never decrease in key order), and the oldest
live key is the first whose floor is still in the ring. Transitions also leave when
`capacity` newer ones arrive, as in the plain ring. F = capacity + capacity/25 + FRAME_MARGIN
frames covers the extra frames an episode start costs (k per episode) and the actors'
periodic full stacks; where they are more, fewer than `capacity` transitions fit and `size`
says so.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from qfleet.common.errors import RequestError
from qfleet.common.messages import is_frame_stack
from qfleet.replay_server.frame_codec import BYTES_OBJECT_HEADER, FrameCodec
from qfleet.replay_server.frame_streams import Stream, Streams
from qfleet.replay_server.storage import ring_spans

FRAME_SLACK = 25          # F = capacity + capacity // FRAME_SLACK + FRAME_MARGIN
FRAME_MARGIN = 4096


def frame_capacity(capacity: int) -> int:
    return capacity + capacity // FRAME_SLACK + FRAME_MARGIN


def uses_frames(frames_setting: bool, obs_shape: Sequence[int], obs_dtype) -> bool:
    """replay.frames on uint8 frame stacks: the one rule actors and servers share."""
    return bool(frames_setting) and is_frame_stack(obs_shape, obs_dtype)


def stored_bytes(capacity: int, obs_shape: Sequence[int]) -> int:
    """Bytes a frame store of `capacity` transitions allocates (frames, links, slots)."""
    k, frame = obs_shape[0], int(np.prod(obs_shape[1:]))
    per_slot = 2 * k * 4 + 8 + 3 * 4   # frame slots of both stacks, floor, action/reward/discount
    return frame_capacity(capacity) * (frame + 8) + capacity * per_slot


class FrameStore:
    """Transitions of stacked-frame observations, each frame stored once (see module doc).
    Same interface as storage.RingBuffer where the table uses it, plus `add_frames`."""

    def __init__(self, capacity: int, obs_shape: Sequence[int], obs_dtype=np.uint8, codec: str = "none"):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not is_frame_stack(obs_shape, obs_dtype):
            raise ValueError(f"a frame store holds uint8 stacks (k, H, W), not {tuple(obs_shape)} {np.dtype(obs_dtype)}")
        self.capacity = capacity
        self.obs_shape, self.obs_dtype = tuple(obs_shape), np.dtype(np.uint8)
        self.stack = self.obs_shape[0]
        self.frame_shape = self.obs_shape[1:]
        self.num_frames = frame_capacity(capacity)
        self.codec = FrameCodec(codec, self.frame_shape) if codec != "none" else None
        # Frames as they are, or (with a codec) one compressed bytes object per slot.
        self.frames = np.zeros((self.num_frames, *self.frame_shape), np.uint8) if self.codec is None else None
        self.blobs = np.full(self.num_frames, b"", object) if self.codec is not None else None
        self.blob_bytes = np.zeros(self.num_frames, np.int64) if self.codec is not None else None
        self.frame_prev = np.full(self.num_frames, -1, np.int64)  # id of the frame before, -1: none
        self.frames_written = 0
        k = self.stack
        self.obs_slots = np.zeros((capacity, k), np.int32)   # frame slots, oldest frame first
        self.next_slots = np.zeros((capacity, k), np.int32)
        self.floor = np.zeros(capacity, np.int64)
        self.arrays = {"action": np.zeros(capacity, np.int32), "reward": np.zeros(capacity, np.float32),
                       "discount": np.zeros(capacity, np.float32)}
        self.inserted = 0   # transitions ever stored (keys 0 .. inserted - 1)
        self.oldest = 0     # oldest live key
        self.frames_missing = 0  # transitions dropped: a frame of theirs was never received or is gone
        self._streams = Streams()

    # -- sizes -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.inserted - self.oldest

    @property
    def nbytes(self) -> int:
        """Bytes held: with a codec, the compressed frames as Python keeps them (payload, a
        bytes object's 33-byte header, the slot's pointer and size) and the arrays."""
        slots = self.obs_slots.nbytes + self.next_slots.nbytes + self.floor.nbytes
        if self.codec is None:
            frames = self.frames.nbytes
        else:
            held = min(self.frames_written, self.num_frames)
            frames = int(self.blob_bytes.sum()) + held * BYTES_OBJECT_HEADER + self.blobs.nbytes + self.blob_bytes.nbytes
        return frames + self.frame_prev.nbytes + slots + sum(a.nbytes for a in self.arrays.values())

    @property
    def bytes_per_transition(self) -> float:
        return self.nbytes / self.capacity

    def slots_in_use(self) -> int:
        return min(self.inserted, self.capacity)

    def spans(self, start: int, count: int) -> list[tuple[int, int]]:
        return ring_spans(start, count, self.capacity)

    def live(self, keys: np.ndarray) -> np.ndarray:
        return (keys >= self.oldest) & (keys < self.inserted)

    # -- inserting ---------------------------------------------------------------------
    def add_frames(self, actor_id: int, stream: int, first_local: int, frames: np.ndarray, prev_local: np.ndarray,
                   obs_local: np.ndarray, next_local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Store an actor's new frames; returns the frame ids of each transition's observation
        and next observation stacks ((n, k) each, oldest first) and the mask of transitions
        whose frames are all here. RequestError (nothing stored) for links that cannot be
        right: to frames not sent yet, or numbers below an earlier message's."""
        m = len(frames)
        if len(prev_local) != m:
            raise RequestError("bad_frames", f"{m} frames but {len(prev_local)} frame links")
        key = (int(actor_id), int(stream))
        if first_local < self._streams.next_local(key):
            raise RequestError("bad_frame_ref", f"frame numbers restart at {first_local} within one actor stream")
        own = np.arange(first_local, first_local + m, dtype=np.int64)
        if m and not ((prev_local >= -1) & (prev_local < own)).all():
            raise RequestError("bad_frame_ref", "a frame links to itself, a later frame or a negative number")
        for refs in (obs_local, next_local):
            if len(refs) and not ((refs >= 0) & (refs < first_local + m)).all():
                raise RequestError("bad_frame_ref", "a transition refers to a frame that was not sent")
        stream_map = self._streams.get(key) or Stream()
        self._streams.remember(key, stream_map)
        first_id = self.frames_written

        def to_ids(local: np.ndarray) -> np.ndarray:
            here = local >= first_local
            earlier = stream_map.lookup(np.where(here, first_local, local))
            return np.where(here, first_id + local - first_local, np.where(local < 0, -1, earlier))

        prev_ids, obs_ids, next_ids = to_ids(prev_local), to_ids(obs_local), to_ids(next_local)
        self._write_frames(frames, prev_ids)
        stream_map.record(first_local, first_id, m)
        obs_chain, next_chain = self._chain(obs_ids), self._chain(next_ids)
        ok = (obs_chain >= 0).all(axis=1) & (next_chain >= 0).all(axis=1)
        self.frames_missing += int((~ok).sum())
        return obs_chain, next_chain, ok

    def add_stacks(self, obs: np.ndarray, next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Whole stacks (an InsertBatch, e.g. from a tool that does not send frames): each
        stack's k frames are stored as a chain of their own, so nothing is shared."""
        n, k = len(obs), self.stack
        frames = np.concatenate([obs, next_obs]).reshape(2 * n * k, *self.frame_shape)
        first = self._streams.next_local((-1, -1))
        local = first + np.arange(2 * n * k, dtype=np.int64).reshape(2 * n, k)
        prev = np.where(np.arange(k) == 0, -1, local - 1).reshape(-1)
        return self.add_frames(-1, -1, first, frames, prev, local[:n, -1], local[n:, -1])

    def _write_frames(self, frames: np.ndarray, prev_ids: np.ndarray) -> None:
        m = len(frames)
        if m > self.num_frames:
            raise RequestError("oversized", f"{m} frames in one message; this table's frame ring holds {self.num_frames}")
        self._evict_below(self.frames_written + m - self.num_frames)  # the ids these frames overwrite
        ids = np.arange(self.frames_written, self.frames_written + m)
        self.put_frames(ids, frames)
        self.frame_prev[ids % self.num_frames] = prev_ids
        self.frames_written += m

    def put_frames(self, ids: np.ndarray, frames: np.ndarray) -> None:
        """Frames into the ring slots of `ids` (compressed with a codec)."""
        slots = ids % self.num_frames
        if self.codec is None:
            self.frames[slots] = frames
            return
        blobs = self.codec.compress(frames)
        self.blobs[slots] = blobs
        self.blob_bytes[slots] = [len(b) for b in blobs]

    def read_frames(self, ids: np.ndarray) -> np.ndarray:
        """The frames of `ids` (still in the ring), as (n, H, W) uint8."""
        return self._frames_at(ids % self.num_frames)

    def _frames_at(self, slots: np.ndarray) -> np.ndarray:
        if self.codec is None:
            return self.frames[slots]
        unique, inverse = np.unique(slots, return_inverse=True)  # stacks share frames: decompress each once
        return self.codec.decompress(self.blobs[unique])[inverse.reshape(slots.shape)]

    def _chain(self, newest: np.ndarray) -> np.ndarray:
        """(n, k) frame ids of the stacks ending at `newest`, oldest first; a row holds -1
        from where a frame is unknown or no longer in the ring."""
        k, horizon = self.stack, self.frames_written - self.num_frames
        chain = np.full((len(newest), k), -1, np.int64)
        chain[:, -1] = newest
        for j in range(k - 2, -1, -1):
            after = chain[:, j + 1]
            ok = after >= max(horizon, 0)
            chain[:, j] = np.where(ok, self.frame_prev[np.where(ok, after, 0) % self.num_frames], -1)
        chain[chain < max(horizon, 0)] = -1
        return np.where((chain >= 0).all(axis=1, keepdims=True), chain, -1)

    def add(self, batch: dict[str, np.ndarray]) -> tuple[int, int]:
        """Append transitions whose stacks `add_frames` resolved (batch["obs"] and
        batch["next_obs"] are (n, k) frame ids). Returns (first_key, count) as RingBuffer."""
        n = len(batch["action"])
        skip = max(0, n - self.capacity)
        obs, nxt = batch["obs"][skip:], batch["next_obs"][skip:]
        floors = np.minimum.accumulate(np.minimum(obs.min(axis=1, initial=np.iinfo(np.int64).max),
                                                  nxt.min(axis=1, initial=np.iinfo(np.int64).max))[::-1])[::-1]
        if len(floors):
            self._lower_floors(int(floors[0]))
        first_key = self.inserted + skip
        slots = np.arange(first_key, self.inserted + n) % self.capacity
        self.obs_slots[slots] = obs % self.num_frames
        self.next_slots[slots] = nxt % self.num_frames
        self.floor[slots] = floors
        for name, store in self.arrays.items():
            store[slots] = batch[name][skip:]
        self.inserted += n
        self.oldest = max(self.oldest, self.inserted - self.capacity)
        self._evict_below(self.frames_written - self.num_frames)
        return first_key, n - skip

    def _first_key_with_floor(self, at_least: int) -> int:
        """The first live key whose floor is >= at_least (floors never decrease with keys)."""
        lo, hi = self.oldest, self.inserted
        while lo < hi:
            mid = (lo + hi) // 2
            if self.floor[mid % self.capacity] >= at_least:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _lower_floors(self, value: int) -> None:
        """A new transition uses frame `value`: no earlier floor may be above it."""
        start = self._first_key_with_floor(value + 1)
        if start < self.inserted:
            self.floor[np.arange(start, self.inserted) % self.capacity] = value

    def _evict_below(self, horizon: int) -> None:
        """Frames with ids < horizon are (about to be) overwritten: their transitions leave."""
        if horizon > 0 and self.size:
            self.oldest = self._first_key_with_floor(horizon)

    # -- sampling ------------------------------------------------------------------------
    def gather(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        if self.codec is None:
            out = {"obs": self.frames[self.obs_slots[slots]], "next_obs": self.frames[self.next_slots[slots]]}
        else:
            both = self._frames_at(np.concatenate([self.obs_slots[slots], self.next_slots[slots]]))
            out = {"obs": both[:len(slots)], "next_obs": both[len(slots):]}
        out.update({name: store[slots] for name, store in self.arrays.items()})
        return out

    # -- snapshots -----------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """The table without its frames, which replay_server/frame_files.py writes in chunks."""
        used = self.slots_in_use()
        return {"frame_shape": np.array(self.frame_shape, np.int64), "frame_prev": self.frame_prev,
                "frames_written": np.int64(self.frames_written), "oldest": np.int64(self.oldest),
                "data.obs_slots": self.obs_slots[:used], "data.next_slots": self.next_slots[:used],
                "data.floor": self.floor[:used], "frames_missing": np.int64(self.frames_missing),
                **{f"data.{k}": v[:used] for k, v in self.arrays.items()}}

    def load(self, state: dict[str, np.ndarray], inserted: int) -> None:
        """Restore from `state()` (the caller checked shapes, and puts the frames back). Actor
        streams are not kept: a transition whose stack began before the snapshot is dropped
        until each environment's next whole stack (actors send one at every episode start
        and periodically)."""
        self.frame_prev[:] = state["frame_prev"]
        self.frames_written, self.oldest = int(state["frames_written"]), int(state["oldest"])
        self.frames_missing = int(state["frames_missing"])
        used = len(state["data.floor"])
        self.obs_slots[:used], self.next_slots[:used] = state["data.obs_slots"], state["data.next_slots"]
        self.floor[:used] = state["data.floor"]
        for k, store in self.arrays.items():
            store[:used] = state[f"data.{k}"]
        self.inserted = inserted
        self._streams.clear()

    def forget_frames_below(self, lowest: int) -> None:
        """Frames with ids below `lowest` could not be restored: their transitions leave."""
        self._evict_below(lowest)
