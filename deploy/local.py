"""Local mode: the replay server, the learner and N actors as separate processes on
127.0.0.1 (spawned, not forked), wired together, supervised, and stopped cleanly.

Connections (all ZeroMQ, ports chosen by the OS):
    actors   --insert-->           replay server   (endpoint from the replay's ready report)
    learner  --sample/priorities-> replay server
    learner  --weights (PUB)-->    actors          (endpoint from the learner's ready report)
    everyone --reports-->          this launcher   (telemetry PULL, bound before anything starts)
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Optional

import zmq

from common import messages as m
from common.codec import decode
from common.config import QfleetConfig
from common.envs import EnvSpec
from common.errors import CodecError, QfleetTimeout
from common.metrics import JsonlWriter
from common.sockets import bind, make_socket
from deploy.components import Placement, Wiring, actor_main, learner_main, replay_main
from deploy.processes import StopFlag
from deploy.progress import Progress
from replay_server.client import ReplayClient

STARTUP_TIMEOUT_S = 120.0
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SHUTDOWN_GRACE_S = 4.0


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
    control: Optional[Connection] = None
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.role if self.role != "actor" else f"actor-{self.index}"


class LocalLauncher:
    def __init__(self, cfg: QfleetConfig, env: EnvSpec, run_dir: Path, solved_threshold: Optional[float],
                 stop: StopFlag, say: Callable[[str], None] = print):
        self.cfg, self.env, self.run_dir = cfg, env, run_dir
        self.solved_threshold = solved_threshold
        self.stop, self.say = stop, say
        self.ctx = mp.get_context("spawn")
        self.zmq = zmq.Context.instance()
        self.telemetry = make_socket(self.zmq, zmq.PULL, hwm=10_000, server=True)
        self.place = Placement(telemetry=bind(self.telemetry, "127.0.0.1"), host="127.0.0.1", run_dir=str(run_dir))
        self.progress = Progress(cfg.run.actors)
        self.children: dict[str, Child] = {}
        self.wiring: Optional[Wiring] = None
        self.replay_client: Optional[ReplayClient] = None
        self.actor_restarts = 0
        self.metrics = JsonlWriter(run_dir / "metrics.jsonl")
        self.episodes = open(run_dir / "episodes.csv", "a", buffering=1)
        if self.episodes.tell() == 0:
            self.episodes.write("elapsed_s,actor,return,length\n")

    # -- starting ------------------------------------------------------------------------
    def _spawn(self, role: str, index: int = 0) -> Child:
        control = None
        if role == "replay":
            args = (self.cfg, self.env, self.place)
            target = replay_main
        else:
            receiver, control = self.ctx.Pipe(duplex=False)
            if role == "learner":
                target, args = learner_main, (self.cfg, self.env, self.place, receiver, self.solved_threshold)
            else:
                target, args = actor_main, (self.cfg, self.env, self.place, receiver, index)
        proc = self.ctx.Process(target=target, args=args, name=f"qfleet-{role}-{index}", daemon=False)
        with blas_threads(self.cfg.learner.threads if role == "learner" else 1):
            proc.start()  # the child reads these variables when it imports numpy
        child = Child(role, index, proc, control)
        self.children[child.name] = child
        (self.run_dir / "processes.json").write_text(json.dumps(
            {c.name: c.process.pid for c in self.children.values()}, indent=1))
        if control is not None and self.wiring is not None:
            control.send(self.wiring)
        return child

    def _start(self) -> None:
        self._spawn("replay")
        self._spawn("learner")
        for i in range(self.cfg.run.actors):
            self._spawn("actor", i)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not ({"replay", "learner"} <= set(self.progress.ready)):
            if self.stop.is_set():
                return
            self._check_children()
            if self.progress.errors:
                raise RuntimeError(self.progress.errors[0])
            if time.monotonic() > deadline:
                raise RuntimeError(f"components not ready after {STARTUP_TIMEOUT_S:g} s: "
                                   f"ready {sorted(self.progress.ready)}")
            self._drain_telemetry(0.05)
        replay, learner = self.progress.ready["replay"], self.progress.ready["learner"]
        self.wiring = Wiring(replay["insert"], replay["request"], learner["weights"])
        for child in self.children.values():
            if child.control is not None:
                child.control.send(self.wiring)
        self.replay_client = ReplayClient(obs_shape=self.env.obs_shape, obs_dtype=self.env.obs_dtype,
                                          request_endpoint=self.wiring.replay_request, timeout=0.5)

    # -- supervising -----------------------------------------------------------------------
    def _drain_telemetry(self, timeout_s: float) -> None:
        if not self.telemetry.poll(int(timeout_s * 1000)):
            return
        while True:
            try:
                frames = self.telemetry.recv_multipart(copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                report = m.unpack(m.Report, decode(frames, {m.REPORT: m.REPORT_SCHEMA}))
            except CodecError:
                continue
            self.progress.take(report)
            if report.values.get("event") == "eval":
                self.metrics.write({"time/elapsed_s": round(self.progress.elapsed, 3),
                                    **{f"eval/{k[5:] if k.startswith('eval_') else k}": v
                                       for k, v in report.values.items() if k != "event"}})

    def _check_children(self) -> Optional[str]:
        """Restart dead actors; returns a failure message if the replay server or learner died."""
        for name, child in list(self.children.items()):
            code = child.process.exitcode
            if code is None:
                continue
            if child.role != "actor":
                if child.role == "learner" and code == 0:
                    continue  # finished its update budget
                return (f"the {child.role} (pid {child.process.pid}) exited with code {code}; stopping the run "
                        f"(see {self.run_dir / 'logs' / (child.name + '.log')})")
            if self.actor_restarts >= self.cfg.run.max_actor_restarts:
                return f"{name} died (exit code {code}) and the restart limit ({self.cfg.run.max_actor_restarts}) is spent"
            self.actor_restarts += 1
            self.say(f"{name} (pid {child.process.pid}) died with exit code {code}; restarting it "
                     f"({self.actor_restarts} restart(s) so far)")
            restarted = self._spawn("actor", child.index)
            restarted.restarts = child.restarts + 1
        return None

    def _poll_replay(self) -> None:
        if self.replay_client is None or self.progress.replay_final:
            return
        try:
            self.progress.replay = self.replay_client.stats(timeout=0.5)
        except QfleetTimeout:
            pass

    def _stop_reason(self) -> Optional[str]:
        run, p = self.cfg.run, self.progress
        if self.stop.is_set():
            return "interrupted"
        if p.solved_after_s is not None and run.stop_when_solved:
            return "solved"
        if p.elapsed >= run.max_seconds:
            return "time budget reached"
        if run.max_env_steps and p.env_steps() >= run.max_env_steps:
            return "env-step budget reached"
        learner = self.children.get("learner")
        if learner is not None and learner.process.exitcode == 0:
            return "update budget reached"
        return None

    def _tick(self) -> None:
        self._poll_replay()
        tick = self.progress.snapshot()
        self.metrics.write(tick)
        for elapsed, actor, ret, length in self.progress.take_episodes():
            self.episodes.write(f"{elapsed:.3f},{actor},{ret:g},{length}\n")
        self.say(self.progress.status_line(tick))

    def run(self) -> tuple[int, str]:
        """Start, supervise until a stop reason, shut down. Returns (exit code, reason)."""
        failure, reason = None, None
        try:
            self._start()
            last_tick = time.monotonic()
            while True:
                self._drain_telemetry(0.02)
                failure = self._check_children() or (self.progress.errors[0] if self.progress.errors and
                                                      any(e.startswith(("replay", "learner")) for e in self.progress.errors)
                                                      else None)
                if failure:
                    reason = "failed"
                    break
                reason = self._stop_reason()
                if reason:
                    break
                if time.monotonic() - last_tick >= self.cfg.run.status_every_s:
                    self._tick()
                    last_tick = time.monotonic()
        except RuntimeError as exc:
            failure, reason = str(exc), "failed"
        finally:
            self._shutdown()
        self._tick()
        if failure:
            self.say(f"error: {failure}")
            return 1, reason
        return (130 if reason == "interrupted" else 0), reason

    def _shutdown(self) -> None:
        """SIGTERM everything at once: actors hand over pending transitions while the replay
        server drains its insert socket (rate limiter bypassed) and the learner writes its
        checkpoint; SIGKILL whatever is still alive after SHUTDOWN_GRACE_S."""
        for child in self.children.values():
            if child.process.exitcode is None:
                child.process.terminate()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for child in self.children.values():
            while child.process.exitcode is None and time.monotonic() < deadline:
                child.process.join(0.05)
                self._drain_telemetry(0.0)
        for child in self.children.values():
            if child.process.exitcode is None:
                self.say(f"{child.name} did not stop within {SHUTDOWN_GRACE_S:g} s; killing it")
                child.process.kill()
                child.process.join(1.0)
        self._drain_telemetry(0.1)
        if self.replay_client is not None:
            self.replay_client.close()

    def close(self) -> None:
        self.metrics.close()
        self.episodes.close()
        self.telemetry.close(0)

    def summary(self, reason: str) -> dict:
        p = self.progress
        best = max(p.evals, key=lambda e: e["eval_mean"]) if p.evals else None
        return {"reason": reason, "env": self.cfg.run.env, "solved": p.solved_after_s is not None,
                "solved_after_s": p.solved_after_s, "solved_wall_time": p.solved_wall,
                "started_wall_time": p.started_wall, "elapsed_s": p.elapsed, "env_steps": p.env_steps(),
                "transitions_sent": p.sent(), "updates": p.learner.get("updates", 0),
                "best_eval": best, "evaluations": len(p.evals), "episodes": p.episodes,
                "actor_restarts": self.actor_restarts, "replay": p.replay, "learner": p.learner_summary,
                "actors": {str(i): a for i, a in sorted(p.actors.items())},
                "errors": p.errors, "run_dir": str(self.run_dir)}


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
