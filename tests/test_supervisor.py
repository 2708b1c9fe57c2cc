"""The local supervisor: a dead replay server or learner stops the run with a clear
message and a non-zero exit code; SIGTERM and SIGINT stop everything within 5 s; no
process is left behind in any case."""
import atexit
import json
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from qfleet.deploy.components import Placement
from qfleet.deploy.local.children import _process
from tests.conftest import python_env

pytestmark = pytest.mark.slow
# Each run here ends by the test's kill or signal once training is under way; the run's own
# budget is only a hang guard, far above what reaching training needs on a loaded machine.
HANG_GUARD_S = 600


def start(qfleet_cmd, run_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = qfleet_cmd + ["train", "--actors", "2", "--max-seconds", str(HANG_GUARD_S), "--run-dir", str(run_dir),
                        "--name", "run", "--set", "run.stop_when_solved=false", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=python_env(),
                            start_new_session=True)


def wait_training(run: Path, timeout: float = HANG_GUARD_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and any('"learner/updates": 0,' not in l and '"learner/updates"' in l
                                    for l in metrics.read_text().splitlines()):
            return json.loads((run / "processes.json").read_text())
        time.sleep(0.2)
    raise AssertionError("training never started")


def assert_all_gone(pids, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert not alive, f"processes left behind: {alive}"


@pytest.mark.parametrize("victim", ["replay", "learner"])
def test_dead_core_component_stops_the_run_when_restarts_are_spent(qfleet_cmd, tmp_path, victim):
    proc = start(qfleet_cmd, tmp_path, "--set", "run.max_core_restarts=0")
    try:
        pids = wait_training(tmp_path / "run")
        os.kill(pids[victim], signal.SIGKILL)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, output[-2000:]
    assert f"error: the {victim} (pid {pids[victim]}) exited with code -9; stopping the run" in output
    assert "Traceback" not in output
    assert_all_gone(pids.values())


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 130), (signal.SIGINT, 130)])
def test_signal_stops_everything_within_five_seconds(qfleet_cmd, tmp_path, sig, code):
    proc = start(qfleet_cmd, tmp_path)
    try:
        pids = wait_training(tmp_path / "run")
        sent = time.monotonic()
        # SIGINT as a terminal's Ctrl-C sends it: to the whole foreground process group.
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        output, _ = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, output[-2000:]
    assert took < 5.0, f"took {took:.1f} s"
    assert "stopped (interrupted)" in output
    assert_all_gone(pids.values(), timeout=0.5)
    assert (tmp_path / "run" / "checkpoint.npz").exists(), "the learner writes its checkpoint on the way out"


def test_dead_launcher_takes_its_components_down(qfleet_cmd, tmp_path):
    proc = start(qfleet_cmd, tmp_path)
    try:
        pids = wait_training(tmp_path / "run")
        proc.kill()  # SIGKILL: no chance to clean up; the children must notice on their own
        proc.wait(10)
        assert_all_gone(pids.values(), timeout=5.0)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _body_that_leaves_marks(stop, telemetry, marks: str) -> None:
    atexit.register(Path(marks, "teardown").write_text, "the interpreter's teardown ran")
    logging.getLogger("qfleet").info("body done")


def test_a_component_ends_at_once_when_its_work_is_done(tmp_path):
    """After its body returns and its sockets are closed, a component process ends without
    the interpreter's teardown (atexit hooks, torch's modules): that teardown took ~1 s of the
    launcher's 4.5 s shutdown grace on a busy 2-core machine, and finished learners were
    killed. What it logged is flushed first."""
    ctx = mp.get_context("spawn")
    place = Placement(telemetry="", run_dir=str(tmp_path))
    proc = ctx.Process(target=_process, args=("learner", 0, SimpleNamespace(shards=1), place,
                                              partial(_body_that_leaves_marks, marks=str(tmp_path))))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    assert "body done" in (tmp_path / "logs" / "learner.log").read_text()
    assert not (tmp_path / "teardown").exists()
