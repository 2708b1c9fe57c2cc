"""Snapshots of a frame table (replay_server/frames.py), written incrementally.

A million Atari transitions hold ~7 GB of frames, more than a stop can write inside its
grace period. Frames never change once written, so they go to disk in chunks of
CHUNK_FRAMES frame ids as each chunk fills (`keep_up`, called from the server loop), one
file per chunk under `frames/`; a snapshot then writes only the frames of the chunk being
filled (a `partial-` file) and the table's small arrays (the usual atomic npz, without
frames). Loading reads the chunks that cover the frame ring back into place; frames whose
file is gone (pruned, or lost) are treated as overwritten, so their transitions are
evicted, never served with wrong pixels.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from qfleet.replay_server.frames import FrameStore

log = logging.getLogger("qfleet.replay")
CHUNK_FRAMES = 8192   # 58 MB of 84x84 frames per file
KEEP_PARTIALS = 2     # as many as snapshots kept: each snapshot names its own partial file


class FrameFiles:
    def __init__(self, directory: Path):
        self.directory = Path(directory) / "frames"
        self._written_to = None  # chunks below this are on disk (None: nothing written or loaded yet)

    def _chunk(self, chunk: int) -> Path:
        return self.directory / f"chunk-{chunk:010d}.npy"

    def _partial(self, chunk: int, count: int) -> Path:
        return self.directory / f"partial-{chunk:010d}-{count:05d}.npy"

    def keep_up(self, store: FrameStore) -> int:
        """Write every chunk that filled since the last call; returns how many were written."""
        full = store.frames_written // CHUNK_FRAMES
        if self._written_to is None:
            # A table that was not restored from here: files already here hold another
            # table's frames under the same ids, and must never be read as this one's.
            for path in [*self.directory.glob("chunk-*.npy"), *self.directory.glob("partial-*.npy")]:
                path.unlink(missing_ok=True)
            self._written_to = 0
        horizon = max(0, store.frames_written - store.num_frames)   # older ids are overwritten
        written = 0
        for chunk in range(max(self._written_to, -(-horizon // CHUNK_FRAMES)), full):
            _save(self._chunk(chunk), _frames(store, chunk * CHUNK_FRAMES, CHUNK_FRAMES))
            written += 1
        self._written_to = max(self._written_to, full)
        if written:
            self._prune(horizon)
        return written

    def save(self, store: FrameStore) -> dict[str, np.ndarray]:
        """Everything on disk up to now; returns what the snapshot npz records of it."""
        self.keep_up(store)
        chunk, count = divmod(store.frames_written, CHUNK_FRAMES)
        if count:
            _save(self._partial(chunk, count), _frames(store, chunk * CHUNK_FRAMES, count))
        partials = sorted(self.directory.glob("partial-*.npy"))
        for old in partials[:-KEEP_PARTIALS]:
            old.unlink(missing_ok=True)
        return {"frame_files": np.array([chunk, count], np.int64)}

    def load(self, store: FrameStore) -> int:
        """Read the frames of a just-restored `store` back (newest first, as far back as the
        files go without a gap); returns the lowest frame id restored."""
        written = store.frames_written
        lowest = written
        chunk, count = divmod(written, CHUNK_FRAMES)
        pieces = [(chunk, self._partial(chunk, count), count)] if count else []
        first_needed = max(0, written - store.num_frames) // CHUNK_FRAMES
        pieces += [(c, self._chunk(c), CHUNK_FRAMES) for c in range(chunk - 1, first_needed - 1, -1)]
        for c, path, n in pieces:
            try:
                frames = np.load(path, mmap_mode="r", allow_pickle=False)
                if frames.shape != (n, *store.frame_shape):
                    raise ValueError(f"shape {frames.shape}")
            except (OSError, ValueError) as exc:
                log.warning("replay frames %s are missing or unreadable (%s); older transitions are dropped",
                            path, exc)
                break
            ids = np.arange(c * CHUNK_FRAMES, c * CHUNK_FRAMES + n)
            keep = ids >= written - store.num_frames
            store.put_frames(ids[keep], np.asarray(frames[keep]))
            lowest = int(ids[keep][0])
        self._written_to = chunk
        return lowest

    def _prune(self, horizon: int) -> None:
        """Chunks wholly below the frame horizon hold only overwritten frames."""
        for path in self.directory.glob("chunk-*.npy"):
            if (int(path.stem.split("-")[1]) + 1) * CHUNK_FRAMES <= horizon:
                path.unlink(missing_ok=True)


def _frames(store: FrameStore, first_id: int, count: int) -> np.ndarray:
    return store.read_frames(np.arange(first_id, first_id + count))


def _save(path: Path, frames: np.ndarray) -> None:
    """Atomically: a reader sees the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, frames)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
