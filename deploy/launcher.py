"""What every launcher does, wherever the components run: take their reports on one
telemetry socket, print the status line, write metrics and episodes, keep checkpoints the
learner ships, record faults, decide when to stop, and sum the run up.

Subclasses (`deploy.local.launcher.LocalLauncher`, `deploy.ray.backend.RayLauncher`) start the
components, check on them, send them control messages and stop them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

import zmq

from qfleet.common import messages as m
from qfleet.common.codec import decode
from qfleet.common.config import QfleetConfig
from qfleet.common.errors import CodecError, LaunchError
from qfleet.common.metrics import MetricsWriter
from qfleet.common.sockets import CurveKeys, bind, make_socket
from qfleet.deploy.components import Wiring, part_name
from qfleet.deploy.plan import RunPlan
from qfleet.deploy.processes import StopFlag
from qfleet.deploy.progress import Progress
from qfleet.deploy.replay_stats import ReplayShards

STARTUP_TIMEOUT_S = 120.0
MAX_REPORTS_PER_DRAIN = 500
SHUTDOWN_GRACE_S = 4.5  # within the 5 s a user waits after Ctrl-C; each step ends as soon as its part is done


class Launcher:
    def __init__(self, cfg: QfleetConfig, plan: RunPlan, run_dir: Path, stop: StopFlag,
                 say: Callable[[str], None] = print, resume_state: Optional[dict] = None,
                 bind_host: str = "127.0.0.1", keys: Optional[CurveKeys] = None):
        self.cfg, self.plan, self.run_dir = cfg, plan, run_dir
        self.stop, self.say = stop, say
        self.resume_state = resume_state  # the checkpoint's run_state when resuming, else None
        self.keys = keys
        self.telemetry = make_socket(zmq.Context.instance(), zmq.PULL, hwm=10_000, server=True, keys=keys,
                                     max_message_bytes=16 << 20)
        self.telemetry_endpoint = bind(self.telemetry, bind_host)
        self.progress = Progress(cfg.run.actors, resume_state or {}, shards=plan.shards)
        self.actor_restarts = 0
        self.core_restarts = 0
        self.faults: list[dict] = []
        self.metrics = MetricsWriter(run_dir=run_dir, started_wall=self.progress.started_wall,
                                     resumed_at_s=self.progress.before_s)
        self._files: dict[str, object] = {}
        self.replay_shards: Optional[ReplayShards] = None
        self.relay_restarts = 0

    # -- to be provided by a backend ---------------------------------------------------------
    def _start(self) -> None:
        raise NotImplementedError

    def _check_children(self) -> Optional[str]:
        """Restart what may be restarted; a failure message when the run must stop."""
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    def _send_run_state(self, state: dict) -> None:
        raise NotImplementedError

    def _learner_done(self) -> bool:
        """The learner finished its update budget."""
        raise NotImplementedError

    # -- the replay servers' own counters ------------------------------------------------------
    def _connect_replay(self, request_endpoints: list[str]) -> None:
        self.replay_shards = ReplayShards(self.plan, request_endpoints, self.keys)

    def _poll_replay(self) -> None:
        """Refresh self.progress.replay, until every shard's final count has arrived."""
        if self.replay_shards is None or self.progress.replay_final:
            return
        self.progress.take_replay(self.replay_shards.poll(self.progress.replay_finals))

    def _name(self, role: str, index: int = 0) -> str:
        return part_name(role, index, self.plan.shards)

    def _shard_endpoints(self, kind: str) -> list[str]:
        """Every shard's `kind` ('insert' or 'request') endpoint from its ready report, in shard order."""
        return [self.progress.ready[self._name("replay", i)][kind] for i in range(self.plan.shards)]

    # -- reports -----------------------------------------------------------------------------
    def _drain_telemetry(self, timeout_s: float) -> bool:
        """Take waiting reports (at most MAX_REPORTS_PER_DRAIN, so supervision and status
        ticks go on under a flood of them). True when more may be waiting."""
        if not self.telemetry.poll(int(timeout_s * 1000)):
            return False
        for _ in range(MAX_REPORTS_PER_DRAIN):
            try:
                frames = self.telemetry.recv_multipart(copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                return False
            try:
                report = m.unpack(m.Report, decode(frames, {m.REPORT: m.REPORT_SCHEMA}, max_bytes=16 << 20))
            except CodecError:
                continue
            event = report.values.get("event")
            if event == "file":
                self._take_file_chunk(report)
                continue
            self.progress.take(report)
            if event == "eval":
                self.metrics.write(Progress.eval_metrics(report.values), step=self.progress.env_steps(),
                                   elapsed_s=self.progress.run_s)
            self._note_recovery(report)
        return True

    def _drain_all_telemetry(self, timeout_s: float) -> None:
        """After the components stopped: every report still waiting, final counts included."""
        while self._drain_telemetry(timeout_s):
            pass

    def _take_file_chunk(self, report: m.Report) -> None:
        """A file a component ships in chunks (the learner's checkpoint when it runs on
        another machine): written to <name>.part, renamed when complete."""
        v = report.values
        name = Path(str(v.get("name", ""))).name
        if not name or report.data is None:
            return
        part = self.run_dir / (name + ".part")
        if v.get("offset") == 0:
            self._files[name] = open(part, "wb")
        handle = self._files.get(name)
        if handle is None:
            return
        handle.write(report.data.tobytes())
        if v.get("offset", 0) + len(report.data) >= v.get("total", 0):
            handle.close()
            del self._files[name]
            part.replace(self.run_dir / name)

    # -- faults ------------------------------------------------------------------------------
    def _record_fault(self, name: str, role: str, pid: int, code: object, sent: int) -> None:
        self.faults.append({"name": name, "role": role, "pid": pid, "exit_code": code,
                            "at_s": round(self.progress.elapsed, 3), "sent_at_fault": sent,
                            "recovered_after_s": None, "_t": time.monotonic()})

    def _sent_exact(self) -> int:
        return self.progress.sent()

    def _note_recovery(self, report: m.Report) -> None:
        """Close the open fault of this component: a ready report (replay, learner) or the
        first report of a restarted actor (told from its predecessor's by the pid)."""
        name = self._name(report.role, report.index)
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

    # -- the run -----------------------------------------------------------------------------
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
        if run.max_evaluations and p.evaluations >= run.max_evaluations:
            return "evaluation budget reached"
        if self._learner_done():
            return "update budget reached"
        return None

    def _tick(self, final: bool = False) -> None:
        self._poll_replay()
        elapsed, tick = self.progress.run_s, self.progress.snapshot()
        self.metrics.episodes(self.progress.take_episodes())
        self.metrics.write(tick, step=tick["actors/env_steps"], elapsed_s=elapsed)
        self.metrics.lags(self.progress.take_lags())
        if not final:  # after shutdown there is no learner to tell
            self._send_run_state(self.progress.run_state())  # kept in the learner's checkpoints
        self.say(self.progress.status_line(tick, elapsed))

    def _write_endpoints(self, wiring: Wiring) -> None:
        """Where the components listen (addresses only, never keys), for operators and tests:
        one replay endpoint of each kind for one shard, a list in shard order for several."""
        inserts, requests = list(wiring.replay_inserts), list(wiring.replay_requests)
        one = len(inserts) == 1
        (self.run_dir / "endpoints.json").write_text(json.dumps(
            {"replay_insert": inserts[0] if one else inserts, "replay_request": requests[0] if one else requests,
             "weights": wiring.weights, "telemetry": self.telemetry_endpoint, "curve": self.keys is not None,
             **({"relays": dict(wiring.relays)} if wiring.relays else {})}, indent=1))

    def _wait_ready(self, names: set, dead: Callable[[], Optional[str]]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not names <= set(self.progress.ready):
            if self.stop.is_set():
                return
            failure = dead()
            if failure:
                raise LaunchError(failure)
            if time.monotonic() > deadline:
                raise LaunchError(f"components not ready after {STARTUP_TIMEOUT_S:g} s: "
                                   f"ready {sorted(self.progress.ready)}")
            self._drain_telemetry(0.05)

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
        except LaunchError as exc:
            failure, reason = str(exc), "failed"
        finally:
            self._shutdown()
        self._tick(final=True)
        if failure:
            self.say(f"error: {failure}")
            return 1, reason
        return (130 if reason == "interrupted" else 0), reason

    def close(self) -> None:
        if self.replay_shards is not None:
            self.replay_shards.close()
        self.metrics.close()
        self.telemetry.close(0)

    def summary(self, reason: str) -> dict:
        p = self.progress
        return {"algorithm": "dqn", "reason": reason, "env": self.cfg.run.env, "backend": self.cfg.run.backend,
                "solved_threshold": self.plan.solved_threshold,
                "solved": p.solved_after_s is not None, "solved_after_s": p.solved_after_s,
                "solved_wall_time": p.solved_wall, "started_wall_time": p.started_wall, "elapsed_s": p.elapsed,
                "run_elapsed_s": p.run_s,
                "env_steps": p.env_steps(), "transitions_sent": p.sent(),
                "sent_by_actor": {str(i): n for i, n in p.sent_by_actor().items()},
                "updates": p.learner.get("updates", 0), "best_eval": p.best_eval, "evaluations": p.run_evaluations,
                "episodes": p.episodes, "actor_restarts": self.actor_restarts, "core_restarts": self.core_restarts,
                "faults": [{k: v for k, v in f.items() if not k.startswith("_")} for f in self.faults],
                "replay": p.replay, "learner": p.learner_summary,
                **({"relay_restarts": self.relay_restarts, "relays": {str(i): r for i, r in sorted(p.relays.items())}}
                   if self.cfg.relay.enabled else {}),
                "actors": {str(i): a for i, a in sorted(p.actors.items())},
                "errors": p.errors, "run_dir": str(self.run_dir)}

