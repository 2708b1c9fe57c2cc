"""The Ray backend: the same components as Ray actors on a Ray cluster.

Ray places the components (`deploy.ray.placement`: replay shards and the learner on node
types that offer `ray.replay_resource` / `ray.learner_resource` when the cluster has them,
several shards spread over nodes, the learner on a GPU when there is one, actors spread
across nodes, with relay.enabled one weights relay on each node that hosts actors), starts
them, and restarts crashed actors and relays (also after losing their node) and replay
shards (from their snapshots, on their ports); the launcher then wires them again and
reports the restart. Losing the learner stops the run.

The data plane is ZeroMQ, as in local mode: components bind on all interfaces at
OS-chosen ports and advertise their node's address; every socket uses CURVE with keys
generated here for this run (they reach the components as actor arguments, and are never
logged or written to the run directory).
"""
from __future__ import annotations

import json
import math
import os
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from qfleet.common.config import QfleetConfig
from qfleet.common.sockets import CurveKeys
from qfleet.deploy.components import Placement, Start, Wiring
from qfleet.deploy.launcher import SHUTDOWN_GRACE_S, STARTUP_TIMEOUT_S, Launcher
from qfleet.deploy.local.children import port_of
from qfleet.deploy.ray import placement
from qfleet.deploy.plan import RunPlan
from qfleet.deploy.processes import StopFlag

RESTARTED = {"actor": "it reconnects", "relay": "its actors use the learner's weights meanwhile",
             "replay": "from its snapshot, on its ports; the learner samples the other shards meanwhile"}


@dataclass
class Hosted:
    role: str
    index: int
    name: str                 # deploy.components.part_name
    handle: object            # the Ray actor handle
    run_ref: object = None    # the ObjectRef of its running `run()`
    restarts: int = 0
    where: Optional[dict] = None


def connect(address: str, local_cpus: float = 0.0) -> bool:
    """Connect to Ray: the given cluster, the cluster of a Ray job, or a new local one.
    True if this call initialized Ray here (then `ray.shutdown()` at the end disconnects,
    or stops the local Ray it started)."""
    import ray

    if ray.is_initialized():  # e.g. a test that built a cluster
        return False
    if not address:
        # Inside a Ray job RAY_ADDRESS names its cluster; otherwise start our own Ray rather
        # than attach to whatever Ray happens to run on this machine.
        address = "auto" if os.environ.get("RAY_ADDRESS") else "local"
    extra = {}
    if address == "local":
        # Our own Ray on this machine: declare enough logical CPUs for every component
        # (Ray's CPUs are a scheduling quantity; the OS shares the real cores anyway).
        extra["num_cpus"] = max(os.cpu_count() or 1, math.ceil(local_cpus))
    ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=True, **extra)
    return True


