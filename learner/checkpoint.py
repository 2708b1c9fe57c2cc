"""Checkpoints: one .npz of backend-neutral arrays plus JSON metadata, written atomically.

Nothing here unpickles: arrays are loaded with allow_pickle=False, the metadata is JSON.
The same file resumes training (online, target, Adam state, counters) and plays greedily
(`policy/...`: the weights that scored best in greedy evaluation).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np

from qfleet.common.config import PixelConfig
from qfleet.common.errors import CheckpointError
from qfleet.common.files import HEADER_KEY, write_npz_atomic
from qfleet.common.netspec import NetSpec, param_shapes

FORMAT = "qfleet-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write arrays + metadata to `path` atomically."""
    return write_npz_atomic(path, {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}, arrays)


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, metadata); CheckpointError naming the file if missing, corrupt or foreign."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.npz"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (pass a run directory or its checkpoint.npz)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from None
    raw = arrays.pop(HEADER_KEY, None)
    try:
        meta = json.loads(raw.tobytes().decode()) if raw is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a qfleet checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('format_version')}, "
                              f"this qfleet reads version {FORMAT_VERSION}")
    return arrays, meta


def spec_from_meta(raw: Any, path: str | Path = "the checkpoint") -> NetSpec:
    """The NetSpec a checkpoint's metadata records (`net_spec`). Fields added to NetSpec
    since a checkpoint was written take their defaults, which are what those checkpoints
    were (a CNN was the Nature torso on CHW uint8 frames), so older checkpoints still load;
    a field this qfleet does not know is a CheckpointError."""
    try:
        unknown = set(raw) - set(NetSpec._fields)
        if unknown:
            raise CheckpointError(f"{path} describes its network with fields this qfleet does not know: "
                                  f"{', '.join(sorted(unknown))}")
        return NetSpec(**{**raw, "obs_shape": tuple(raw["obs_shape"]), "hidden": tuple(raw["hidden"])})
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} has no usable network description ({exc!r} missing or malformed)") from None


def spec_differences(saved: NetSpec, current: NetSpec) -> list[str]:
    """'field: checkpoint X, this run Y' for every NetSpec field that differs."""
    def plain(value):
        return list(value) if isinstance(value, (tuple, list)) else value
    return [f"{k}: checkpoint {plain(a)!r}, this run {plain(b)!r}"
            for k, a, b in zip(NetSpec._fields, saved, current) if plain(a) != plain(b)]


class Policy(NamedTuple):
    """The playable part of a checkpoint: the best-evaluated weights and what they play."""

    params: dict[str, np.ndarray]
    spec: NetSpec
    env: str          # the --env of the run (gymnasium id or module:Class)
    meta: dict[str, Any]
    pixels: Optional[PixelConfig] = None  # set when the policy plays on stacked frames
    env_kwargs: Optional[dict] = None     # gym.make's keyword arguments in training (run.env_kwargs)
    env_preset: Optional[str] = None      # "atari" when it played through the Atari preset


WEIGHTS = {"best": "policy/", "last": "online/"}  # what `qfleet eval --weights` chooses from


def load_policy(path: str | Path, weights: str = "best") -> Policy:
    """The weights of a checkpoint (or run directory) that play, checked against its net
    spec: "best", those that scored best in greedy evaluation (`policy/...`), or "last",
    the online network as training left it (`online/...`)."""
    if weights not in WEIGHTS:
        raise CheckpointError(f"weights {weights!r}: choose one of {', '.join(WEIGHTS)}")
    prefix = WEIGHTS[weights]
    arrays, meta = load_checkpoint(path)
    spec = spec_from_meta(meta.get("net_spec"), path)
    env = meta.get("env_id")
    if not isinstance(env, str):
        raise CheckpointError(f"checkpoint {path} does not say which environment it plays (env_id)")
    params = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    try:
        expected = param_shapes(spec)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    got = {k: tuple(v.shape) for k, v in params.items()}
    if got != expected:
        raise CheckpointError(f"checkpoint {path}: {weights} weights ({prefix}...) {got or 'missing'} do not match "
                              f"its network, "
                              f"{spec.describe()}")
    pixels = meta.get("pixels")
    if pixels:
        pixels = PixelConfig(**{**pixels, "crop": tuple(pixels.get("crop") or ())})
    return Policy(params, spec, env, meta, pixels or None, dict(meta.get("env_kwargs") or {}),
                  meta.get("env_preset") or "none")


def check_env_fits(spec: NetSpec, obs_shape: tuple, path: str | Path = "the checkpoint") -> None:
    """CheckpointError unless the environment's observations are what the network takes
    (the same environment with other settings, e.g. another frame size or stack, is not)."""
    if tuple(obs_shape) != tuple(spec.obs_shape):
        raise CheckpointError(f"checkpoint {path}: its network ({spec.describe()}) takes observations of shape "
                              f"{tuple(spec.obs_shape)}, but the environment gives {tuple(obs_shape)}")
