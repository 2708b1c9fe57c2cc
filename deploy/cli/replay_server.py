"""`qfleet replay-server`: one replay server on its own, until SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from qfleet.common.config_loader import load_config
from qfleet.common.errors import ConfigError
from qfleet.deploy.processes import StopFlag, setup_logging

log = logging.getLogger("qfleet.replay")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or TOML config file: its replay section, the environment and the "
                   "learner's batch sizes size the server (use the run's own config)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a config field")
    p.add_argument("--env", help="environment id that sizes the storage (default: run.env of the config)")
    p.add_argument("--bind", default="127.0.0.1", metavar="HOST", help="address to bind (default 127.0.0.1)")
    p.add_argument("--insert-port", type=int, default=0, help="insert (PULL) port; 0 lets the OS choose")
    p.add_argument("--request-port", type=int, default=0, help="request (ROUTER) port; 0 lets the OS choose")
    p.add_argument("--snapshot-dir", help="directory for snapshots (enables the snapshot request)")
    p.add_argument("--resume", action="store_true", help="load the newest snapshot from --snapshot-dir first")


def run(args: argparse.Namespace) -> int:
    from qfleet.deploy.plan import make_plan
    from qfleet.replay_server.build import build_replay_server

    setup_logging("replay")
    overrides = list(args.set) + ([f"run.env={args.env}"] if args.env else [])
    cfg = load_config(args.config, overrides)
    plan = make_plan(cfg)  # sized for the learner's requests: batch_size x batches_per_request
    server = build_replay_server(dataclasses.replace(cfg.replay, error_buffer=plan.error_buffer), plan.env,
                                 max_sample_batch=plan.sample_batch, host=args.bind, insert_port=args.insert_port,
                                 request_port=args.request_port, snapshot_dir=args.snapshot_dir, seed=plan.seed)
    if args.resume:
        if not args.snapshot_dir:
            raise ConfigError("--resume loads the newest snapshot of --snapshot-dir: give --snapshot-dir DIR")
        path = server.restore()
        log.info("resumed from %s (%d transitions)", path, server.table.size)
    stop = StopFlag()
    host, insert_port = server.insert_endpoint.removeprefix("tcp://").rsplit(":", 1)
    external = f"{host}:{insert_port},{server.request_endpoint.rsplit(':', 1)[1]}"
    print(json.dumps({"insert": server.insert_endpoint, "request": server.request_endpoint, "replay": external,
                      "env": cfg.run.env, "capacity": cfg.replay.capacity}), flush=True)
    log.info("serving %s: `qfleet train --replay %s` (with the same --config) uses this server", cfg.run.env, external)
    log.info("serving %s: inserts on %s, requests on %s", cfg.run.env, server.insert_endpoint, server.request_endpoint)
    try:
        server.serve(stop.is_set)
    finally:
        stats = server.stats()
        server.close()
        log.info("stopped: stored %d, sampled %d, rejected %d", stats["stored"], stats["sampled"], stats["rejected"])
    return 0

