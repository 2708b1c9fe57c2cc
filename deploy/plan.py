"""The run plan: every value derived from the config, in one place, checked before anything
starts. The config stays what the user set (config.yaml saves only that); the plan is
rebuilt from it on every start, so a resumed run derives its sizes for its own settings.

Components get their own config section plus the plan, which carries what they need from
the other sections (the seed, the number of actors, the update budget, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import psutil

from qfleet.common.config import QfleetConfig
from qfleet.common.config_loader import config_to_dict
from qfleet.common.envs import EnvSpec, describe_run_env
from qfleet.common.errors import ConfigError, MissingExtraError
from qfleet.common.extras import available
from qfleet.common.netspec import NetSpec, choose_net
from qfleet.replay_server.frames import stored_bytes, uses_frames
from qfleet.replay_server.rate_limiter import RateLimiter
from qfleet.replay_server.storage import transition_dtype

MAX_INSERT_MESSAGES_PER_PUSH = 64
MAX_MEMORY_FRACTION = 0.8  # of the memory available now, for the replay table


@dataclass(frozen=True)
class RunPlan:
    env: EnvSpec
    """The environment as the agent sees it (pixels or vectors)."""
    env_name: str
    """run.env as given (a gymnasium id or module:Class); checkpoints record it."""
    net: NetSpec
    """The Q-network: a CNN on image observations, an MLP on anything else (learner.network)."""
    sample_batch: int
    """Transitions per sample request: learner.batch_size x learner.batches_per_request."""
    error_buffer: float
    """The rate limiter's error buffer: replay.error_buffer, or the smallest that cannot deadlock."""
    solved_threshold: Optional[float]
    """Greedy mean that counts as solved: learner.solved_threshold or the env's reward threshold."""
    transition_bytes: int
    """Bytes one stored transition takes (a frame store's whole allocation / capacity)."""
    frames: bool
    """Observations go over the wire and into replay a frame at a time (replay.frames)."""
    seed: int
    actors: int
    max_updates: int
    """Learner-update budget (0: none)."""
    max_insert_batch: int
    """Largest insert message the replay server accepts; actors split bigger pushes."""
    replay_external: Optional[tuple[str, str]]
    """(insert, request) endpoints of a replay server already running (replay.external), else None."""
    shards: int
    """Replay server processes (replay.shards); actor i inserts into shard i % shards."""
    relay_fallback_s: float
    """With weights relays: seconds of relay silence before an actor also subscribes to the learner."""
    config: dict
    """The config as the user set it (kept in checkpoints)."""


