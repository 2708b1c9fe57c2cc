"""`ray job submit --working-dir . -- python -m qfleet train --backend ray ...` against a
Ray head started with the `ray` CLI: the job runs qfleet on the cluster and leaves the same
run directory as a local run."""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import python_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    # Its own session directory (short: Ray's unix socket paths must fit in 107 bytes).
    temp = tempfile.mkdtemp(prefix="qfray-", dir="/tmp")
    port, dash = free_port(), free_port()
    # Ray 2.60 authenticates local clusters with a token; head, driver and `ray job` share one.
    env = {**python_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # as on a cluster node, this environment's bin first on PATH (the cluster YAMLs do the same)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    start = subprocess.run([ray, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
                            "--include-dashboard=true", f"--temp-dir={temp}", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    yield ray, f"http://127.0.0.1:{dash}", env
    subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
    shutil.rmtree(temp, ignore_errors=True)


def test_training_as_a_ray_job(ray_head, tmp_path):
    ray, address, env = ray_head
    run_dir = tmp_path / "runs"
    job = subprocess.run([ray, "job", "submit", "--address", address, "--working-dir", str(ROOT),
                          "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "runs", "bench-results"]}),
                          "--", "python", "-m", "qfleet", "train", "--backend", "ray", "--seed", "0",
                          # stops when solved, under an update cap many times what solving takes;
                          # --max-seconds is only a hang guard
                          "--max-seconds", "600", "--set", "run.max_updates=30000",
                          "--run-dir", str(run_dir), "--name", "job"],
                         capture_output=True, text=True, env=env, timeout=700)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "solved CartPole-v1 in" in job.stdout
    run = run_dir / "job"
    for name in ("config.yaml", "metrics.jsonl", "episodes.csv", "checkpoint.npz", "summary.json",
                 "processes.json", "endpoints.json"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["solved"] and summary["reason"] == "solved" and summary["backend"] == "ray"
