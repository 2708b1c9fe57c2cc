"""A Ray actor that hosts one qfleet component: a replay shard, the learner, a weights relay or an actor.

Ray only places, starts, health-checks and restarts it. `run()` runs the component's
ordinary body (`deploy.components.run_*`, given its config section and the run plan) until `stop()`; it is a threaded actor, so
`wire`, `push_state`, `stop` and `where` answer while `run` is busy. Transitions and
weights travel over ZeroMQ (CURVE), never through Ray's object store: method arguments
are only endpoints, counters and stop requests.

When Ray restarts a crashed actor it re-runs `__init__` with the original arguments; the
launcher then wires it again and calls `run` again.
"""
from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import replace
from typing import Optional, Union

from qfleet.common.config import ActorConfig, LearnerConfig, RelayConfig, ReplayConfig
from qfleet.common.telemetry import Telemetry
from qfleet.deploy.components import (Control, Placement, Start, Wiring, part_name, report_crash, run_actor,
                                      run_learner, run_relay, run_replay)
from qfleet.deploy.plan import RunPlan
from qfleet.deploy.processes import StopFlag, setup_logging


class ComponentHost:
    def __init__(self, role: str, index: int, cfg: Union[ReplayConfig, LearnerConfig, ActorConfig, RelayConfig], plan: RunPlan,
                 place: Placement, start: Start, run_name: str):
        """`cfg` is the component's own config section."""
        import ray

        self.role, self.index, self.cfg, self.plan, self.start = role, index, cfg, plan, start
        self.name = part_name(role, index, plan.shards)
        # Checkpoints, snapshots and logs stay on this node; the learner ships its checkpoint
        # to the launcher over ZeroMQ. Peers reach this node at its Ray node address.
        local_dir = os.path.join(tempfile.gettempdir(), "qfleet", run_name, self.name)
        os.makedirs(os.path.join(local_dir, "logs"), exist_ok=True)
        self.place = replace(place, advertise=ray.util.get_node_ip_address(), run_dir=local_dir,
                             node=ray.get_runtime_context().get_node_id())
        setup_logging(self.name, path=os.path.join(local_dir, "logs", f"{self.name}.log"))
        self.control = Control()
        self.stop_flag = StopFlag(install_handlers=False)
        self.stopping = threading.Event()

    def where(self) -> dict:
        import ray

        return {"node_ip": self.place.advertise, "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "local_dir": self.place.run_dir}

    def wire(self, wiring: Wiring) -> None:
        self.control.put(wiring)

    def push_state(self, state: dict) -> None:
        self.control.put(state)

    def stop(self) -> None:
        self.stop_flag.set()

    def begin_stopping(self) -> None:
        """The run is stopping (the replay server then stores every insert that still arrives)."""
        self.stopping.set()

    def run(self, start: Optional[Start] = None) -> str:
        """Run the component until stopped; returns its name (raises if it failed). `start`
        replaces the one it was created with (a restart binds its predecessor's ports)."""
        telemetry = Telemetry(self.place.telemetry, self.role, self.index, keys=self.place.keys)
        cfg, plan, place, stop = self.cfg, self.plan, self.place, self.stop_flag
        start = start or self.start
        try:
            if self.role == "replay":
                run_replay(cfg, plan, place, start, stop, telemetry, self.stopping, self.index)
            elif self.role == "relay":
                run_relay(cfg, plan, place, start, stop, telemetry, self.control, self.index)
            elif self.role == "learner":
                run_learner(cfg, plan, place, start, stop, telemetry, self.control,
                            on_checkpoint=lambda path: telemetry.send_file("checkpoint.npz", str(path)))
            else:
                run_actor(cfg, plan, place, start, stop, telemetry, self.control, self.index)
        except BaseException as exc:
            report_crash(self.name, telemetry, exc)
            raise
        finally:
            telemetry.close()
        return self.name
