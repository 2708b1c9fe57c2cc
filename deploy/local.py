"""Local mode: the replay server, the learner and N actors as separate processes on
127.0.0.1 (spawned, not forked), wired together, supervised, and stopped cleanly.

Connections (all ZeroMQ, ports chosen by the OS):
    actors   --insert-->           replay server   (endpoint from the replay's ready report)
    learner  --sample/priorities-> replay server
    learner  --weights (PUB)-->    actors          (endpoint from the learner's ready report)
    everyone --reports-->          this launcher   (telemetry PULL, bound before anything starts)

Supervision: a dead actor is restarted at once; a dead replay server is restarted on the
same ports from its newest snapshot and a dead learner from its newest checkpoint (peers
reconnect by themselves), up to run.max_core_restarts times.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import zmq

from common import messages as m
from common.codec import decode
from common.config import QfleetConfig
from common.envs import EnvSpec
from common.errors import CodecError, QfleetTimeout
from common.metrics import MetricsWriter
from common.sockets import bind, make_socket
from deploy.children import Child, Children, port_of
from deploy.components import Placement, Start, Wiring, sent_file
from deploy.processes import StopFlag
from deploy.progress import Progress
from replay_server.client import ReplayClient

STARTUP_TIMEOUT_S = 120.0
SHUTDOWN_GRACE_S = 4.0


class LocalLauncher:
    def __init__(self, cfg: QfleetConfig, env: EnvSpec, run_dir: Path, solved_threshold: Optional[float],
                 stop: StopFlag, say: Callable[[str], None] = print, resume_state: Optional[dict] = None):
        self.cfg, self.env, self.run_dir = cfg, env, run_dir
        self.stop, self.say = stop, say
        self.solved_threshold = solved_threshold
        self.resume_state = resume_state  # the checkpoint's run_state when resuming, else None
        self.telemetry = make_socket(zmq.Context.instance(), zmq.PULL, hwm=10_000, server=True)
        place = Placement(telemetry=bind(self.telemetry, "127.0.0.1"), host="127.0.0.1", run_dir=str(run_dir))
        self.children = Children(cfg, env, place, solved_threshold, run_dir)
        self.progress = Progress(cfg.run.actors, resume_state or {})
        self.replay_client: Optional[ReplayClient] = None
        self.actor_restarts = 0
        self.core_restarts = 0
        self.faults: list[dict] = []
        self.metrics = MetricsWriter(run_dir=run_dir, started_wall=self.progress.started_wall)

    # -- starting ------------------------------------------------------------------------
    def _start(self) -> None:
        resume = self.resume_state is not None
        self.children.spawn("replay", Start(resume=resume))
        self.children.spawn("learner", Start(resume=resume))
        for i in range(self.cfg.run.actors):
            self.children.spawn("actor", Start(schedule=self.progress.schedule_for(i)), index=i)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not ({"replay", "learner"} <= set(self.progress.ready)):
            if self.stop.is_set():
                return
            for child in self.children:
                if child.role != "actor" and child.process.exitcode is not None:
                    raise RuntimeError(f"the {child.role} failed to start (exit code {child.process.exitcode}): "
                                       f"{'; '.join(self.progress.errors) or 'see ' + self._log(child)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"components not ready after {STARTUP_TIMEOUT_S:g} s: "
                                   f"ready {sorted(self.progress.ready)}")
            self._drain_telemetry(0.05)
        replay, learner = self.progress.ready["replay"], self.progress.ready["learner"]
        self.children.wire(Wiring(replay["insert"], replay["request"], learner["weights"]))
        self.replay_client = ReplayClient(obs_shape=self.env.obs_shape, obs_dtype=self.env.obs_dtype,
                                          request_endpoint=replay["request"], timeout=0.5)

    def _log(self, child: Child) -> str:
        return str(self.run_dir / "logs" / f"{child.name}.log")

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
            event = report.values.get("event")
            if event == "eval":
                self.metrics.write(Progress.eval_metrics(report.values), step=self.progress.env_steps(),
                                   elapsed_s=self.progress.elapsed)
            self._note_recovery(report)

    def _note_recovery(self, report: m.Report) -> None:
        """Close the open fault of this component: a ready report (replay, learner) or the
        first report of a restarted actor."""
        name = report.role if report.role != "actor" else f"actor-{report.index}"
        fault = next((f for f in self.faults if f["name"] == name and f["recovered_after_s"] is None
                      and report.values.get("pid") != f["pid"]), None)
        if fault is None or (report.role != "actor" and report.values.get("event") != "ready"):
            return
        fault["recovered_after_s"] = round(time.monotonic() - fault["_t"], 3)
        fault["sent_at_recovery"] = self._sent_exact()
        if report.role == "replay":
            fault["restored_from"] = report.values.get("restored_from") or None
            fault["restored_transitions"] = report.values.get("size", 0)
            fault["restored_stored"] = report.values.get("restored_stored", 0)
        self.say(f"{name} is back after {fault['recovered_after_s']:.1f} s"
                 + (f" (restored {fault['restored_transitions']:,} transitions from its snapshot)"
                    if report.role == "replay" else ""))

    def _record_fault(self, child: Child, code: int) -> None:
        self.faults.append({"name": child.name, "role": child.role, "pid": child.process.pid, "exit_code": code,
                            "at_s": round(self.progress.elapsed, 3), "sent_at_fault": self._sent_exact(),
                            "recovered_after_s": None, "_t": time.monotonic()})

    def _check_children(self) -> Optional[str]:
        """Restart what died and may be restarted; a failure message when the run must stop."""
        for child in self.children:
            code = child.process.exitcode
            if code is None or (child.role == "learner" and code == 0):  # 0: update budget done
                continue
            if child.role == "actor":
                if self.actor_restarts >= self.cfg.run.max_actor_restarts:
                    return f"{child.name} died (exit code {code}) and the restart limit " \
                           f"({self.cfg.run.max_actor_restarts}) is spent"
                self.actor_restarts += 1
                self._record_fault(child, code)
                self.say(f"{child.name} (pid {child.process.pid}) died with exit code {code}; restarting it "
                         f"({self.actor_restarts} restart(s) so far)")
                self.progress.retire_actor(child.index, self._read_sent(child))
                self.children.spawn("actor", Start(incarnation=child.restarts + 1,
                                                   schedule=self.progress.schedule_for(child.index)),
                                    index=child.index, restarts=child.restarts + 1)
                continue
            if self.core_restarts >= self.cfg.run.max_core_restarts:
                return (f"the {child.role} (pid {child.process.pid}) exited with code {code}; stopping the run "
                        f"(see {self._log(child)})")
            self.core_restarts += 1
            self._record_fault(child, code)
            what = "its newest snapshot" if child.role == "replay" else "its newest checkpoint"
            self.say(f"the {child.role} (pid {child.process.pid}) died with exit code {code}; restarting it from "
                     f"{what} ({self.core_restarts} of {self.cfg.run.max_core_restarts} restart(s))")
            self.children.spawn(child.role, self._restart_start(child), restarts=child.restarts + 1)
        return None

    def _sent_exact(self) -> int:
        """Transitions all actors have handed to ZeroMQ so far, from their counter files
        (reports can be half a second old); falls back to reports where there is no file."""
        total = sum(self.progress.retired_sent.values())
        for child in self.children:
            if child.role == "actor":
                exact = self._read_sent(child)
                total += exact if exact is not None else \
                    self.progress.actors.get(child.index, {}).get("transitions_sent", 0)
        return total

    def _read_sent(self, child: Child) -> Optional[int]:
        path = sent_file(self.children.place, child.index, child.start.incarnation)
        try:
            return int(np.fromfile(path, np.int64, count=1)[0]) if path else None
        except (OSError, IndexError):
            return None

    def _restart_start(self, child: Child) -> Start:
        ready = self.progress.ready[child.role]
        if child.role == "replay":
            return Start(ports=(port_of(ready["insert"]), port_of(ready["request"])), resume=True)
        return Start(ports=(port_of(ready["weights"]),), resume=True, epoch=child.start.epoch + 1)

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
        elapsed, tick = self.progress.elapsed, self.progress.snapshot()
        self.metrics.episodes(self.progress.take_episodes())
        self.metrics.write(tick, step=tick["actors/env_steps"], elapsed_s=elapsed)
        self.children.send("learner", self.progress.run_state())  # kept in its checkpoints
        self.say(self.progress.status_line(tick, elapsed))

    def run(self) -> tuple[int, str]:
        """Start, supervise until a stop reason, shut down. Returns (exit code, reason)."""
        failure, reason = None, None
        try:
            self._start()
            last_tick = time.monotonic()
            while True:
                self._drain_telemetry(0.02)
                failure = self._check_children()
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
        server drains its insert socket (rate limiter bypassed) and snapshots, and the learner
        writes its checkpoint; SIGKILL whatever is still alive after SHUTDOWN_GRACE_S."""
        for child in self.children:
            if child.process.exitcode is None:
                child.process.terminate()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for child in self.children:
            while child.process.exitcode is None and time.monotonic() < deadline:
                child.process.join(0.05)
                self._drain_telemetry(0.0)
        for child in self.children:
            if child.process.exitcode is None:
                self.say(f"{child.name} did not stop within {SHUTDOWN_GRACE_S:g} s; killing it")
                child.process.kill()
                child.process.join(1.0)
        self._drain_telemetry(0.1)
        if self.replay_client is not None:
            self.replay_client.close()

    def close(self) -> None:
        self.metrics.close()
        self.telemetry.close(0)

    def summary(self, reason: str) -> dict:
        p = self.progress
        best = max(p.evals, key=lambda e: e["eval_mean"]) if p.evals else None
        return {"algorithm": "dqn", "reason": reason, "env": self.cfg.run.env,
                "solved_threshold": self.solved_threshold, "solved": p.solved_after_s is not None,
                "solved_after_s": p.solved_after_s, "solved_wall_time": p.solved_wall,
                "started_wall_time": p.started_wall, "elapsed_s": p.elapsed, "env_steps": p.env_steps(),
                "transitions_sent": p.sent(), "sent_by_actor": {str(i): n for i, n in p.sent_by_actor().items()},
                "updates": p.learner.get("updates", 0), "best_eval": best, "evaluations": len(p.evals),
                "episodes": p.episodes, "actor_restarts": self.actor_restarts, "core_restarts": self.core_restarts,
                "faults": [{k: v for k, v in f.items() if not k.startswith("_")} for f in self.faults],
                "replay": p.replay, "learner": p.learner_summary,
                "actors": {str(i): a for i, a in sorted(p.actors.items())},
                "errors": p.errors, "run_dir": str(self.run_dir)}


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
