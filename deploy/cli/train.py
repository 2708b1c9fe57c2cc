"""`qfleet train`: load the config, plan and check the run, create the run directory, run the system."""
from __future__ import annotations

import argparse
from pathlib import Path

from qfleet.common.config import QfleetConfig
from qfleet.common.config_loader import load_config
from qfleet.common.errors import ConfigError, QfleetError
from qfleet.deploy.cli.eval import add_gif_options

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


def run(args: argparse.Namespace) -> int:
    from qfleet.deploy.training import final_message, run_training

    say = lambda line: print(line, flush=True)  # noqa: E731
    cfg = load_run_config(args)
    result = run_training(cfg, resume=Path(args.resume) if args.resume else None, say=say)
    print(final_message(result.summary), flush=True)
    if result.reason == "interrupted":  # stop at once: the plot can be drawn later
        print(f"qfleet: interrupted; `qfleet plot {result.run_dir}` draws its learning curves", flush=True)
    else:
        after_run(result.run_dir, args, cfg.run.seed)
    return result.code


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
            env = describe_env(saved.env, pixels=saved.pixels, env_kwargs=saved.env_kwargs, preset=saved.env_preset)
            print("qfleet: " + write_gif(greedy_policy(saved.spec, saved.params), env, run_dir / "agent.gif", args,
                                         seed), flush=True)
        except QfleetError as exc:
            print(f"qfleet: no GIF: {exc}", flush=True)
