"""The Ray backend: the same components as Ray actors on a Ray cluster.

Ray places the components by resources (the replay server and learner on node types that
offer `ray.replay_resource` / `ray.learner_resource` when the cluster has them, the
learner on a GPU when there is one, actors spread across nodes), starts them, and
restarts crashed actors (also after losing their node); the launcher then wires them
again and reports the restart. Losing the replay server or the learner stops the run.

The data plane is ZeroMQ, as in local mode: components bind on all interfaces at
OS-chosen ports and advertise their node's address; every socket uses CURVE with keys
generated here for this run (they reach the components as actor arguments, and are never
logged or written to the run directory).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from qfleet.common.config import QfleetConfig
from qfleet.common.sockets import CurveKeys
from qfleet.common.telemetry import component_name
from qfleet.deploy.components import Placement, Start, Wiring
from qfleet.deploy.launcher import SHUTDOWN_GRACE_S, Launcher
from qfleet.deploy.plan import RunPlan
from qfleet.deploy.processes import StopFlag


@dataclass
class Hosted:
    role: str
    index: int
    handle: object            # the Ray actor handle
    run_ref: object = None    # the ObjectRef of its running `run()`
    restarts: int = 0
    where: Optional[dict] = None

    @property
    def name(self) -> str:
        return component_name(self.role, self.index)


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
        self._owns_ray = connect(r.address, r.replay_cpus + r.learner_cpus + cfg.run.actors * r.actor_cpus)
        keys = CurveKeys.generate() if cfg.ray.curve else None
        super().__init__(cfg, plan, run_dir, stop, say, bind_host="0.0.0.0", keys=keys)
        driver_ip = ray.util.get_node_ip_address()
        self.place = Placement(telemetry=self.telemetry_endpoint.replace("0.0.0.0", driver_ip), host="0.0.0.0",
                               keys=keys)
        self.run_name = run_dir.name
        self.hosts: dict[str, Hosted] = {}
        self.wiring: Optional[Wiring] = None
        self._learner_finished = False

    # -- placing ---------------------------------------------------------------------------
    def _options(self, role: str) -> dict:
        import ray

        r = self.cfg.ray
        available = ray.cluster_resources()
        opts: dict = {"max_concurrency": 4, "max_restarts": 0, "max_task_retries": 0}
        resource = {"replay": r.replay_resource, "learner": r.learner_resource, "actor": r.actor_resource}[role]
        if resource and available.get(resource, 0) > 0:
            opts["resources"] = {resource: 1e-3}
        if role == "replay":
            opts["num_cpus"] = r.replay_cpus
        elif role == "learner":
            opts["num_cpus"] = r.learner_cpus
            gpus = (1.0 if available.get("GPU", 0) >= 1 else 0.0) if r.learner_gpus < 0 else r.learner_gpus
            opts["num_gpus"] = gpus
        else:
            opts["num_cpus"] = r.actor_cpus
            opts["max_restarts"] = self.cfg.run.max_actor_restarts
            if r.spread_actors:
                opts["scheduling_strategy"] = "SPREAD"
        return opts

    def _create(self, role: str, index: int = 0) -> Hosted:
        import ray

        from qfleet.deploy.ray.host import ComponentHost

        cls = ray.remote(ComponentHost).options(**self._options(role), name=None)
        section = {"replay": self.cfg.replay, "learner": self.cfg.learner, "actor": self.cfg.actor}[role]
        handle = cls.remote(role, index, section, self.plan, self.place, Start(), self.run_name)
        hosted = Hosted(role, index, handle)
        hosted.run_ref = handle.run.remote()
        self.hosts[hosted.name] = hosted
        return hosted

    # -- starting ---------------------------------------------------------------------------
    def _start(self) -> None:
        self._create("replay")
        self._create("learner")
        for i in range(self.cfg.run.actors):
            self._create("actor", i)
        self._wait_ready({"replay", "learner"}, self._dead_on_arrival)
        replay, learner = self.progress.ready["replay"], self.progress.ready["learner"]
        self.wiring = Wiring(replay["insert"], replay["request"], learner["weights"])
        self._write_endpoints()
        for hosted in self.hosts.values():
            if hosted.role != "replay":
                hosted.handle.wire.remote(self.wiring)
        self._connect_replay(replay["request"])
        self._record_processes()

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
            if hosted.role != "actor":
                return (f"the {hosted.role} on node {node} died ({error}); on the Ray backend losing the "
                        f"replay server or the learner stops the run")
            if error.startswith("ActorUnavailableError") and self._restarting(hosted):
                # Until Ray declares a lost node dead (heartbeats, ~15 s), calls to an actor that
                # was on it fail as "unavailable": the same loss, already counted; ask again.
                hosted.handle.wire.remote(self.wiring)
                hosted.run_ref = hosted.handle.run.remote()
                continue
            if self.actor_restarts >= self.cfg.run.max_actor_restarts:
                return f"{hosted.name} died ({error}) and the restart limit ({self.cfg.run.max_actor_restarts}) is spent"
            self.actor_restarts += 1
            hosted.restarts += 1
            self._record_fault(hosted.name, "actor", (hosted.where or {}).get("pid", -1), error, self._sent_exact())
            self.progress.retire_actor(hosted.index)
            self.say(f"{hosted.name} on node {node} died ({error}); Ray restarts it "
                     f"({self.actor_restarts} restart(s) so far)")
            # Calls queue until Ray has the actor back (on this node or, after a node loss, another).
            hosted.handle.wire.remote(self.wiring)
            hosted.run_ref = hosted.handle.run.remote()
            hosted.where = None
        if any(h.where is None for h in self.hosts.values()):
            self._record_processes()
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
        replay, learner = self.hosts.get("replay"), self.hosts.get("learner")
        if replay is not None:
            replay.handle.begin_stopping.remote()  # from now on it stores every insert
        actors = [h for h in self.hosts.values() if h.role == "actor"]
        self._stop_and_wait(actors, time.monotonic() + 0.6 * SHUTDOWN_GRACE_S)
        if learner is not None:
            self._send_run_state(self.progress.run_state())
        self._stop_and_wait([h for h in (replay, learner) if h is not None], deadline)
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
