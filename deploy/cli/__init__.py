"""The `qfleet` command line. Each subcommand's module is imported only when it runs, so
`qfleet --help` and light commands start fast."""
from __future__ import annotations

import argparse
import importlib
import sys

from qfleet.common.errors import QfleetError

# subcommand -> (module with add_arguments(parser) and run(args), one-line help)
COMMANDS = {
    "train": ("qfleet.deploy.train_command", "train a DQN agent: replay server, learner and actors (local mode by default)"),
    "replay-server": ("qfleet.deploy.replay_process", "run one replay server on its own (manual and cluster deployments)"),
    "eval": ("qfleet.deploy.eval_command", "evaluate a checkpoint greedily (mean, std, min, max); --gif records it playing"),
    "plot": ("qfleet.deploy.plot_command", "plot learning curves and throughput of one or more run directories as a PNG"),
    "baseline": ("qfleet.deploy.baseline_command", "train a baseline (random search, REINFORCE) that writes the same metrics"),
    "config": ("qfleet.deploy.config_command", "show the default or resolved configuration with every field's meaning"),
    "bench": ("qfleet.deploy.bench.command", "benchmarks that write their numbers to JSON and a table"),
    "cluster-config": ("qfleet.deploy.cluster_command", "render the on-premises cluster config for `ray up`"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qfleet", description="Distributed actor-learner DQN (Ape-X family) over ZeroMQ, locally or on Ray.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(run=mod.run, usage_parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # name the subcommand, with its own usage line, not just `qfleet`
        args.usage_parser.error(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
    try:
        return int(args.run(args) or 0)
    except QfleetError as exc:
        print(f"qfleet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
