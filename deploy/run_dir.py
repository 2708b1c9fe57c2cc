"""The run directory: where a run (qfleet train or qfleet baseline) keeps its files."""
from __future__ import annotations

import json
import time
from pathlib import Path


def make_run_dir(root: str, name: str, label: str) -> Path:
    """root/name, or for an empty name a fresh root/<label>-<time>[-N]."""
    fresh = not name
    name = name or f"{label.replace('/', '_').replace(':', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(root) / name
    suffix = 1
    while run_dir.exists() and fresh:
        suffix += 1
        run_dir = Path(root) / f"{name}-{suffix}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
