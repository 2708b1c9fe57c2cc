"""Running one component: build it from its config section, wire it, run it, report.

Each role has a body, `run_replay` / `run_learner` / `run_actor`, that works the same in a
spawned process (local mode, `deploy.local.children`) and inside a Ray actor
(`deploy.ray.host`). Each gets its own config section plus the run plan (`deploy.plan`).
A component that binds sockets announces its endpoints with a `ready` report; one that
needs other components' endpoints waits for a `Wiring` on its control channel.

    replay   binds insert + request       -> ready(insert, request)      (one per shard)
    learner  binds weights (PUB)          -> ready(weights); waits for Wiring(replay_requests)
    relay    waits for Wiring(weights); binds its PUB -> ready(relay)  (relay.enabled: one per node)
    actor                                    waits for Wiring(replay_inserts, weights, relays)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Optional

from qfleet.common.config import ActorConfig, LearnerConfig, RelayConfig, ReplayConfig
from qfleet.common.errors import QfleetError
from qfleet.common.sockets import CurveKeys
from qfleet.common.telemetry import Telemetry, component_name
from qfleet.deploy.plan import RunPlan, shard_of
from qfleet.deploy.processes import StopFlag

log = logging.getLogger("qfleet")
WIRING_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Wiring:
    replay_inserts: tuple = ()   # each shard's insert endpoint, in shard order
    replay_requests: tuple = ()  # each shard's request endpoint, in shard order
    weights: str = ""            # the learner's PUB
    relays: tuple = ()           # (node, endpoint) of each weights relay: actors on that node use it

    def relay_for(self, node: str) -> str:
        return next((endpoint for where, endpoint in self.relays if where == node), "")


@dataclass(frozen=True)
class Start:
    """How one component starts: fixed ports (a restart binds the ports its predecessor had,
    so peers reconnect by themselves), whether it resumes saved state (replay: newest
    snapshot; learner: the checkpoint), and which incarnation it is."""

    ports: tuple = ()
    resume: bool = False
    epoch: int = 0            # learner: weights epoch (restarts win over older versions)
    incarnation: int = 0      # actor: restarts so far, for fresh randomness
    schedule: Optional[dict] = None  # actor: exploration state to continue from


@dataclass(frozen=True)
class Placement:
    """Where components bind, what they advertise to peers, and what they report to."""

    telemetry: str
    host: str = "127.0.0.1"      # address to bind
    advertise: str = ""          # address peers use, when binding to 0.0.0.0
    run_dir: str = ""            # where checkpoints, snapshots and logs go ("" for none)
    keys: Optional[CurveKeys] = None
    node: str = ""               # the Ray node id ("" locally: one node), which picks an actor's relay

    def endpoint(self, bound: str) -> str:
        """The endpoint peers connect to for a socket bound at `bound`."""
        return bound.replace(self.host, self.advertise, 1) if self.advertise else bound


def sent_file(place: Placement, index: int, incarnation: int) -> Optional[str]:
    """Where actor `index` (its `incarnation`-th process) keeps its sent-transition count."""
    if not place.run_dir:
        return None
    os.makedirs(os.path.join(place.run_dir, "counters"), exist_ok=True)
    return os.path.join(place.run_dir, "counters", f"actor-{index}.{incarnation}.sent")


def in_run_dir(place: Placement, name: str) -> Optional[str]:
    return os.path.join(place.run_dir, name) if place.run_dir else None


def part_name(role: str, index: int, shards: int) -> str:
    """How logs, faults, processes.json and the summary name a component: 'replay' when it is
    the only shard (as before shards existed), else 'replay-<i>'; 'relay-<i>'; 'actor-<i>'."""
    if role == "replay":
        return "replay" if shards == 1 else f"replay-{index}"
    return f"relay-{index}" if role == "relay" else component_name(role, index)


def shard_dir(index: int, shards: int) -> str:
    """A shard's snapshot folder in the run directory (the layout is replay_server.snapshot's)."""
    from qfleet.replay_server.snapshot import shard_dirs

    return str(shard_dirs(Path("replay"), shards)[index])


class Control:
    """The launcher's messages to one component: a Wiring first, then (for the learner) run
    state dicts, of which only the latest matters. Fed by a pipe (local) or by Ray calls."""

    def __init__(self, pipe: Optional[Connection] = None):
        self._pipe = pipe
        self._queue: queue.Queue = queue.Queue()
        self._state: dict = {}

    def put(self, message: object) -> None:
        self._queue.put(message)

    def _next(self, timeout: float) -> Optional[object]:
        if self._pipe is not None:
            try:
                return self._pipe.recv() if self._pipe.poll(timeout) else None
            except (EOFError, OSError):
                return None
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def wait_wiring(self, stop: StopFlag) -> Optional[Wiring]:
        waited = 0.0
        while not stop.is_set() and waited < WIRING_TIMEOUT_S:
            message = self._next(0.1)
            if isinstance(message, Wiring):
                return message
            if isinstance(message, dict):
                self._state = message
            waited += 0.1
        if stop.is_set():
            return None
        raise QfleetError(f"no wiring from the launcher within {WIRING_TIMEOUT_S:g} s")

    def run_state(self) -> dict:
        while True:
            message = self._next(0.0)
            if message is None:
                return self._state
            if isinstance(message, dict):
                self._state = message


ACTOR_LINGER_S = 1.5  # within the launcher's 0.6 x SHUTDOWN_GRACE_S for actors, after their 1 s final flush


# -- the bodies ------------------------------------------------------------------------------
def run_replay(cfg: ReplayConfig, plan: RunPlan, place: Placement, start: Start, stop: StopFlag,
               telemetry: Telemetry, stopping: Optional[threading.Event] = None, index: int = 0) -> None:
    """Replay shard `index`. `stopping` is set when the run begins to stop: from then on every insert is stored
    (the rate limiter would hold the actors' last pushes while the learner stops sampling)."""
    from qfleet.replay_server.build import build_replay_server

    insert_port, request_port = start.ports or (0, 0)
    server = build_replay_server(dataclasses.replace(cfg, error_buffer=plan.error_buffer), plan.env,
                                 max_sample_batch=plan.sample_batch, host=place.host, insert_port=insert_port,
                                 request_port=request_port, keys=place.keys,
                                 snapshot_dir=in_run_dir(place, shard_dir(index, plan.shards)),
                                 seed=plan.seed + 104729 * index)  # shards draw different samples
    restored = server.restore() if start.resume else None
    if restored:
        log.info("replay restored from %s (%d transitions)", restored, server.table.size)
    telemetry.report({"event": "ready", "insert": place.endpoint(server.insert_endpoint),
                      "request": place.endpoint(server.request_endpoint), "restored_from": restored or "",
                      "size": server.table.size, "restored_stored": sum(server.stored_by_actor.values())})
    stopping = stopping or threading.Event()
    try:
        while not stop.is_set():
            server.accept_all_inserts = stopping.is_set()
            server.step(0.05)
        server.drain(quiet_s=0.3, max_s=2.0)  # keep what the last actors still hand over
        if server.snapshots is not None:
            server.snapshot()  # a clean stop leaves everything stored on disk for --resume
        telemetry.report({"event": "finished", **server.stats()})
    finally:
        server.close()


def run_learner(cfg: LearnerConfig, plan: RunPlan, place: Placement, start: Start, stop: StopFlag,
                telemetry: Telemetry, control: Control, on_checkpoint: Callable[[Path], None] = lambda path: None) -> None:
    from qfleet.learner.backend import resolve_device
    from qfleet.learner.checkpoint import load_checkpoint
    from qfleet.learner.learner import Learner
    from qfleet.learner.publisher import WeightPublisher
    from qfleet.replay_server.client import ReplayClient

    publisher = WeightPublisher(spec=plan.net, host=place.host, port=start.ports[0] if start.ports else 0,
                                keys=place.keys, republish_s=cfg.republish_s, epoch=start.epoch)
    telemetry.report({"event": "ready", "weights": place.endpoint(publisher.endpoint)})
    wiring = control.wait_wiring(stop)
    if wiring is None:
        return
    shards = [ReplayClient(obs_shape=plan.env.obs_shape, obs_dtype=plan.env.obs_dtype, request_endpoint=request,
                           keys=place.keys, timeout=cfg.sample_timeout_s) for request in wiring.replay_requests]
    device = resolve_device(cfg.device)
    checkpoint = in_run_dir(place, "checkpoint.npz")
    learner = Learner(cfg=cfg, spec=plan.net, env=plan.env, solved_threshold=plan.solved_threshold,
                      replay=shards[0], extra_shards=shards[1:], publisher=publisher, device=device, seed=plan.seed,
                      telemetry=WithPublisherCounts(telemetry, publisher),
                      checkpoint_path=Path(checkpoint) if checkpoint else None, max_updates=plan.max_updates,
                      meta={"env": plan.env_name, "config": plan.config}, run_state=control.run_state,
                      on_checkpoint=on_checkpoint)
    if start.resume and checkpoint and Path(checkpoint).exists():
        learner.restore(*load_checkpoint(checkpoint))
    log.info("learner on %s (%s backend), epoch %d", device, learner.backend, start.epoch)
    summary = learner.run(stop.is_set)
    telemetry.report({"event": "finished", **{k: v for k, v in summary.items() if v is not None},
                      "weights_sends": publisher.sends, "weights_bytes": publisher.bytes_sent})
    publisher.close()
    for client in shards:
        client.close()


class WithPublisherCounts:
    """The learner's telemetry, with the weights publisher's counters added to its periodic
    reports: what its weights socket sends, for the fan-out figures of `qfleet bench scaling`."""

    def __init__(self, telemetry: Telemetry, publisher) -> None:
        self._telemetry, self._publisher = telemetry, publisher

    def report(self, values: dict, **arrays) -> None:
        if "event" not in values:
            values = {**values, "weights_sends": self._publisher.sends, "weights_bytes": self._publisher.bytes_sent}
        self._telemetry.report(values, **arrays)

    def __getattr__(self, name: str):
        return getattr(self._telemetry, name)


def run_actor(cfg: ActorConfig, plan: RunPlan, place: Placement, start: Start, stop: StopFlag,
              telemetry: Telemetry, control: Control, index: int) -> None:
    from qfleet.actors.actor import Actor
    from qfleet.actors.weights import WeightSubscriber
    from qfleet.replay_server.client import ReplayClient

    wiring = control.wait_wiring(stop)
    if wiring is None:
        return
    replay = ReplayClient(obs_shape=plan.env.obs_shape, obs_dtype=plan.env.obs_dtype, keys=place.keys, insert_hwm=4,
                          insert_endpoint=wiring.replay_inserts[shard_of(index, len(wiring.replay_inserts))])
    relay = wiring.relay_for(place.node)  # none on this node (e.g. restarted elsewhere): the learner's
    weights = WeightSubscriber(spec=plan.net, endpoint=relay or wiring.weights, keys=place.keys,
                               fallback=wiring.weights if relay else None, fallback_after_s=plan.relay_fallback_s)
    # A restarted actor gets fresh randomness, not a replay of its predecessor's.
    actor = Actor(cfg=cfg, index=index, num_actors=plan.actors, env=plan.env, net=plan.net,
                  replay=replay, weights=weights, max_insert_batch=plan.max_insert_batch,
                  seed=plan.seed + 7919 * start.incarnation, telemetry=telemetry,
                  sent_file=sent_file(place, index, start.incarnation), frames=plan.frames)
    if start.schedule:
        actor.schedule.load(start.schedule)
    actor.run(stop.is_set)
    weights.close()
    # Let the last inserts reach the draining replay server: on a loaded machine it can
    # take seconds to read every actor's backlog (close returns as soon as they are out).
    replay.close(linger_s=ACTOR_LINGER_S)


RELAY_REPORT_S = 1.0


def run_relay(cfg: RelayConfig, plan: RunPlan, place: Placement, start: Start, stop: StopFlag,
              telemetry: Telemetry, control: Control, index: int) -> None:
    """A weights relay for the actors of one node: subscribes to the learner (from the
    Wiring), binds its PUB (a restart binds its predecessor's port, so actors reconnect by
    themselves) and reports its counters every RELAY_REPORT_S."""
    from qfleet.actors.weights_relay import WeightsRelay

    wiring = control.wait_wiring(stop)
    if wiring is None:
        return
    relay = WeightsRelay(spec=plan.net, upstream=wiring.weights, host=place.host,
                         port=start.ports[0] if start.ports else 0, keys=place.keys, republish_s=cfg.republish_s)
    telemetry.report({"event": "ready", "relay": place.endpoint(relay.endpoint), "node": place.node})
    last = time.monotonic()
    try:
        while not stop.is_set():
            relay.step(0.05)
            if time.monotonic() - last >= RELAY_REPORT_S:
                telemetry.report(relay.stats())
                last = time.monotonic()
        telemetry.report({"event": "finished", **relay.stats()})
    finally:
        relay.close()


def report_crash(name: str, telemetry: Telemetry, exc: BaseException) -> None:
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, QfleetError):
        log.error("%s stopped: %s", name, detail)
    else:
        log.error("%s crashed:\n%s", name, traceback.format_exc())
    telemetry.report({"event": "error", "message": detail[:2000]})
