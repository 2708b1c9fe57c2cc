"""Starting component processes for the local launcher: spawn (never fork), one BLAS
thread per process, a control pipe per process that takes wiring, and a record of each
process (role, pid, incarnation) that the supervisor restarts from."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Optional

from qfleet.common.config import QfleetConfig
from qfleet.common.envs import EnvSpec
from qfleet.deploy.components import Placement, Start, Wiring, actor_main, learner_main, replay_main

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


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

    @property
    def name(self) -> str:
        return self.role if self.role != "actor" else f"actor-{self.index}"


@dataclass
class Children:
    """Every component process of a run, keyed by name ('replay', 'learner', 'actor-3')."""

    cfg: QfleetConfig
    env: EnvSpec
    place: Placement
    solved_threshold: Optional[float]
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
            target, args = replay_main, (self.cfg, self.env, self.place, start)
        elif role == "learner":
            target, args = learner_main, (self.cfg, self.env, self.place, receiver, start, self.solved_threshold)
        else:
            target, args = actor_main, (self.cfg, self.env, self.place, receiver, index, start)
        proc = self._ctx.Process(target=target, args=args, name=f"qfleet-{role}-{index}", daemon=False)
        with blas_threads(self.cfg.learner.threads if role == "learner" else 1):
            proc.start()  # the child reads these variables when it imports numpy
        child = Child(role, index, proc, start, control, restarts)
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
