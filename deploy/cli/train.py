"""`qfleet train`: load the config, plan and check the run, create the run directory, run the system."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from qfleet.common.config import QfleetConfig
from qfleet.common.config_loader import load_config, save_config
from qfleet.common.errors import ConfigError, QfleetError
from qfleet.deploy.cli.eval import add_gif_options

if TYPE_CHECKING:
    from qfleet.deploy.plan import RunPlan

FLAGS = {  # flag -> config field it sets
    "env": "run.env", "actors": "run.actors", "envs_per_actor": "actor.envs_per_actor", "seed": "run.seed",
    "max_seconds": "run.max_seconds", "run_dir": "run.run_dir", "name": "run.name", "backend": "run.backend",
    "address": "ray.address", "obs": "run.obs", "replay": "replay.external",
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
    p.add_argument("--replay", metavar="HOST:INSERT_PORT,REQUEST_PORT",
                   help="use a replay server already running on its own (`qfleet replay-server`, started with the "
                   "same --config) instead of starting one; local backend")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint and replay snapshot "
                   "(its config.yaml is the base; --set and flags such as --actors still apply)")
    p.add_argument("--gif", action="store_true",
                   help="after the run, record the best-evaluated agent as RUN_DIR/agent.gif")
    p.add_argument("--no-plot", action="store_true", help="do not draw RUN_DIR/plot.png after the run")
    add_gif_options(p)


def load_run_config(args: argparse.Namespace) -> QfleetConfig:
    """The config as the user set it: the file (or the resumed run's config.yaml), then --set and flags."""
    overrides = [f"{field}={getattr(args, flag)}" for flag, field in FLAGS.items()
                 if getattr(args, flag, None) is not None]
    base = args.config
    if getattr(args, "resume", None):
        base = Path(args.resume) / "config.yaml"
        if not base.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; pass the directory of a qfleet run")
    return load_config(base, list(args.set) + overrides)


def check_resume(run_dir: Path, cfg: QfleetConfig, plan: RunPlan) -> dict:
    """The checkpoint's run state, after checking the checkpoint and the newest replay
    snapshot fit this run (CheckpointError naming what differs)."""
    from qfleet.learner.checkpoint import load_checkpoint
    from qfleet.learner.learner import check_compatible
    from qfleet.replay_server.snapshot import check_newest

    _, meta = load_checkpoint(run_dir / "checkpoint.npz")
    check_compatible(meta, plan.net, plan.env.env_id)
    check_newest(run_dir / "replay", plan.env.obs_shape, plan.env.obs_dtype, cfg.replay.capacity)
    return meta.get("run_state") or {"env_steps": 0, "episodes": 0}


def run(args: argparse.Namespace) -> int:
    from qfleet.deploy.plan import make_plan
    from qfleet.deploy.processes import StopFlag
    from qfleet.deploy.run_dir import make_run_dir, write_summary

    stop = StopFlag()
    cfg = load_run_config(args)
    plan = make_plan(cfg)
    resume_state = None
    if args.resume and cfg.run.backend == "ray":
        raise ConfigError("--resume works in local mode; on the Ray backend a run starts afresh")
    if args.resume:
        run_dir = Path(args.resume)
        resume_state = check_resume(run_dir, cfg, plan)
    else:
        run_dir = make_run_dir(cfg.run.run_dir, cfg.run.name, cfg.run.env)
    save_config(cfg, run_dir / "config.yaml")  # what the user set; the plan is derived again on --resume
    say = lambda line: print(line, flush=True)  # noqa: E731
    say_plan(cfg, plan, run_dir, resuming=resume_state is not None, say=say)
    if cfg.run.backend == "ray":
        from qfleet.deploy.ray.backend import RayLauncher

        launcher = RayLauncher(cfg, plan, run_dir, stop, say=say)
    else:
        from qfleet.deploy.local.launcher import LocalLauncher

        launcher = LocalLauncher(cfg, plan, run_dir, stop, say=say, resume_state=resume_state)
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


def say_plan(cfg: QfleetConfig, plan: RunPlan, run_dir: Path, *, resuming: bool, say) -> None:
    env = plan.env
    say(f"qfleet: {'resuming' if resuming else 'training'} {env.env_id} with {plan.actors} actor(s) x "
        f"{cfg.actor.envs_per_actor} envs; solved at greedy mean >= {plan.solved_threshold}; run directory {run_dir}")
    if env.pixels is not None:
        per_item = plan.transition_bytes
        say(f"qfleet: observing pixels: stacks of {env.pixels.frame_stack} {env.pixels.size}x{env.pixels.size} "
            f"grey frames (uint8); replay stores {per_item:,} bytes per transition, "
            f"{per_item * cfg.replay.capacity / 2**20:,.0f} MiB at capacity {cfg.replay.capacity:,} "
            f"(deploy/configs/cartpole-pixels.yaml holds settings made for pixels)")


def after_run(run_dir: Path, args: argparse.Namespace, seed: int) -> None:
    """The learning-curve plot and, with --gif, the agent's GIF (each skipped with a note if it cannot be made)."""
    if not args.no_plot:
        from qfleet.deploy.cli.plot import plot_run_dir

        print("qfleet: " + plot_run_dir(run_dir), flush=True)
    if args.gif:
        from qfleet.common.envs import describe_env
        from qfleet.deploy.cli.eval import write_gif
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
