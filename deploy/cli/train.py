"""`qfleet train`: resolve and check the config, create the run directory, run the system."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import psutil

from qfleet.common.config import QfleetConfig
from qfleet.common.config_loader import load_config, save_config
from qfleet.common.envs import EnvSpec, describe_env, describe_run_env
from qfleet.common.errors import ConfigError
from qfleet.deploy.eval_command import add_gif_options
from qfleet.deploy.processes import StopFlag
from qfleet.replay_server.build import effective_error_buffer
from qfleet.replay_server.rate_limiter import RateLimiter
from qfleet.replay_server.storage import transition_dtype

FLAGS = {  # flag -> config field it sets
    "env": "run.env", "actors": "run.actors", "envs_per_actor": "actor.envs_per_actor", "seed": "run.seed",
    "max_seconds": "run.max_seconds", "run_dir": "run.run_dir", "name": "run.name", "backend": "run.backend",
    "address": "ray.address", "obs": "run.obs",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", help="gymnasium id or module:Class (default CartPole-v1)")
    p.add_argument("--actors", type=int, help="actor processes")
    p.add_argument("--envs-per-actor", type=int, help="environments per actor (one vectorized batch)")
    p.add_argument("--seed", type=int, help="seed for environments, exploration and networks")
    p.add_argument("--max-seconds", type=float, help="wall-clock budget")
    p.add_argument("--config", help="YAML or TOML config file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a config field")
    p.add_argument("--run-dir", help="folder for run directories (default runs)")
    p.add_argument("--name", help="run name (default <env>-<time>)")
    p.add_argument("--backend", choices=("local", "ray"), help="where to run (default local)")
    p.add_argument("--address", help="with --backend ray: 'auto' or HOST:PORT of a running Ray cluster "
                   "(default: the cluster of a Ray job, else a new local Ray)")
    p.add_argument("--obs", choices=("vector", "pixels"),
                   help="observe the environment's vectors (MLP) or its rendered frames (CNN; see the pixels section)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint and replay snapshot "
                   "(its config.yaml is the base; --set and flags such as --actors still apply)")
    p.add_argument("--gif", action="store_true",
                   help="after the run, record the best-evaluated agent as RUN_DIR/agent.gif")
    p.add_argument("--no-plot", action="store_true", help="do not draw RUN_DIR/plot.png after the run")
    add_gif_options(p)


def resolve(args: argparse.Namespace) -> tuple[QfleetConfig, EnvSpec]:
    """The checked config (with derived values filled in) and the environment's spec."""
    overrides = [f"{field}={getattr(args, flag)}" for flag, field in FLAGS.items()
                 if getattr(args, flag, None) is not None]
    base = args.config
    if getattr(args, "resume", None):
        base = Path(args.resume) / "config.yaml"
        if not base.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; pass the directory of a qfleet run")
    cfg = load_config(base, list(args.set) + overrides)
    env = describe_run_env(cfg)
    threshold = cfg.learner.solved_threshold if cfg.learner.solved_threshold is not None else env.reward_threshold
    sample_batch = cfg.learner.batch_size * cfg.learner.batches_per_request
    replay = dataclasses.replace(cfg.replay, error_buffer=effective_error_buffer(cfg.replay, sample_batch))
    if replay.min_size_to_sample > replay.capacity:
        raise ConfigError(f"replay.min_size_to_sample = {replay.min_size_to_sample} exceeds replay.capacity = "
                          f"{replay.capacity}: the learner would wait forever")
    if cfg.actor.envs_per_actor * cfg.actor.flush_every_steps > 64 * replay.max_insert_batch:
        raise ConfigError("actor.envs_per_actor * actor.flush_every_steps is over 64 insert messages per push; "
                          "raise replay.max_insert_batch or lower actor.flush_every_steps")
    _check_sizes(cfg, env, sample_batch)
    RateLimiter(min_size_to_sample=replay.min_size_to_sample, samples_per_insert=replay.samples_per_insert,
                error_buffer=replay.error_buffer, max_insert_batch=replay.max_insert_batch,
                max_sample_batch=sample_batch)  # raises, naming the deadlock, before anything starts
    cfg = dataclasses.replace(cfg, replay=replay,
                              learner=dataclasses.replace(cfg.learner, solved_threshold=threshold))
    return cfg, env


def _check_sizes(cfg: QfleetConfig, env: EnvSpec, sample_batch: int) -> None:
    """Refuse message and table sizes that cannot work (pixel transitions are ~56 KB each)."""
    per_item = transition_dtype(env.obs_shape, env.obs_dtype).itemsize
    limit = cfg.replay.max_message_bytes
    push = min(cfg.replay.max_insert_batch, cfg.actor.envs_per_actor * cfg.actor.flush_every_steps)
    for what, count, fix in (("a sample reply", sample_batch, "learner.batch_size or learner.batches_per_request"),
                             ("an insert message", push, "replay.max_insert_batch or actor.envs_per_actor")):
        if count * per_item > limit:
            raise ConfigError(f"{what} would be {count} transitions x {per_item:,} bytes = "
                              f"{count * per_item / 2**20:,.0f} MiB, over replay.max_message_bytes "
                              f"({limit / 2**20:,.0f} MiB); lower {fix}")
    table = cfg.replay.capacity * per_item
    available = psutil.virtual_memory().available
    if table > 0.8 * available:
        raise ConfigError(f"replay.capacity = {cfg.replay.capacity:,} transitions of {per_item:,} bytes needs "
                          f"{table / 2**30:.1f} GiB; this machine has {available / 2**30:.1f} GiB available")


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


