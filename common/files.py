"""Files written so that a crash never leaves half of one: checkpoints and replay snapshots.

`write_npz_atomic` writes to a temporary file next to the target, fsyncs it, renames it
over the target and fsyncs the directory, so a reader sees the previous complete file or
the new complete one, and the rename survives a power loss.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

HEADER_KEY = "__meta__"  # the JSON header, stored as a uint8 array (nothing is pickled)


def write_npz_atomic(path: str | Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write `arrays` and the JSON-serialisable `header` (under HEADER_KEY) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **{HEADER_KEY: np.frombuffer(json.dumps(header).encode(), np.uint8)}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a stray temporary behind
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable; skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
