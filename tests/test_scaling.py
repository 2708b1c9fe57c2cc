"""Scaling in the test suite: for 1, 2, 4 and 8 actors locally (1 and 4 on the Ray backend)
every actor connects and delivers every transition it sends (sent = stored, nothing
rejected), every actor keeps up with the weights versions (none stuck on an old one), and
throughput does not collapse (a generous floor, not a timing assertion). Throughput
figures themselves come from `qfleet bench scaling`."""
import json
import subprocess
import sys

import pytest

from tests.conftest import python_env

pytestmark = pytest.mark.slow
FLOOR_ENV_STEPS_PER_S = 2_000  # far below what any count reaches here; catches a stalled system


def run(tmp_path, backend: str, actors: int) -> dict:
    cmd = [sys.executable, "-m", "qfleet", "train", "--backend", backend, "--actors", str(actors),
           "--envs-per-actor", "16", "--max-seconds", "8", "--run-dir", str(tmp_path), "--name", "run",
           "--set", "run.stop_when_solved=false"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=python_env(), timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((tmp_path / "run" / "summary.json").read_text())


def check(summary: dict, actors: int) -> None:
    replay = summary["replay"]
    assert set(summary["sent_by_actor"]) == {str(i) for i in range(actors)}, "every actor connected"
    for index, sent in summary["sent_by_actor"].items():
        assert sent > 0 and replay[f"stored_by_actor.{index}"] == sent, (index, sent, replay)
    assert replay["rejected"] == 0 and replay["stored"] == sum(summary["sent_by_actor"].values())
    latest = summary["learner"]["version"]
    assert latest > 10
    for index, actor in summary["actors"].items():
        # an actor's last report is at most half a second old: a dozen versions at most
        assert actor["weights_version"] >= latest - max(15, latest // 10), (index, actor["weights_version"], latest)
        assert actor["versions_applied"] > 0
    assert summary["env_steps"] / summary["elapsed_s"] >= FLOOR_ENV_STEPS_PER_S


@pytest.mark.parametrize("actors", [1, 2, 4, 8])
def test_local(tmp_path, actors):
    check(run(tmp_path, "local", actors), actors)


@pytest.mark.parametrize("actors", [1, 4])
def test_ray(tmp_path, actors):
    check(run(tmp_path, "ray", actors), actors)
