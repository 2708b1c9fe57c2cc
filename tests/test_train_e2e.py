"""End to end: `qfleet train` in local mode solves CartPole-v1, accounts for every
transition, leaves a checkpoint that plays greedily, and survives a killed actor."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from qfleet.common.netspec import NetSpec, NumpyQNet
from qfleet.learner.checkpoint import load_checkpoint
from qfleet.learner.evaluation import evaluate
from tests.conftest import python_env

pytestmark = pytest.mark.slow
# The solving runs stop when solved; the update cap is many times what solving takes
# (a few thousand updates), so a run that cannot solve fails on its update count, not on
# the machine's speed. --max-seconds is only a hang guard.
SOLVE_UPDATE_CAP = 30_000
HANG_GUARD_S = 600


def train(qfleet_cmd, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = qfleet_cmd + ["train", "--actors", "2", "--seed", "0", "--max-seconds", str(HANG_GUARD_S),
                        "--set", f"run.max_updates={SOLVE_UPDATE_CAP}", "--run-dir", str(run_dir), "--name", "run",
                        *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=python_env(), timeout=HANG_GUARD_S + 60)


def test_train_solves_cartpole_and_accounts_for_every_transition(qfleet_cmd, tmp_path):
    out = train(qfleet_cmd, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["solved"] and summary["reason"] == "solved", summary
    assert summary["best_eval"]["eval_mean"] >= 475 and summary["best_eval"]["eval_episodes"] == 100
    assert "solved CartPole-v1 in" in out.stdout

    # Every actor's transitions reached the replay server: sent = stored + rejected.
    replay = summary["replay"]
    assert replay["rejected"] == 0
    for index, actor in summary["actors"].items():
        assert actor["transitions_sent"] > 0
        assert replay[f"stored_by_actor.{index}"] == actor["transitions_sent"], (index, actor, replay)
    assert replay["stored"] == sum(a["transitions_sent"] for a in summary["actors"].values())

    # The run directory holds the config, metrics and a checkpoint that plays greedily; the
    # threshold is derived from the environment, not written into the config.
    assert summary["solved_threshold"] == 475.0 and "solved_threshold: null" in (run / "config.yaml").read_text()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert any('"eval/return_mean"' in line for line in lines)
    arrays, meta = load_checkpoint(run / "checkpoint.npz")
    spec = NetSpec(**{**meta["net_spec"], "obs_shape": tuple(meta["net_spec"]["obs_shape"]),
                      "hidden": tuple(meta["net_spec"]["hidden"])})
    policy = NumpyQNet(spec)
    policy.load({k[len("policy/"):]: v for k, v in arrays.items() if k.startswith("policy/")})
    result = evaluate(policy, "CartPole-v1", episodes=100, seed=12345)
    assert result.mean >= 0.9 * 475, result.mean


def test_killed_actor_is_restarted_and_run_completes(qfleet_cmd, tmp_path):
    cmd = qfleet_cmd + ["train", "--actors", "2", "--seed", "1", "--max-seconds", str(HANG_GUARD_S),
                        "--set", f"run.max_updates={SOLVE_UPDATE_CAP}", "--run-dir", str(tmp_path), "--name", "run"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=python_env())
    run = tmp_path / "run"
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        victim = None
        while time.monotonic() < deadline and victim is None and proc.poll() is None:
            time.sleep(0.2)
            metrics = run / "metrics.jsonl"
            if metrics.exists() and any('"learner/updates": ' in l and '"learner/updates": 0,' not in l
                                        for l in metrics.read_text().splitlines()):
                victim = json.loads((run / "processes.json").read_text())["actor-0"]
        assert victim is not None, "the run never started training"
        os.kill(victim, signal.SIGKILL)
        output, _ = proc.communicate(timeout=HANG_GUARD_S + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert "actor-0 (pid %d) died with exit code -9; restarting it" % victim in output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["actor_restarts"] >= 1 and summary["solved"] and summary["reason"] == "solved", summary
    new_pid = json.loads((run / "processes.json").read_text())["actor-0"]
    assert new_pid != victim
    assert not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == psutil.STATUS_ZOMBIE


def test_resume_derives_sizes_for_its_own_settings(qfleet_cmd, tmp_path):
    """config.yaml keeps only what the user set: a resumed run with more batches per request
    derives its own rate-limiter error buffer (a saved one, derived for the first run's
    sample batch, made the resume refuse to start with a deadlock error)."""
    base = qfleet_cmd + ["train", "--actors", "1", "--seed", "0", "--run-dir", str(tmp_path), "--name", "run",
                         "--set", "run.stop_when_solved=false", "--no-plot"]
    first = subprocess.run(base + ["--set", "run.max_updates=40"], capture_output=True, text=True,
                           env=python_env(), timeout=240)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = tmp_path / "run"
    saved = (run / "config.yaml").read_text()
    assert "error_buffer: 0.0" in saved and "solved_threshold: null" in saved
    second = subprocess.run(base + ["--resume", str(run), "--set", "learner.batches_per_request=8",
                                    "--set", "run.max_updates=80"], capture_output=True, text=True,
                            env=python_env(), timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reason"] == "update budget reached" and summary["updates"] >= 80, summary
    assert summary["solved_threshold"] == 475.0
    assert "batches_per_request: 8" in (run / "config.yaml").read_text()
