"""`qfleet train --replay HOST:INSERT_PORT,REQUEST_PORT` against a replay server started on
its own with `qfleet replay-server`: the learner's sample requests (batch_size x
batches_per_request) fit the standalone server, the run trains on it and leaves its data
there; a server that is absent or does not fit the run is refused with one line."""
import json
import signal
import subprocess

import pytest

from qfleet.replay_server.client import ReplayClient
from tests.conftest import python_env

pytestmark = pytest.mark.slow


@pytest.fixture
def replay_server(qfleet_cmd):
    proc = subprocess.Popen(qfleet_cmd + ["replay-server"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=python_env())
    try:
        endpoints = json.loads(proc.stdout.readline())
        yield endpoints
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()[-2000:]


def train(qfleet_cmd, tmp_path, *args):
    return subprocess.run(qfleet_cmd + ["train", "--run-dir", str(tmp_path), "--no-plot", "--max-seconds", "600",
                                        *args], capture_output=True, text=True, env=python_env(), timeout=660)


def test_train_uses_a_replay_server_started_on_its_own(qfleet_cmd, tmp_path, replay_server):
    out = train(qfleet_cmd, tmp_path, "--replay", replay_server["replay"], "--name", "ext",
                "--set", "run.max_updates=200", "--set", "run.stop_when_solved=false")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "ext" / "summary.json").read_text())
    assert summary["updates"] >= 200 and summary["reason"] == "update budget reached", summary
    assert not (tmp_path / "ext" / "logs" / "replay.log").exists()  # the run started no replay server
    endpoints = json.loads((tmp_path / "ext" / "endpoints.json").read_text())
    assert endpoints["replay_request"] == replay_server["request"]

    client = ReplayClient(obs_shape=(4,), obs_dtype="float32", request_endpoint=replay_server["request"], timeout=10)
    stats = client.stats()
    client.close()
    assert stats["stored"] > 0 and stats["sampled"] >= 200 * 128 and stats["rejected"] == 0, stats
    assert stats.get("rejected.bad_batch_size", 0) == 0


@pytest.mark.parametrize("why", ["absent", "other-env", "bad-format"])
def test_a_replay_server_that_cannot_serve_the_run_is_refused(qfleet_cmd, tmp_path, replay_server, why):
    args = {"absent": ["--replay", "127.0.0.1:1,2"],
            "other-env": ["--replay", replay_server["replay"], "--env", "Acrobot-v1"],
            "bad-format": ["--replay", "127.0.0.1:5555"]}[why]
    out = train(qfleet_cmd, tmp_path, *args, "--name", why)
    expected = {"absent": "no replay server answers at tcp://127.0.0.1:2",
                "other-env": "stores observations 4 float32, this run's Acrobot-v1 has 6 float32",
                "bad-format": "expected HOST:INSERT_PORT,REQUEST_PORT"}[why]
    assert out.returncode != 0 and expected in out.stdout + out.stderr, out.stdout[-2000:] + out.stderr[-2000:]
