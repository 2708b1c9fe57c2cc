"""`qfleet bench <name>`: dispatch to one benchmark module (deploy/bench/). Their top levels
stay light too: the parser imports each for its arguments and description."""
from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "replay": ("qfleet.deploy.bench.replay", "replay server ingest, sampling and memory per transition"),
    "solve": ("qfleet.deploy.bench.solve", "wall-clock seconds from launching qfleet train to solved, per seed"),
    "learner": ("qfleet.deploy.bench.learner", "learner updates/s and samples/s (MLP; pixel, Atari and MinAtar "
                "CNNs), isolated and in the full system"),
    "pixels": ("qfleet.deploy.bench.pixels", "frames/s per actor with the stock and fast renderers, their agreement, "
               "replay bytes per transition"),
    "soak": ("qfleet.deploy.bench.soak", "a long run: memory and open files of every process must not grow"),
    "atari-envs": ("qfleet.deploy.bench.atari_envs", "emulator frames per CPU-second: ale-py's native vector env "
                   "against gymnasium's Atari wrappers"),
    "scaling": ("qfleet.deploy.bench.scaling", "throughput, lag and CPU of the full system against the number of actors"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        bp = sub.add_parser(name, help=help_text, description=importlib.import_module(module).__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod = importlib.import_module(module)
        mod.add_arguments(bp)
        bp.set_defaults(bench_run=mod.run, usage_parser=bp)


def run(args: argparse.Namespace) -> int:
    return args.bench_run(args)
