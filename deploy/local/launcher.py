"""Local mode: the replay server (or replay.shards of them), the learner, N actors and,
with relay.enabled, one weights relay, as separate processes on 127.0.0.1 (spawned, not
forked), wired together, supervised, and stopped cleanly.

Connections (all ZeroMQ, ports chosen by the OS):
    actor i  --insert-->           replay shard i % S  (endpoints from the shards' ready reports)
    learner  --sample/priorities-> every replay shard
    learner  --weights (PUB)-->    actors          (endpoint from the learner's ready report)
    learner  --weights-->  relay  --weights-->  actors   (relay.enabled; the learner is the actors' fallback)
    everyone --reports-->          this launcher   (telemetry PULL, bound before anything starts)

Supervision: a dead actor or relay is restarted at once (a relay on its port); a dead
replay shard is restarted on the same ports from its own newest snapshot (the learner
samples the other shards meanwhile) and a dead learner from its newest checkpoint (peers
reconnect by themselves), up to run.max_core_restarts times in all.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qfleet.common.config import QfleetConfig
from qfleet.common.errors import LaunchError, QfleetTimeout
from qfleet.deploy.components import Placement, Start, Wiring, sent_file
from qfleet.deploy.launcher import SHUTDOWN_GRACE_S, Launcher
from qfleet.deploy.local.children import STOPPING_SIGNAL, Child, Children, port_of
from qfleet.deploy.plan import RunPlan
from qfleet.deploy.processes import StopFlag

EXTERNAL_REPLAY_TIMEOUT_S = 5.0  # a replay server started on its own must answer its first stats request within this


class LocalLauncher(Launcher):
    def __init__(self, cfg: QfleetConfig, plan: RunPlan, run_dir: Path, stop: StopFlag,
                 say: Callable[[str], None] = print, resume_state: Optional[dict] = None):
        super().__init__(cfg, plan, run_dir, stop, say, resume_state)
        place = Placement(telemetry=self.telemetry_endpoint, host="127.0.0.1", run_dir=str(run_dir))
        self.children = Children(cfg, plan, place, run_dir)

    # -- starting ------------------------------------------------------------------------
    def _start(self) -> None:
        resume = self.resume_state is not None
        external = self.plan.replay_external
        shards = range(self.plan.shards)
        if external is not None:  # a replay server running on its own: checked, not started or supervised
            self._connect_replay([external[1]])
            self._check_external_replay(*external)
        else:
            for i in shards:
                self.children.spawn("replay", Start(resume=resume), index=i)
        self.children.spawn("learner", Start(resume=resume))
        for i in range(self.cfg.run.actors):
            self.children.spawn("actor", Start(schedule=self.progress.schedule_for(i)), index=i)
        replays = set() if external else {self._name("replay", i) for i in shards}
        self._wait_ready({"learner"} | replays, self._failed_to_start)
        inserts, requests = ((external[0],), (external[1],)) if external else \
            (tuple(self._shard_endpoints("insert")), tuple(self._shard_endpoints("request")))
        weights = self.progress.ready["learner"]["weights"]
        wiring = Wiring(inserts, requests, weights, self._start_relay(weights) if self.cfg.relay.enabled else ())
        self.children.wire(wiring)
        self._write_endpoints(wiring)
        if external is None:
            self._connect_replay(list(requests))

    def _start_relay(self, weights: str) -> tuple:
        """One relay for every actor of this machine, before the actors are wired, so they
        subscribe to it from their first weights (the learner is their fallback)."""
        relay = self.children.spawn("relay", Start())
        self.children.send(relay.name, Wiring(weights=weights))
        self._wait_ready({relay.name}, self._failed_to_start)
        return (("", self.progress.ready[relay.name]["relay"]),)

    def _check_external_replay(self, insert: str, request: str) -> None:
        """A replay server this run did not start must answer and fit the run (LaunchError if not)."""
        env, started_by = self.plan.env, "start one with `qfleet replay-server` (README: The replay server on its own)"
        try:
            stats = self.replay_shards.first().stats(timeout=EXTERNAL_REPLAY_TIMEOUT_S)
        except QfleetTimeout:
            raise LaunchError(f"replay.external: no replay server answers at {request} within "
                              f"{EXTERNAL_REPLAY_TIMEOUT_S:g} s; {started_by}") from None
        shape = "x".join(map(str, env.obs_shape))
        if (stats.get("obs_shape"), stats.get("obs_dtype")) != (shape, env.obs_dtype.name):
            raise LaunchError(f"the replay server at {request} stores observations {stats.get('obs_shape')} "
                              f"{stats.get('obs_dtype')}, this run's {env.env_id} has {shape} {env.obs_dtype.name}; "
                              "start it with the same --config/--env as the run")
        if stats.get("max_sample_batch", 0) < self.plan.sample_batch:
            raise LaunchError(f"the replay server at {request} serves samples of up to {stats.get('max_sample_batch')} "
                              f"transitions; this run asks for {self.plan.sample_batch} (learner.batch_size x "
                              "learner.batches_per_request): start it with the run's learner settings")
        self.say(f"qfleet: using the replay server at {insert} / {request} ({stats.get('size', 0):,} transitions stored)")

    def _failed_to_start(self) -> Optional[str]:
        for child in self.children:
            if child.role != "actor" and child.process.exitcode is not None:
                return (f"the {child.role} failed to start (exit code {child.process.exitcode}): "
                        f"{'; '.join(self.progress.errors) or 'see ' + self._log(child)}")
        return None

    def _log(self, child: Child) -> str:
        return str(self.run_dir / "logs" / f"{child.name}.log")

    # -- supervising -----------------------------------------------------------------------
    def _check_children(self) -> Optional[str]:
        for child in self.children:
            code = child.process.exitcode
            if code is None or (child.role == "learner" and code == 0):  # 0: update budget done
                continue
            if child.role == "relay":
                failure = self._restart_relay(child, code)
                if failure:
                    return failure
                continue
            if child.role == "actor":
                failure = self._count_restart(child, code, "actor_restarts", "{n} restart(s) so far")
                if failure:
                    return failure
                self.progress.retire_actor(child.index, self._read_sent(child))
                self.children.spawn("actor", Start(incarnation=child.restarts + 1,
                                                   schedule=self.progress.schedule_for(child.index)),
                                    index=child.index, restarts=child.restarts + 1)
                continue
            if self.core_restarts >= self.cfg.run.max_core_restarts:
                return (f"the {child.role} (pid {child.process.pid}) exited with code {code}; stopping the run "
                        f"(see {self._log(child)})")
            self.core_restarts += 1
            self._record_fault(child.name, child.role, child.process.pid, code, self._sent_exact())
            what = "its newest snapshot" if child.role == "replay" else "its newest checkpoint"
            self.say(f"the {child.name} (pid {child.process.pid}) died with exit code {code}; restarting it from "
                     f"{what} ({self.core_restarts} of {self.cfg.run.max_core_restarts} restart(s))")
            self.children.spawn(child.role, self._restart_start(child), index=child.index, restarts=child.restarts + 1)
        return None

    def _count_restart(self, child: Child, code: object, counter: str, note: str) -> Optional[str]:
        """Count, record and announce the restart of an actor or a relay (each kind against
        run.max_actor_restarts); the failure message when the limit is spent."""
        limit = self.cfg.run.max_actor_restarts
        if getattr(self, counter) >= limit:
            return f"{child.name} died (exit code {code}) and the restart limit ({limit}) is spent"
        setattr(self, counter, getattr(self, counter) + 1)
        self._record_fault(child.name, child.role, child.process.pid, code, self._sent_exact())
        self.say(f"{child.name} (pid {child.process.pid}) died with exit code {code}; restarting it "
                 f"({note.format(n=getattr(self, counter))})")
        return None

    def _restart_relay(self, child: Child, code: object) -> Optional[str]:
        """A dead relay is restarted like an actor, on its port (its actors reconnect by
        themselves and use the learner meanwhile)."""
        failure = self._count_restart(child, code, "relay_restarts", "its actors use the learner's weights meanwhile")
        if failure:
            return failure
        port = port_of(self.progress.ready[child.name]["relay"])
        self.children.spawn("relay", Start(ports=(port,), incarnation=child.restarts + 1), index=child.index,
                            restarts=child.restarts + 1)
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
        ready = self.progress.ready[child.name]
        if child.role == "replay":
            return Start(ports=(port_of(ready["insert"]), port_of(ready["request"])), resume=True)
        return Start(ports=(port_of(ready["weights"]),), resume=True, epoch=child.start.epoch + 1)

    def _send_run_state(self, state: dict) -> None:
        self.children.send("learner", state)

    def _learner_done(self) -> bool:
        learner = self.children.get("learner")
        return learner is not None and learner.process.exitcode == 0

    # -- stopping ------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Tell the replay servers the run is stopping (it stores every insert from then on),
        stop the actors (they hand over what is pending) and wait for them; then stop the
        replay server (it drains its socket and snapshots) and the learner, which gets the
        actors' final counts for its checkpoint. Kill what lingers after SHUTDOWN_GRACE_S."""
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        replays, learner = [c for c in self.children if c.role == "replay"], self.children.get("learner")
        for replay in replays:
            if replay.process.exitcode is None:
                os.kill(replay.process.pid, STOPPING_SIGNAL)  # from now on it stores every insert
        actors = [c for c in self.children if c.role == "actor"]
        self._terminate(actors, time.monotonic() + 0.6 * SHUTDOWN_GRACE_S, wait_for=actors)
        if learner is not None:
            self.children.send("learner", self.progress.run_state())
        rest = replays + [c for c in self.children if c.role in ("learner", "relay")]
        self._terminate(rest, deadline, wait_for=rest)
        self._terminate([], deadline, wait_for=list(self.children))
        for child in self.children:
            if child.process.exitcode is None:
                self.say(f"{child.name} did not stop within {SHUTDOWN_GRACE_S:g} s; killing it")
                child.process.kill()
                child.process.join(1.0)
        self._drain_all_telemetry(0.1)

    def _terminate(self, targets: list[Child], until: float, wait_for: list[Child]) -> None:
        """SIGTERM `targets`, then wait (reading reports) until `wait_for` exited or `until`."""
        for child in targets:
            if child.process.exitcode is None:
                child.process.terminate()
        for child in wait_for:
            while child.process.exitcode is None and time.monotonic() < until:
                child.process.join(0.05)
                self._drain_telemetry(0.0)
        self._drain_telemetry(0.0)