def make_plan(cfg: QfleetConfig) -> RunPlan:
    """The plan of a run, or ConfigError naming a setting that cannot work (before any process starts)."""
    env = describe_run_env(cfg)
    sample_batch = cfg.learner.batch_size * cfg.learner.batches_per_request
    replay = cfg.replay
    error_buffer = replay.error_buffer or RateLimiter.min_error_buffer(
        replay.samples_per_insert, replay.max_insert_batch, sample_batch)
    if replay.min_size_to_sample > replay.capacity:
        raise ConfigError(f"replay.min_size_to_sample = {replay.min_size_to_sample} exceeds replay.capacity = "
                          f"{replay.capacity}: the learner would wait forever")
    if cfg.actor.envs_per_actor * cfg.actor.flush_every_steps > MAX_INSERT_MESSAGES_PER_PUSH * replay.max_insert_batch:
        raise ConfigError(f"actor.envs_per_actor * actor.flush_every_steps is over {MAX_INSERT_MESSAGES_PER_PUSH} "
                          "insert messages per push; raise replay.max_insert_batch or lower actor.flush_every_steps")
    wire_bytes = transition_dtype(env.obs_shape, env.obs_dtype).itemsize  # a transition with whole stacks
    frames = uses_frames(replay.frames, env.obs_shape, env.obs_dtype)
    transition_bytes = -(-stored_bytes(replay.capacity, env.obs_shape) // replay.capacity) if frames else wire_bytes
    # Inserts of frames carry about one frame per transition (a whole stack at episode starts).
    insert_bytes = int(np.prod(env.obs_shape[1:])) * 2 + 64 if frames else wire_bytes
    _check_sizes(cfg, sample_item=wire_bytes, insert_item=insert_bytes, table_item=transition_bytes)
    RateLimiter(min_size_to_sample=replay.min_size_to_sample, samples_per_insert=replay.samples_per_insert,
                error_buffer=error_buffer, max_insert_batch=replay.max_insert_batch,
                max_sample_batch=sample_batch)  # raises, naming the deadlock, before anything starts
    threshold = cfg.learner.solved_threshold if cfg.learner.solved_threshold is not None else env.reward_threshold
    net = net_spec(cfg, env)
    _check_extras(cfg, net)
    return RunPlan(env=env, env_name=cfg.run.env, net=net, sample_batch=sample_batch,
                   error_buffer=error_buffer, solved_threshold=threshold, transition_bytes=transition_bytes, frames=frames,
                   seed=cfg.run.seed, actors=cfg.run.actors, max_updates=cfg.run.max_updates,
                   max_insert_batch=replay.max_insert_batch, replay_external=external_endpoints(cfg),
                   shards=replay.shards, relay_fallback_s=cfg.actor.relay_fallback_after * cfg.relay.republish_s,
                   config=config_to_dict(cfg))


def shard_of(actor: int, shards: int) -> int:
    """The replay shard actor `actor` inserts into: by index, so S shards get the actors
    spread evenly (counts differ by at most one). It is recomputed on every start, so a run
    resumed with another actor count or shard count reassigns its actors."""
    return actor % shards


def external_endpoints(cfg: QfleetConfig) -> Optional[tuple[str, str]]:
    """replay.external ('HOST:INSERT_PORT,REQUEST_PORT') as ZeroMQ endpoints, or None."""
    text = cfg.replay.external.strip()
    if not text:
        return None
    host, _, ports = text.rpartition(":")
    insert, _, request = ports.partition(",")
    if not host or not insert.isdigit() or not request.isdigit() or not all(0 < int(p) < 65536 for p in (insert, request)):
        raise ConfigError(f"replay.external = {text!r}: expected HOST:INSERT_PORT,REQUEST_PORT, "
                          "e.g. 127.0.0.1:5555,5556 (what `qfleet replay-server` printed)")
    if cfg.run.backend != "local":
        raise ConfigError("replay.external works with the local backend; on Ray the run starts its own replay server")
    if cfg.replay.shards > 1:
        raise ConfigError(f"replay.external is one replay server; replay.shards = {cfg.replay.shards} needs the run "
                          "to start its own shards (drop replay.external, or set replay.shards=1)")
    return f"tcp://{host}:{insert}", f"tcp://{host}:{request}"


def _check_extras(cfg: QfleetConfig, net: NetSpec) -> None:
    """Name a missing pip extra, or a backend that cannot run the network, before any
    process starts (without importing torch: it alone takes seconds). Every CNN runs in
    torch, on the actors (`common.policy`) and the learner (`learner.backend`)."""
    cnn = f"a CNN Q-network ({net.describe()})"
    if net.kind == "cnn" and cfg.learner.backend == "numpy":
        raise ConfigError(f"learner.backend = 'numpy' runs MLPs only, and this run gets {cnn}; use "
                          "learner.backend = 'auto' (torch for CNNs) or learner.network = 'mlp'")
    torch_for = (cnn if net.kind == "cnn" else
                 "learner.backend = 'torch'" if cfg.learner.backend == "torch" else
                 "learner.device = 'cuda'" if cfg.learner.device == "cuda" else None)
    if torch_for and not available("torch"):
        raise MissingExtraError(f"{torch_for} needs torch, which is not installed: pip install 'qfleet[torch]'")
    if cfg.replay.frame_codec == "lz4" and not available("lz4"):
        raise MissingExtraError("replay.frame_codec = 'lz4' needs lz4, which is not installed: pip install 'qfleet[atari]'")
    if cfg.run.backend == "ray" and not available("ray"):
        raise MissingExtraError("--backend ray needs ray, which is not installed: pip install 'qfleet[ray]'")


def net_spec(cfg: QfleetConfig, env: EnvSpec) -> NetSpec:
    """The run's Q-network: `common.netspec.choose_net` on the observations the agent sees
    (stacked pixel frames with run.obs = pixels, else the environment's own), as
    learner.network says; ConfigError naming the shape when a CNN is forced on observations
    that have no channel axis."""
    learner = cfg.learner
    try:
        return choose_net(obs_shape=env.obs_shape, obs_dtype=env.obs_dtype, num_actions=env.num_actions,
                          network=learner.network, torso=learner.torso, hidden=tuple(learner.hidden),
                          cnn_hidden=tuple(learner.cnn_hidden),
                          dueling=learner.dueling)
    except ValueError as exc:
        torso = f", learner.torso = '{learner.torso}'" if learner.torso != "auto" else ""
        raise ConfigError(f"learner.network = '{learner.network}'{torso} for {env.env_id}: {exc}") from None


def _check_sizes(cfg: QfleetConfig, *, sample_item: int, insert_item: int, table_item: int) -> None:
    """Refuse message and table sizes that cannot work (pixel transitions are ~56 KB each
    in a sample reply; stored a frame at a time they take ~7.4 KB)."""
    limit = cfg.replay.max_message_bytes
    push = min(cfg.replay.max_insert_batch, cfg.actor.envs_per_actor * cfg.actor.flush_every_steps)
    sample_batch = cfg.learner.batch_size * cfg.learner.batches_per_request
    for what, count, per_item, fix in (
            ("a sample reply", sample_batch, sample_item, "learner.batch_size or learner.batches_per_request"),
            ("an insert message", push, insert_item, "replay.max_insert_batch or actor.envs_per_actor")):
        if count * per_item > limit:
            raise ConfigError(f"{what} would be {count} transitions x {per_item:,} bytes = "
                              f"{count * per_item / 2**20:,.0f} MiB, over replay.max_message_bytes "
                              f"({limit / 2**20:,.0f} MiB); lower {fix}")
    table = cfg.replay.capacity * table_item
    available = psutil.virtual_memory().available
    if table > MAX_MEMORY_FRACTION * available:
        raise ConfigError(f"replay.capacity = {cfg.replay.capacity:,} transitions of {table_item:,} bytes needs "
                          f"{table / 2**30:.1f} GiB; this machine has {available / 2**30:.1f} GiB available")
