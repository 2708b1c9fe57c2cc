"""Faults in local mode: SIGKILL an actor, the replay server or the learner mid-run. Each
is restarted (the replay server from its newest snapshot, the learner from its newest
checkpoint), the run completes, and the transitions lost are counted and bounded."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from qfleet.common.sockets import STREAM_BUFFER_BYTES
from tests.conftest import python_env

pytestmark = pytest.mark.slow

CARTPOLE_TRANSITION_BYTES = 44
CLIENT_HWM = 4                      # actor insert socket (deploy/components.py)
MESSAGE_TRANSITIONS = 32 * 4        # envs_per_actor x flush_every_steps (defaults)
# What one actor can have counted as sent but not yet handed to the server: the message it
# is sending (counted first), its queue, and the kernel buffers of the connection on both
# ends (Linux doubles SO_SNDBUF/SO_RCVBUF).
IN_FLIGHT_PER_ACTOR = (1 + CLIENT_HWM) * MESSAGE_TRANSITIONS + 2 * 2 * STREAM_BUFFER_BYTES // CARTPOLE_TRANSITION_BYTES


UPDATES = 3_000    # the run's budget: it ends when the (restarted) learner has made this many
KILL_AT = 300      # updates the run has reached (metrics.jsonl) when the victim is killed
HANG_GUARD_S = 600


def updates_so_far(run: Path) -> int:
    """The newest learner update count in the run's metrics (0 before the first)."""
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return 0
    counts = [0]
    for line in metrics.read_text().splitlines():
        try:
            counts.append(json.loads(line).get("learner/updates") or 0)
        except json.JSONDecodeError:  # a line being written
            pass
    return max(counts)


def run_with_fault(qfleet_cmd, tmp_path: Path, victim: str) -> tuple[dict, str, int]:
    cmd = qfleet_cmd + ["train", "--actors", "2", "--max-seconds", str(HANG_GUARD_S), "--run-dir", str(tmp_path),
                        "--name", "run", "--set", "run.stop_when_solved=false", "--set", f"run.max_updates={UPDATES}",
                        "--set", "replay.snapshot_every_s=1", "--set", "learner.checkpoint_every_s=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=python_env())
    run = tmp_path / "run"
    try:
        # Kill once a snapshot and a checkpoint exist and training has gone on since (data
        # piled up after the snapshot, so there is something to lose), long before the budget.
        deadline = time.monotonic() + HANG_GUARD_S
        ready = False
        while time.monotonic() < deadline and not ready and proc.poll() is None:
            time.sleep(0.2)
            ready = (run / "checkpoint.npz").exists() and any((run / "replay").glob("replay-*.npz")) \
                and updates_so_far(run) >= KILL_AT if (run / "replay").exists() else False
        assert ready, "no snapshot, checkpoint and training appeared"
        pid = json.loads((run / "processes.json").read_text())[victim]
        os.kill(pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=HANG_GUARD_S + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reason"] == "update budget reached" and summary["updates"] >= UPDATES, output[-3000:]
    return summary, output, pid


def lost_transitions(summary: dict) -> dict[str, int]:
    replay = summary["replay"]
    return {i: sent - replay.get(f"stored_by_actor.{i}", 0) for i, sent in summary["sent_by_actor"].items()}


def test_sigkill_actor(qfleet_cmd, tmp_path):
    summary, output, pid = run_with_fault(qfleet_cmd, tmp_path, "actor-0")
    fault = summary["faults"][0]
    assert fault["name"] == "actor-0" and fault["pid"] == pid and fault["exit_code"] == -9
    assert fault["recovered_after_s"] is not None
    lost = lost_transitions(summary)
    print(f"\nactor kill: lost {lost} transitions, recovered in {fault['recovered_after_s']} s")
    assert 0 <= lost["0"] <= IN_FLIGHT_PER_ACTOR
    assert lost["1"] == 0, "the other actor loses nothing"


def test_sigkill_replay_server(qfleet_cmd, tmp_path):
    summary, output, pid = run_with_fault(qfleet_cmd, tmp_path, "replay")
    fault = summary["faults"][0]
    assert fault["name"] == "replay" and fault["exit_code"] == -9 and fault["restored_from"]
    assert "restarting it from its newest snapshot" in output and "replay is back after" in output
    lost = sum(lost_transitions(summary).values())
    # Lost: what was stored after the snapshot plus what was in flight; never more than what
    # the actors had sent by the time the server was back, minus what the snapshot restored.
    bound = fault["sent_at_recovery"] - fault["restored_stored"]
    print(f"\nreplay kill: lost {lost} transitions (bound {bound}), recovered in {fault['recovered_after_s']} s, "
          f"restored {fault['restored_transitions']} from {Path(fault['restored_from']).name}")
    assert 0 <= lost <= bound
    assert summary["replay"]["stored"] > fault["restored_stored"], "storing resumed after the restart"
    assert summary["updates"] > 0


def test_sigkill_learner(qfleet_cmd, tmp_path):
    summary, output, pid = run_with_fault(qfleet_cmd, tmp_path, "learner")
    fault = summary["faults"][0]
    assert fault["name"] == "learner" and fault["exit_code"] == -9 and fault["recovered_after_s"] is not None
    assert "restarting it from its newest checkpoint" in output
    # Actors took the restarted learner's weights (epoch 1), whatever their version numbers.
    assert all(a["weights_epoch"] == 1 for a in summary["actors"].values()), summary["actors"]
    assert summary["learner"]["updates"] > 0
    lost = sum(lost_transitions(summary).values())
    print(f"\nlearner kill: lost {lost} transitions, recovered in {fault['recovered_after_s']} s")
    assert lost == 0, "the replay server kept everything"
