"""Bad input to `qfleet train`: refused with one clear line before any process starts
(exit code 2, no traceback); a corrupt replay snapshot falls back to the previous one."""
import subprocess

import pytest

from tests.conftest import python_env

HANG_GUARD_S = 600  # runs that start end on an update budget; this only stops a hung one
FIRST_UPDATES = 500  # the finished run's budget; a resume of it continues to RESUMED_UPDATES
RESUMED_UPDATES = 1_000


def train(qfleet_cmd, *args):
    return subprocess.run(qfleet_cmd + ["train", "--max-seconds", str(HANG_GUARD_S), *args], capture_output=True,
                          text=True, env=python_env(), timeout=HANG_GUARD_S + 60)


@pytest.mark.parametrize("args,message", [
    (["--set", "learner.lr=0"], "learner.lr = 0.0 is not allowed; expected > 0 and <= 1"),
    (["--actors", "0"], "run.actors = 0 is not allowed; expected >= 1"),
    (["--set", "replay.min_size_to_sample=900000"], "exceeds replay.capacity"),
    (["--set", "replay.samples_per_insert=8", "--set", "replay.error_buffer=10"], "deadlock"),
    (["--env", "NoSuchEnv-v9"], "unknown environment 'NoSuchEnv-v9'"),
    (["--env", "Pendulum-v1"], "needs a Discrete one"),
    (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["--resume", "no/such/run"], "no config.yaml there"),
])
def test_refused_before_anything_starts(qfleet_cmd, tmp_path, args, message):
    out = train(qfleet_cmd, "--run-dir", str(tmp_path), *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir()), "no run directory is created for a refused run"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, qfleet_cmd_module):
    root = tmp_path_factory.mktemp("runs")
    out = subprocess.run(qfleet_cmd_module + ["train", "--max-seconds", str(HANG_GUARD_S), "--run-dir", str(root),
                                              "--name", "r", "--set", "run.stop_when_solved=false",
                                              "--set", f"run.max_updates={FIRST_UPDATES}"],
                         capture_output=True, text=True, env=python_env(), timeout=HANG_GUARD_S + 60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "stopped (update budget reached)" in out.stdout, out.stdout[-3000:]
    return root / "r"


@pytest.fixture(scope="module")
def qfleet_cmd_module():
    import sys
    return [sys.executable, "-m", "qfleet"]


def copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_missing_or_corrupt_checkpoint(qfleet_cmd, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "a")
    (run / "checkpoint.npz").unlink()
    out = train(qfleet_cmd, "--resume", str(run))
    assert out.returncode == 2 and "checkpoint.npz does not exist" in out.stderr and "Traceback" not in out.stderr
    run = copy_run(finished_run, tmp_path / "b")
    (run / "checkpoint.npz").write_bytes(b"garbage")
    out = train(qfleet_cmd, "--resume", str(run))
    assert out.returncode == 2 and "is unreadable" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_incompatible_checkpoint_says_what_differs(qfleet_cmd, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "c")
    out = train(qfleet_cmd, "--resume", str(run), "--set", "learner.hidden=[64]")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "hidden: checkpoint [128, 128], this run [64]" in out.stderr
    out = train(qfleet_cmd, "--resume", str(run), "--set", "replay.capacity=60000")
    assert out.returncode == 2 and "replay.capacity = 50000, this run has 60000" in out.stderr


@pytest.mark.slow
def test_corrupt_newest_snapshot_falls_back_to_the_previous_one(qfleet_cmd, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "d")
    snapshots = sorted((run / "replay").glob("replay-*.npz"))
    assert snapshots, "a finished run leaves a replay snapshot"
    older = run / "replay" / "replay-000000000000001.npz"
    older.write_bytes(snapshots[-1].read_bytes())          # a valid, older snapshot
    snapshots[-1].write_bytes(snapshots[-1].read_bytes()[:1000])  # the newest is truncated
    out = train(qfleet_cmd, "--resume", str(run), "--set", "run.stop_when_solved=false",
                "--set", f"run.max_updates={RESUMED_UPDATES}")  # the learner's count continues from the checkpoint
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming" in out.stdout and "stopped (update budget reached)" in out.stdout, out.stdout[-3000:]
    log = (run / "logs" / "replay.log").read_text()
    assert "unreadable" in log and "replay restored from" in log and older.name in log