def check_resume(run_dir: Path, cfg: QfleetConfig, env: EnvSpec) -> dict:
    """The checkpoint's run state, after checking the checkpoint and the newest replay
    snapshot fit this config (CheckpointError naming what differs)."""
    from qfleet.deploy.components import net_spec
    from qfleet.learner.checkpoint import load_checkpoint
    from qfleet.learner.learner import check_compatible
    from qfleet.replay_server.snapshot import check_newest

    _, meta = load_checkpoint(run_dir / "checkpoint.npz")
    check_compatible(meta, net_spec(cfg, env), env.env_id)
    check_newest(run_dir / "replay", env.obs_shape, env.obs_dtype, cfg.replay.capacity)
    return meta.get("run_state") or {"env_steps": 0, "episodes": 0}


def run(args: argparse.Namespace) -> int:
    stop = StopFlag()
    cfg, env = resolve(args)
    resume_state = None
    if args.resume and cfg.run.backend == "ray":
        raise ConfigError("--resume works in local mode; on the Ray backend a run starts afresh")
    if args.resume:
        run_dir = Path(args.resume)
        resume_state = check_resume(run_dir, cfg, env)
    else:
        run_dir = make_run_dir(cfg.run.run_dir, cfg.run.name, cfg.run.env)
    save_config(cfg, run_dir / "config.yaml")
    print(f"qfleet: {'resuming' if resume_state is not None else 'training'} {env.env_id} with {cfg.run.actors} "
          f"actor(s) x {cfg.actor.envs_per_actor} envs; solved at greedy mean >= {cfg.learner.solved_threshold}; "
          f"run directory {run_dir}", flush=True)
    if env.pixels is not None:
        per_item = transition_dtype(env.obs_shape, env.obs_dtype).itemsize
        print(f"qfleet: observing pixels: stacks of {env.pixels.frame_stack} {env.pixels.size}x{env.pixels.size} "
              f"grey frames (uint8); replay stores {per_item:,} bytes per transition, "
              f"{per_item * cfg.replay.capacity / 2**20:,.0f} MiB at capacity {cfg.replay.capacity:,} "
              f"(deploy/configs/cartpole-pixels.yaml holds settings made for pixels)", flush=True)
    from qfleet.deploy.launcher import write_summary

    say = lambda line: print(line, flush=True)  # noqa: E731
    if cfg.run.backend == "ray":
        from qfleet.deploy.ray_backend import RayLauncher

        launcher = RayLauncher(cfg, env, run_dir, cfg.learner.solved_threshold, stop, say=say)
    else:
        from qfleet.deploy.local import LocalLauncher

        launcher = LocalLauncher(cfg, env, run_dir, cfg.learner.solved_threshold, stop, say=say,
                                 resume_state=resume_state)
    try:
        code, reason = launcher.run()
        summary = launcher.summary(reason)
    finally:
        launcher.close()
    write_summary(run_dir, summary)
    print(final_message(summary), flush=True)
    if reason == "interrupted":  # stop at once: the plot can be drawn later
        print(f"qfleet: interrupted; `qfleet plot {run_dir}` draws its learning curves", flush=True)
    else:
        after_run(run_dir, args, cfg.run.seed)
    return code


def after_run(run_dir: Path, args: argparse.Namespace, seed: int) -> None:
    """The learning-curve plot and, with --gif, the agent's GIF (each skipped with a note if it cannot be made)."""
    from qfleet.common.errors import QfleetError

    if not args.no_plot:
        from qfleet.deploy.plot_command import plot_run_dir

        print("qfleet: " + plot_run_dir(run_dir), flush=True)
    if args.gif:
        from qfleet.deploy.eval_command import write_gif
        from qfleet.learner.checkpoint import load_policy
        from qfleet.learner.evaluation import greedy_policy

        try:
            saved = load_policy(run_dir)
            env = describe_env(saved.env, pixels=saved.pixels)
            print("qfleet: " + write_gif(greedy_policy(saved.spec, saved.params), env, run_dir / "agent.gif", args,
                                         seed), flush=True)
        except QfleetError as exc:
            print(f"qfleet: no GIF: {exc}", flush=True)


def final_message(s: dict) -> str:
    best = s.get("best_eval")
    ev = "no evaluation finished" if not best else (
        f"best greedy mean {best['eval_mean']:.1f} +- {best['eval_std']:.1f} over {best['eval_episodes']} "
        f"episodes (min {best['eval_min']:.0f}, max {best['eval_max']:.0f}, weights v{best['eval_version']})")
    head = (f"solved {s['env']} in {s['solved_after_s']:.1f} s" if s["solved"]
            else f"stopped ({s['reason']}) after {s['elapsed_s']:.1f} s")
    logs = "logs/" if s.get("backend") != "ray" else "component logs on their nodes under /tmp/qfleet/"
    return (f"qfleet: {head}: {ev}\n"
            f"qfleet: {s['env_steps']:,} env steps, {s['updates']:,} updates, {s['episodes']:,} episodes, "
            f"{s['actor_restarts']} actor restart(s)\n"
            f"qfleet: run directory {s['run_dir']} (config.yaml, metrics.jsonl, TensorBoard events, episodes.csv, "
            f"checkpoint.npz; {logs})")
