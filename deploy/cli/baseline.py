"""`qfleet baseline random-search|reinforce`: the seed tutorials' baselines, in one process
(the loop is learner/baselines/runner.py), writing the same run directory as `qfleet train`
(config.yaml, metrics.jsonl, TensorBoard events, episodes.csv, summary.json, plot.png) so
`qfleet plot` compares them with DQN."""
from __future__ import annotations

import argparse

from qfleet.common.config import BASELINE_SECTIONS, BaselineRunConfig
from qfleet.common.config_loader import load_sections, save_config
from qfleet.deploy.cli.eval import add_gif_options, write_gif

METHODS = ("random-search", "reinforce")  # each has a config section of its name with '_' for '-'
FLAGS = {"env": "baseline.env", "seed": "baseline.seed", "max_seconds": "baseline.max_seconds",
         "max_episodes": "baseline.max_episodes", "run_dir": "baseline.run_dir", "name": "baseline.name"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", choices=METHODS,
                   help="random-search: random linear policies, best kept; reinforce: numpy policy gradient")
    p.add_argument("--env", help="gymnasium id or module:Class (default CartPole-v1)")
    p.add_argument("--seed", type=int, help="seed for environments, sampling and initialisation")
    p.add_argument("--max-seconds", type=float, help="wall-clock budget (default 120)")
    p.add_argument("--max-episodes", type=int, help="training-episode budget (default 5000; 0: none)")
    p.add_argument("--config", help="YAML or TOML file with sections baseline, random_search, reinforce")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a field, e.g. reinforce.lr=0.005 (qfleet config --docs lists them)")
    p.add_argument("--run-dir", help="folder for run directories (default runs)")
    p.add_argument("--name", help="run name (default <method>-<env>-<time>)")
    p.add_argument("--gif", action="store_true",
                   help="after the run, record the final policy (random search: the best found) as RUN_DIR/agent.gif")
    p.add_argument("--no-plot", action="store_true", help="do not draw RUN_DIR/plot.png after the run")
    add_gif_options(p)


def run(args: argparse.Namespace) -> int:
    from qfleet.common.envs import describe_env
    from qfleet.common.metrics import MetricsWriter
    from qfleet.deploy.cli.plot import plot_run_dir
    from qfleet.deploy.processes import StopFlag
    from qfleet.deploy.progress import Progress
    from qfleet.deploy.run_dir import make_run_dir, write_summary
    from qfleet.learner.baselines.runner import BaselineRun, make_learner

    stop = StopFlag()
    overrides = [f"{field}={getattr(args, flag)}" for flag, field in FLAGS.items() if getattr(args, flag) is not None]
    parts = load_sections(BASELINE_SECTIONS, args.config, list(args.set) + overrides)
    cfg: BaselineRunConfig = parts["baseline"]
    env = describe_env(cfg.env, env_kwargs=cfg.env_kwargs)
    threshold = cfg.solved_threshold if cfg.solved_threshold is not None else env.reward_threshold
    learner = make_learner(args.method, parts, env, cfg.seed)
    run_dir = make_run_dir(cfg.run_dir, cfg.name, f"{args.method}-{cfg.env}")
    section = args.method.replace("-", "_")
    save_config({"baseline": cfg, section: parts[section]}, run_dir / "config.yaml")
    print(f"qfleet: {args.method} on {env.env_id}; solved at greedy mean >= {threshold}; run directory {run_dir}",
          flush=True)
    writer = MetricsWriter(run_dir=run_dir)
    loop = BaselineRun(learner=learner, cfg=cfg, env=env, threshold=threshold, writer=writer, stop=stop.is_set,
                       on_eval=lambda r: writer.write(Progress.eval_metrics(r), step=r["env_steps"],
                                                      elapsed_s=r["elapsed_s"]),
                       say=lambda line: print(line, flush=True))
    try:
        reason = loop.run()
    finally:
        writer.close()
        learner.close()
    summary = loop.summary(args.method, reason, run_dir)
    write_summary(run_dir, summary)
    best = summary["best_eval"]
    head = f"solved in {summary['solved_after_s']:.1f} s" if summary["solved"] else f"stopped ({reason})"
    print(f"qfleet: {args.method} {head} after {summary['episodes']:,} episodes, {summary['env_steps']:,} env steps: "
          f"best greedy mean {best['eval_mean']:.1f} +- {best['eval_std']:.1f} over {best['eval_episodes']} episodes "
          f"(min {best['eval_min']:g}, max {best['eval_max']:g})", flush=True)
    if not args.no_plot:
        print("qfleet: " + plot_run_dir(run_dir), flush=True)
    if args.gif:
        print("qfleet: " + write_gif(learner.greedy(), env, run_dir / "agent.gif", args, cfg.seed), flush=True)
    return 130 if reason == "interrupted" else 0
