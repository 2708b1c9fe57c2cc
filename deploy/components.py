"""Process entry points: each builds one component from its config section and runs it.

The launcher starts these with multiprocessing's spawn method. A component that needs
other components' endpoints waits for a `Wiring` on its control pipe; one that binds
sockets announces its endpoints with a `ready` telemetry report. Every process stops on
SIGTERM/SIGINT or when its launcher dies, and reports a crash before exiting non-zero.

    replay   binds insert + request       -> ready(insert, request)
    learner  binds weights (PUB)          -> ready(weights); waits for Wiring(replay_request)
    actor                                    waits for Wiring(replay_insert, weights)
"""
from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Optional

from common.config import QfleetConfig
from common.envs import EnvSpec
from common.errors import QfleetError
from common.netspec import NetSpec
from common.sockets import CurveKeys
from common.telemetry import Telemetry
from deploy.processes import StopFlag, setup_logging

log = logging.getLogger("qfleet")
WIRING_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Wiring:
    replay_insert: str = ""
    replay_request: str = ""
    weights: str = ""


@dataclass(frozen=True)
class Placement:
    """Where a component binds and what it reports to (the same for every component of a run)."""

    telemetry: str
    host: str = "127.0.0.1"
    run_dir: str = ""
    keys: Optional[CurveKeys] = None


def net_spec(cfg: QfleetConfig, env: EnvSpec) -> NetSpec:
    """The Q-network for the run's observations: a CNN on stacked frames, an MLP otherwise."""
    if env.pixels is not None:
        return NetSpec("cnn", env.obs_shape, env.num_actions, tuple(cfg.learner.cnn_hidden), cfg.learner.dueling)
    return NetSpec("mlp", env.obs_shape, env.num_actions, tuple(cfg.learner.hidden), cfg.learner.dueling)


def _run_component(role: str, index: int, place: Placement, body: Callable[[StopFlag, Telemetry], None]) -> None:
    name = role if role != "actor" else f"actor-{index}"
    log_path = os.path.join(place.run_dir, "logs", f"{name}.log") if place.run_dir else None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    setup_logging(name, path=log_path)
    stop = StopFlag(watch_parent=True)
    telemetry = Telemetry(place.telemetry, role, index, keys=place.keys)
    try:
        body(stop, telemetry)
    except BaseException as exc:
        detail = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, QfleetError):
            log.error("%s crashed:\n%s", name, traceback.format_exc())
        else:
            log.error("%s stopped: %s", name, detail)
        telemetry.report({"event": "error", "message": detail[:2000]})
        telemetry.close()
        raise SystemExit(1)
    telemetry.close()


def _wait_wiring(control: Connection, stop: StopFlag) -> Optional[Wiring]:
    waited = 0.0
    while not stop.is_set() and waited < WIRING_TIMEOUT_S:
        if control.poll(0.1):
            return control.recv()
        waited += 0.1
    if stop.is_set():
        return None
    raise QfleetError(f"no wiring from the launcher within {WIRING_TIMEOUT_S:g} s")


def replay_main(cfg: QfleetConfig, env: EnvSpec, place: Placement, snapshot_dir: Optional[str] = None,
                resume: bool = False) -> None:
    def body(stop: StopFlag, telemetry: Telemetry) -> None:
        from replay_server.build import build_replay_server

        server = build_replay_server(cfg.replay, env, max_sample_batch=cfg.learner.batch_size * cfg.learner.batches_per_request,
                                     host=place.host, keys=place.keys, snapshot_dir=snapshot_dir, seed=cfg.run.seed)
        if resume and server.snapshots is not None:
            path = server.snapshots.load_latest(server.table)
            log.info("resumed replay from %s (%d transitions)", path, server.table.size)
        telemetry.report({"event": "ready", "insert": server.insert_endpoint, "request": server.request_endpoint})
        try:
            server.serve(stop.is_set)
            server.drain(quiet_s=0.3, max_s=2.0)  # keep what stopping actors still hand over
            telemetry.report({"event": "finished", **server.stats()})
        finally:
            server.close()
    _run_component("replay", 0, place, body)


def learner_main(cfg: QfleetConfig, env: EnvSpec, place: Placement, control: Connection,
                 solved_threshold: Optional[float]) -> None:
    def body(stop: StopFlag, telemetry: Telemetry) -> None:
        from learner.backend import resolve_device
        from learner.learner import Learner
        from learner.publisher import WeightPublisher
        from replay_server.client import ReplayClient

        spec = net_spec(cfg, env)
        publisher = WeightPublisher(spec=spec, host=place.host, keys=place.keys, republish_s=cfg.learner.republish_s)
        telemetry.report({"event": "ready", "weights": publisher.endpoint})
        wiring = _wait_wiring(control, stop)
        if wiring is None:
            return
        replay = ReplayClient(obs_shape=env.obs_shape, obs_dtype=env.obs_dtype, request_endpoint=wiring.replay_request,
                              keys=place.keys, timeout=cfg.learner.sample_timeout_s)
        device = resolve_device(cfg.learner.device)
        learner = Learner(cfg=cfg.learner, spec=spec, env=env, solved_threshold=solved_threshold,
                          replay=replay, publisher=publisher, device=device, seed=cfg.run.seed, telemetry=telemetry,
                          checkpoint_path=Path(place.run_dir) / "checkpoint.npz" if place.run_dir else None,
                          max_updates=cfg.run.max_updates, meta={"env": cfg.run.env})
        log.info("learner on %s (%s backend)", device, learner.backend)
        summary = learner.run(stop.is_set)
        telemetry.report({"event": "finished", **{k: v for k, v in summary.items() if v is not None}})
        publisher.close()
        replay.close()
    _run_component("learner", 0, place, body)


def actor_main(cfg: QfleetConfig, env: EnvSpec, place: Placement, control: Connection, index: int) -> None:
    def body(stop: StopFlag, telemetry: Telemetry) -> None:
        from actors.actor import Actor
        from actors.weights import WeightSubscriber
        from replay_server.client import ReplayClient

        wiring = _wait_wiring(control, stop)
        if wiring is None:
            return
        replay = ReplayClient(obs_shape=env.obs_shape, obs_dtype=env.obs_dtype, insert_endpoint=wiring.replay_insert,
                              keys=place.keys, insert_hwm=4)
        weights = WeightSubscriber(spec=net_spec(cfg, env), endpoint=wiring.weights, keys=place.keys)
        actor = Actor(cfg=cfg.actor, index=index, num_actors=cfg.run.actors, env=env, net=net_spec(cfg, env),
                      replay=replay, weights=weights, max_insert_batch=cfg.replay.max_insert_batch,
                      seed=cfg.run.seed, telemetry=telemetry)
        actor.run(stop.is_set)
        weights.close()
        replay.close(linger_s=1.0)  # let the last inserts reach the draining replay server
    _run_component("actor", index, place, body)
