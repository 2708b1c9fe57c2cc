"""Build a ReplayServer from its config section and the environment's observation spec."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from qfleet.common.config import ReplayConfig
from qfleet.common.envs import EnvSpec
from qfleet.common.sockets import CurveKeys
from qfleet.replay_server.frames import uses_frames
from qfleet.replay_server.rate_limiter import RateLimiter
from qfleet.replay_server.server import ReplayServer
from qfleet.replay_server.snapshot import SnapshotStore
from qfleet.replay_server.table import Table


def build_replay_server(cfg: ReplayConfig, spec: EnvSpec, *, max_sample_batch: int, host: str = "127.0.0.1",
                        insert_port: int = 0, request_port: int = 0, keys: Optional[CurveKeys] = None,
                        snapshot_dir: Optional[str | Path] = None, seed: int = 0) -> ReplayServer:
    limiter = RateLimiter(min_size_to_sample=cfg.min_size_to_sample, samples_per_insert=cfg.samples_per_insert,
                          error_buffer=effective_error_buffer(cfg, max_sample_batch),
                          max_insert_batch=cfg.max_insert_batch, max_sample_batch=max_sample_batch)
    table = Table(capacity=cfg.capacity, obs_shape=spec.obs_shape, obs_dtype=spec.obs_dtype,
                  num_actions=spec.num_actions, prioritized=cfg.prioritized, alpha=cfg.alpha,
                  limiter=limiter, seed=seed, frames=uses_frames(cfg.frames, spec.obs_shape, spec.obs_dtype),
                  frame_codec=cfg.frame_codec)
    snapshots = SnapshotStore(snapshot_dir) if snapshot_dir is not None else None
    return ReplayServer(table=table, host=host, insert_port=insert_port, request_port=request_port,
                        max_message_bytes=cfg.max_message_bytes, max_sample_batch=max_sample_batch,
                        max_insert_batch=cfg.max_insert_batch,
                        insert_hwm=cfg.insert_hwm, sample_wait_s=cfg.sample_wait_s, keys=keys,
                        snapshots=snapshots, snapshot_every_s=cfg.snapshot_every_s)


def effective_error_buffer(cfg: ReplayConfig, max_sample_batch: int) -> float:
    """The configured error buffer, or (when 0) the smallest one that cannot deadlock."""
    if cfg.error_buffer > 0:
        return cfg.error_buffer
    return RateLimiter.min_error_buffer(cfg.samples_per_insert, cfg.max_insert_batch, max_sample_batch)