class RayLauncher(Launcher):
    def __init__(self, cfg: QfleetConfig, plan: RunPlan, run_dir: Path, stop: StopFlag,
                 say: Callable[[str], None] = print):
        import ray

        r = cfg.ray
        self._owns_ray = connect(r.address, cfg.replay.shards * r.replay_cpus + r.learner_cpus
                                 + cfg.run.actors * r.actor_cpus)
        keys = CurveKeys.generate() if cfg.ray.curve else None
        super().__init__(cfg, plan, run_dir, stop, say, bind_host="0.0.0.0", keys=keys)
        driver_ip = ray.util.get_node_ip_address()
        self.place = Placement(telemetry=self.telemetry_endpoint.replace("0.0.0.0", driver_ip), host="0.0.0.0",
                               keys=keys)
        # The components' folders on their nodes (/tmp/qfleet/<run_name>/): one per launch, so a
        # restarted replay shard restores its own snapshots, never those of an earlier run of that name.
        self.run_name = f"{run_dir.name}-{secrets.token_hex(4)}"
        self.hosts: dict[str, Hosted] = {}
        self.wiring: Optional[Wiring] = None
        self._learner_finished = False

    # -- placing and starting ------------------------------------------------------------------
    def _create(self, role: str, index: int = 0, node: Optional[str] = None) -> Hosted:
        import ray

        from qfleet.deploy.ray.host import ComponentHost

        cls = ray.remote(ComponentHost).options(**placement.options(self.cfg, role, node), name=None)
        section = {"replay": self.cfg.replay, "learner": self.cfg.learner, "actor": self.cfg.actor,
                   "relay": self.cfg.relay}[role]
        handle = cls.remote(role, index, section, self.plan, self.place, Start(), self.run_name)
        hosted = Hosted(role, index, self._name(role, index), handle)
        hosted.run_ref = handle.run.remote()
        self.hosts[hosted.name] = hosted
        return hosted

    def _start(self) -> None:
        shards = range(self.plan.shards)
        for i, node in zip(shards, placement.shard_nodes(self.cfg)):
            self._create("replay", i, node)
        self._create("learner")
        for i in range(self.cfg.run.actors):
            self._create("actor", i)
        self._wait_ready({self._name("replay", i) for i in shards} | {"learner"}, self._dead_on_arrival)
        weights = self.progress.ready["learner"]["weights"]
        self.wiring = Wiring(tuple(self._shard_endpoints("insert")), tuple(self._shard_endpoints("request")), weights)
        if self.cfg.relay.enabled:
            self.wiring = replace(self.wiring, relays=self._start_relays())
        self._write_endpoints(self.wiring)
        for hosted in self.hosts.values():
            if hosted.role not in ("replay", "relay"):
                hosted.handle.wire.remote(self.wiring)
        self._connect_replay(list(self.wiring.replay_requests))
        self._record_processes()

    def _start_relays(self) -> tuple:
        """One relay on each node that hosts actors (found where Ray put them), wired to the
        learner and ready before the actors are wired, so they subscribe to it from the start."""
        import ray

        actors = [h for h in self.hosts.values() if h.role == "actor"]
        nodes = sorted({w["node_id"] for w in ray.get([h.handle.where.remote() for h in actors],
                                                      timeout=STARTUP_TIMEOUT_S)})
        relays = [self._create("relay", i, node) for i, node in enumerate(nodes)]
        for relay in relays:
            relay.handle.wire.remote(Wiring(weights=self.progress.ready["learner"]["weights"]))
        self._wait_ready({r.name for r in relays}, self._dead_on_arrival)
        return tuple((node, self.progress.ready[r.name]["relay"]) for node, r in zip(nodes, relays))

    def _dead_on_arrival(self) -> Optional[str]:
        import ray

        refs = [h.run_ref for h in self.hosts.values() if h.role != "actor"]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in done:
            hosted = next(h for h in self.hosts.values() if h.run_ref == ref)
            return f"the {hosted.role} failed to start: {self._error_of(ref)}"
        return None

    def _record_processes(self) -> None:
        import ray

        for hosted in self.hosts.values():
            try:
                hosted.where = ray.get(hosted.handle.where.remote(), timeout=10)
            except Exception:  # an actor restarting right now answers on its next start
                continue
        (self.run_dir / "processes.json").write_text(json.dumps(
            {n: h.where for n, h in self.hosts.items()}, indent=1))

    @staticmethod
    def _error_of(ref) -> str:
        import ray

        try:
            ray.get(ref, timeout=1)
            return "it returned"
        except Exception as exc:  # RayActorError, RayTaskError, ...: the message says which
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:500]}"

    # -- supervising -------------------------------------------------------------------------
    def _check_children(self) -> Optional[str]:
        import ray

        refs = {h.run_ref: h for h in self.hosts.values() if h.run_ref is not None}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in done:
            hosted = refs[ref]
            error = self._error_of(ref)
            hosted.run_ref = None
            if error == "it returned":
                if hosted.role == "learner":
                    self._learner_finished = True
                continue
            node = (hosted.where or {}).get("node_ip", "?")
            if hosted.role == "learner":
                return (f"the learner on node {node} died ({error}); on the Ray backend losing the "
                        f"learner stops the run")
            if error.startswith("ActorUnavailableError") and self._restarting(hosted):
                # Until Ray declares a lost node dead (heartbeats, ~15 s), calls to an actor that
                # was on it fail as "unavailable": the same loss, already counted; ask again.
                self._rerun(hosted)
                continue
            failure = self._count_restart(hosted, error)
            if failure:
                return failure
            self._record_fault(hosted.name, hosted.role, (hosted.where or {}).get("pid", -1), error, self._sent_exact())
            if hosted.role == "actor":
                self.progress.retire_actor(hosted.index)
            self.say(f"{hosted.name} on node {node} died ({error}); Ray restarts it ({RESTARTED[hosted.role]})")
            hosted.restarts += 1
            self._rerun(hosted)  # calls queue until Ray has it back (on its node or, after a node loss, another)
            hosted.where = None
        if any(h.where is None for h in self.hosts.values()):
            self._record_processes()
        return self._moved_shard()

    def _count_restart(self, hosted: Hosted, error: str) -> Optional[str]:
        """Count one restart against its limit; the failure message when it is spent."""
        run = self.cfg.run
        counter, limit = {"actor": ("actor_restarts", run.max_actor_restarts),
                          "relay": ("relay_restarts", run.max_actor_restarts),
                          "replay": ("core_restarts", run.max_core_restarts)}[hosted.role]
        if getattr(self, counter) >= limit:
            return f"{hosted.name} died ({error}) and the restart limit ({limit}) is spent"
        setattr(self, counter, getattr(self, counter) + 1)
        return None

    def _rerun(self, hosted: Hosted) -> None:
        """Run a restarted component again: a replay shard on its ports from its snapshot, a
        relay on its port (peers reconnect by themselves), an actor wired again."""
        ready = self.progress.ready.get(hosted.name, {})
        start = None
        if hosted.role == "replay":
            start = Start(ports=(port_of(ready["insert"]), port_of(ready["request"])), resume=True)
        elif hosted.role == "relay":
            start = Start(ports=(port_of(ready["relay"]),))
            hosted.handle.wire.remote(Wiring(weights=self.wiring.weights))
        else:
            hosted.handle.wire.remote(self.wiring)
        hosted.run_ref = hosted.handle.run.remote(start)

    def _moved_shard(self) -> Optional[str]:
        """A replay shard that came back at another address (Ray restarted it on another node
        after its node was lost) is out of the learner's and its actors' reach."""
        for i, insert in enumerate(self.wiring.replay_inserts):
            now = self.progress.ready.get(self._name("replay", i), {}).get("insert", insert)
            if now != insert:
                return (f"{self._name('replay', i)} came back at {now}, not at {insert} where the learner and "
                        "its actors reach it (its node was lost); stopping the run")
        return None

    def _restarting(self, hosted: Hosted) -> bool:
        """True while the actor's last loss is recorded and its successor has not reported."""
        return any(f["name"] == hosted.name and f["recovered_after_s"] is None for f in self.faults)

    def _send_run_state(self, state: dict) -> None:
        learner = self.hosts.get("learner")
        if learner is not None and learner.run_ref is not None:
            learner.handle.push_state.remote(state)

    def _learner_done(self) -> bool:
        return self._learner_finished

    # -- stopping ------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """As in local mode: the replay server stores every insert from now on, actors stop
        and hand over what is pending, then the replay server and the learner (with the final
        counters; it ships its checkpoint) stop; kill what lingers."""
        import ray

        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        replays = [h for h in self.hosts.values() if h.role == "replay"]
        for replay in replays:
            replay.handle.begin_stopping.remote()  # from now on it stores every insert
        actors = [h for h in self.hosts.values() if h.role == "actor"]
        self._stop_and_wait(actors, time.monotonic() + 0.6 * SHUTDOWN_GRACE_S)
        if "learner" in self.hosts:
            self._send_run_state(self.progress.run_state())
        self._stop_and_wait([h for h in self.hosts.values() if h.role in ("replay", "learner", "relay")], deadline)
        for hosted in self.hosts.values():
            ray.kill(hosted.handle, no_restart=True)
        self._drain_all_telemetry(0.2)
        if self._owns_ray:
            ray.shutdown()

    def _stop_and_wait(self, hosts: list[Hosted], until: float) -> None:
        import ray

        for hosted in hosts:
            hosted.handle.stop.remote()
        refs = [h.run_ref for h in hosts if h.run_ref is not None]
        while refs and time.monotonic() < until:
            done, refs = ray.wait(refs, num_returns=len(refs), timeout=0.05)
            self._drain_telemetry(0.0)
        self._drain_telemetry(0.05)
