"""The `qfleet` command line: one module per subcommand, each with `add_arguments(parser)`
and `run(args)`. Building the parser imports every subcommand module, so their top levels
import only the standard library and light qfleet modules; what a command needs to run
(numba, torch, Ray, ZeroMQ, matplotlib) is imported inside its `run()`, and `qfleet --help`
starts fast (tests/test_cli.py checks it)."""
from __future__ import annotations

import argparse
import importlib
import sys

from qfleet.common.errors import QfleetError

# subcommand -> (module with add_arguments(parser) and run(args), one-line help)
COMMANDS = {
    "train": ("qfleet.deploy.cli.train", "train a DQN agent: replay server, learner and actors (local mode by default)"),
    "replay-server": ("qfleet.deploy.cli.replay_server", "run one replay server on its own (manual and cluster deployments)"),
    "eval": ("qfleet.deploy.cli.eval", "evaluate a checkpoint greedily or at --epsilon (mean, std, min, max); --gif records it playing"),
    "plot": ("qfleet.deploy.cli.plot", "plot learning curves and throughput of one or more run directories as a PNG"),
    "baseline": ("qfleet.deploy.cli.baseline", "train a baseline (random search, REINFORCE) that writes the same metrics"),
    "config": ("qfleet.deploy.cli.config", "show the default or resolved configuration with every field's meaning"),
    "bench": ("qfleet.deploy.cli.bench", "benchmarks that write their numbers to JSON and a table"),
    "cluster-config": ("qfleet.deploy.cli.cluster_config", "render the on-premises cluster config for `ray up`"),
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
