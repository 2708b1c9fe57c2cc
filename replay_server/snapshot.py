"""Atomic snapshots of a replay table: write to a temporary file, fsync, then rename.

A reader therefore sees either the previous complete snapshot or the new complete one,
never half a file. The newest `keep` snapshots are kept; loading falls back to the
previous one when the newest is corrupt (a crash during a copy, a truncated disk).
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from common.errors import CheckpointError
from replay_server.table import Table

log = logging.getLogger("qfleet.replay")
PATTERN = "replay-*.npz"


class SnapshotStore:
    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory)
        self.keep = max(1, keep)

    def paths(self) -> list[Path]:
        """Existing snapshots, newest first."""
        return sorted(self.directory.glob(PATTERN), reverse=True)

    def save(self, table: Table) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"replay-{table.storage.inserted:015d}.npz"
        tmp = final.with_suffix(".npz.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **table.state())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        for old in self.paths()[self.keep:]:
            old.unlink(missing_ok=True)
        return final

    def load_latest(self, table: Table) -> Optional[Path]:
        """Restore the newest readable snapshot into `table`; None if there is none.

        Incompatible snapshots (other observation shape or capacity) raise CheckpointError:
        falling back would silently drop data the user asked to resume from.
        """
        for path in self.paths():
            try:
                with np.load(path) as data:
                    state = {k: data[k] for k in data.files}
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                log.warning("replay snapshot %s is unreadable (%s); trying the previous one", path, exc)
                continue
            _check_compatible(path, state, table)
            table.load(state)
            return path
        return None


def _check_compatible(path: Path, state: dict, table: Table) -> None:
    storage = table.storage
    obs = state.get("data.obs")
    if obs is None:
        raise CheckpointError(f"replay snapshot {path} has no observations; it is not a qfleet snapshot")
    if tuple(obs.shape[1:]) != storage.obs_shape or obs.dtype != storage.obs_dtype:
        raise CheckpointError(f"replay snapshot {path} holds observations of shape {tuple(obs.shape[1:])} "
                              f"{obs.dtype}, but this run's environment gives {storage.obs_shape} {storage.obs_dtype}")
    if int(state["capacity"]) != storage.capacity:
        raise CheckpointError(f"replay snapshot {path} was taken with replay.capacity = {int(state['capacity'])}, "
                              f"this run has {storage.capacity}; resume with the same capacity")
