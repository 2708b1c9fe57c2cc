"""Atomic snapshots of a replay table (`common.files.write_npz_atomic`).

A reader therefore sees either the previous complete snapshot or the new complete one,
never half a file. The newest `keep` snapshots are kept; loading falls back to the
previous one when the newest is corrupt (a crash during a copy, a truncated disk).
"""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from qfleet.common.errors import CheckpointError
from qfleet.common.files import HEADER_KEY, write_npz_atomic
from qfleet.replay_server.frame_files import FrameFiles
from qfleet.replay_server.frames import FrameStore
from qfleet.replay_server.table import Table

log = logging.getLogger("qfleet.replay")
PATTERN = "replay-*.npz"


def shard_dirs(replay: Path, shards: int) -> list[Path]:
    """Each shard's snapshot folder under a run's replay folder: replay/ itself for one
    shard, replay/shard-<i>/ for several."""
    return [replay] if shards == 1 else [replay / f"shard-{i}" for i in range(shards)]


class SnapshotStore:
    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.frame_files = FrameFiles(self.directory)  # a frame table's frames, in chunks

    def paths(self) -> list[Path]:
        """Existing snapshots, newest first."""
        return sorted(self.directory.glob(PATTERN), reverse=True)

    def save(self, table: Table, meta: Optional[dict] = None) -> Path:
        """Write the table (and JSON `meta`, e.g. the server's counters) atomically."""
        state = table.state()
        if isinstance(table.storage, FrameStore):
            state.update(self.frame_files.save(table.storage))
        final = write_npz_atomic(self.directory / f"replay-{table.storage.inserted:015d}.npz", meta or {}, state)
        for old in self.paths()[self.keep:]:
            old.unlink(missing_ok=True)
        return final

    def keep_up(self, table: Table) -> None:
        """Between snapshots: a frame table's filled chunks of frames go to disk as they fill,
        so a snapshot (at a stop, too) writes only the newest chunk's frames."""
        if isinstance(table.storage, FrameStore):
            self.frame_files.keep_up(table.storage)

    def load_latest(self, table: Table) -> tuple[Optional[Path], dict]:
        """Restore the newest readable snapshot into `table`: (its path, its meta), or
        (None, {}) if there is none.

        Incompatible snapshots (other observation shape or capacity) raise CheckpointError:
        falling back would silently drop data the user asked to resume from.
        """
        for path in self.paths():
            try:
                with np.load(path, allow_pickle=False) as data:
                    state = {k: data[k] for k in data.files}
                meta = json.loads(state.pop(HEADER_KEY).tobytes().decode()) if HEADER_KEY in state else {}
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
                log.warning("replay snapshot %s is unreadable (%s); trying the previous one", path, exc)
                continue
            _check_compatible(path, state, table)
            table.load(state)
            if isinstance(table.storage, FrameStore):
                table.forget_frames_below(self.frame_files.load(table.storage))
            return path, meta
        return None, {}


def check_newest(directory: str | Path, obs_shape: tuple, obs_dtype, capacity: int,
                 frames: bool = False) -> Optional[Path]:
    """Before anything starts: the newest readable snapshot in `directory`, after checking it
    fits (reads only array headers). CheckpointError naming what differs."""
    for path in SnapshotStore(directory).paths():
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                saved_frames = "frame_shape.npy" in names
                if saved_frames:
                    slots, _ = _array_header(z, "data.obs_slots.npy")
                    with z.open("frame_shape.npy") as f:
                        shape, dtype = (slots[0], slots[1], *np.lib.format.read_array(f).tolist()), np.uint8
                else:
                    shape, dtype = _array_header(z, "data.obs.npy")
                with z.open("capacity.npy") as f:
                    saved_capacity = int(np.lib.format.read_array(f))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError, IndexError) as exc:
            log.warning("replay snapshot %s is unreadable (%s); trying the previous one", path, exc)
            continue
        if tuple(shape[1:]) != tuple(obs_shape) or np.dtype(dtype) != np.dtype(obs_dtype):
            raise CheckpointError(f"replay snapshot {path} holds observations of shape {tuple(shape[1:])} {dtype}, "
                                  f"but this run's environment gives {tuple(obs_shape)} {np.dtype(obs_dtype)}")
        if saved_frames != frames:
            raise CheckpointError(_frames_mismatch(path, saved_frames))
        if saved_capacity != capacity:
            raise CheckpointError(f"replay snapshot {path} was taken with replay.capacity = {saved_capacity}, "
                                  f"this run has {capacity}; resume with the same capacity")
        return path
    return None


def _array_header(z: zipfile.ZipFile, name: str) -> tuple[tuple, np.dtype]:
    with z.open(name) as f:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read_header(f)
    return tuple(shape), dtype


def _frames_mismatch(path: Path, saved_frames: bool) -> str:
    saved, now = ("a frame at a time", "whole observations") if saved_frames else ("whole observations",
                                                                                  "a frame at a time")
    return (f"replay snapshot {path} stores {saved} and this run stores {now}: resume with the replay.frames "
            f"setting it was written with (replay.frames={'true' if saved_frames else 'false'})")


def _check_compatible(path: Path, state: dict, table: Table) -> None:
    storage = table.storage
    if ("frame_shape" in state) != isinstance(storage, FrameStore):
        raise CheckpointError(_frames_mismatch(path, "frame_shape" in state))
    if "frame_shape" in state:
        shape, dtype = (state["data.obs_slots"].shape[1], *state["frame_shape"].tolist()), np.dtype(np.uint8)
    elif "data.obs" in state:
        shape, dtype = state["data.obs"].shape[1:], state["data.obs"].dtype
    else:
        raise CheckpointError(f"replay snapshot {path} has no observations; it is not a qfleet snapshot")
    if tuple(shape) != storage.obs_shape or dtype != storage.obs_dtype:
        raise CheckpointError(f"replay snapshot {path} holds observations of shape {tuple(shape)} "
                              f"{dtype}, but this run's environment gives {storage.obs_shape} {storage.obs_dtype}")
    if int(state["capacity"]) != storage.capacity:
        raise CheckpointError(f"replay snapshot {path} was taken with replay.capacity = {int(state['capacity'])}, "
                              f"this run has {storage.capacity}; resume with the same capacity")
