"""Component processes of the local launcher: spawn (never fork), one BLAS thread per
process, a control pipe per process that takes wiring, a record of each process (role,
pid, incarnation) that the supervisor restarts from, and the processes' entry points."""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Optional

import zmq

from qfleet.common.config import ActorConfig, LearnerConfig, QfleetConfig, RelayConfig, ReplayConfig
from qfleet.common.telemetry import Telemetry
from qfleet.deploy.components import (Control, Placement, Start, Wiring, in_run_dir, part_name, report_crash,
                                      run_actor, run_learner, run_relay, run_replay)
from qfleet.deploy.plan import RunPlan
from qfleet.deploy.processes import StopFlag, setup_logging

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
STOPPING_SIGNAL = signal.SIGUSR1  # the launcher tells the replay server the run is stopping


@contextmanager
def blas_threads(n: int):
    """Set the BLAS/OpenMP thread count for children spawned inside this block. Without it
    every process starts one BLAS thread per core and, on a small machine, they thrash
    (measured: a learner update 2.7x slower with the actors running)."""
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update({k: str(n) for k in THREAD_VARIABLES})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class Child:
    role: str
    index: int
    process: mp.Process
    start: Start
    control: Optional[Connection] = None
    restarts: int = 0
    shards: int = 1

    @property
    def name(self) -> str:
        return part_name(self.role, self.index, self.shards)


@dataclass
class Children:
    """Every component process of a run, keyed by name ('replay' or 'replay-1', 'learner', 'relay-0', 'actor-3')."""

    cfg: QfleetConfig
    plan: RunPlan
    place: Placement
    run_dir: Path
    wiring: Optional[Wiring] = None
    by_name: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ctx = mp.get_context("spawn")

    def spawn(self, role: str, start: Start, index: int = 0, restarts: int = 0) -> Child:
        control = receiver = None
        if role != "replay":
            receiver, control = self._ctx.Pipe(duplex=False)
        if role == "replay":
            target, args = replay_main, (self.cfg.replay, self.plan, self.place, start, index)
        elif role == "learner":
            target, args = learner_main, (self.cfg.learner, self.plan, self.place, receiver, start)
        elif role == "relay":
            target, args = relay_main, (self.cfg.relay, self.plan, self.place, receiver, index, start)
        else:
            target, args = actor_main, (self.cfg.actor, self.plan, self.place, receiver, index, start)
        proc = self._ctx.Process(target=target, args=args, name=f"qfleet-{role}-{index}", daemon=False)
        with blas_threads(self.cfg.learner.threads if role == "learner" else 1):
            proc.start()  # the child reads these variables when it imports numpy
        child = Child(role, index, proc, start, control, restarts, self.plan.shards)
        self.by_name[child.name] = child
        if control is not None and self.wiring is not None:
            control.send(self.wiring)
        (self.run_dir / "processes.json").write_text(json.dumps(
            {c.name: c.process.pid for c in self.by_name.values()}, indent=1))
        return child

    def wire(self, wiring: Wiring) -> None:
        self.wiring = wiring
        for child in self.by_name.values():
            if child.control is not None:
                child.control.send(wiring)

    def send(self, name: str, message: object) -> None:
        """A control message to one component (dropped if it is gone)."""
        child = self.by_name.get(name)
        if child is not None and child.control is not None and child.process.exitcode is None:
            try:
                child.control.send(message)
            except (BrokenPipeError, OSError):
                pass

    def __iter__(self):
        return iter(list(self.by_name.values()))

    def get(self, name: str) -> Optional[Child]:
        return self.by_name.get(name)


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


# -- entry points of the spawned processes ---------------------------------------------------
def replay_main(cfg: ReplayConfig, plan: RunPlan, place: Placement, start: Start, index: int) -> None:
    stopping = threading.Event()
    signal.signal(STOPPING_SIGNAL, lambda signum, frame: stopping.set())
    _process("replay", index, plan, place,
             lambda stop, tel: run_replay(cfg, plan, place, start, stop, tel, stopping, index))


def learner_main(cfg: LearnerConfig, plan: RunPlan, place: Placement, pipe: Connection, start: Start) -> None:
    _process("learner", 0, plan, place,
             lambda stop, tel: run_learner(cfg, plan, place, start, stop, tel, Control(pipe)))


def relay_main(cfg: RelayConfig, plan: RunPlan, place: Placement, pipe: Connection, index: int, start: Start) -> None:
    _process("relay", index, plan, place,
             lambda stop, tel: run_relay(cfg, plan, place, start, stop, tel, Control(pipe), index))


def actor_main(cfg: ActorConfig, plan: RunPlan, place: Placement, pipe: Connection, index: int, start: Start) -> None:
    _process("actor", index, plan, place,
             lambda stop, tel: run_actor(cfg, plan, place, start, stop, tel, Control(pipe), index))


def _process(role: str, index: int, plan: RunPlan, place: Placement,
             body: Callable[[StopFlag, Telemetry], None]) -> None:
    name = part_name(role, index, plan.shards)
    log_path = in_run_dir(place, os.path.join("logs", f"{name}.log"))
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    setup_logging(name, path=log_path)
    stop = StopFlag(watch_parent=True)
    telemetry = Telemetry(place.telemetry, role, index, keys=place.keys)
    code = 0
    try:
        body(stop, telemetry)
    except BaseException as exc:
        report_crash(name, telemetry, exc)
        code = 1
    _close_sockets(telemetry)
    # Everything is saved and sent: end now. A spawned child otherwise tears the interpreter
    # down (torch's modules, atexit hooks), which took ~1 s of the launcher's shutdown grace
    # on a busy 2-core machine and got finished learners killed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _close_sockets(telemetry: Telemetry) -> None:
    """A component ends in os._exit, which never terminates ZeroMQ's context: what sockets
    still queue (an actor's last inserts, the final report) would die with its I/O thread.
    Terminating the context waits for them, each socket within its own linger."""
    telemetry.close()
    zmq.Context.instance().destroy()
