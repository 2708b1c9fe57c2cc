"""Scaling in the test suite: for 1, 2, 4 and 8 actors locally (1 and 4 on the Ray backend)
a run of a fixed number of learner updates finishes that budget (a stalled system never
does: it would stop on the hang guard instead), every actor connects and delivers every
transition it sends (sent = stored, nothing rejected), the learner publishes one weights
version per `publish_every` updates, and every actor keeps up with those versions (none
stuck on an old one). Nothing here depends on the machine's speed; throughput figures
come from `qfleet bench scaling`. The default suite runs the ends (1 and 8 actors locally,
4 on Ray); the counts between them run in the long tier (`make test-long`, also in CI)."""
import json
import subprocess
import sys

import pytest

from tests.conftest import python_env

pytestmark = pytest.mark.slow
UPDATES = 1_000        # the run's budget: a few seconds of training on 2 cores
PUBLISH_EVERY = 25     # divides UPDATES: the last update publishes, so the final version is known
MIN_SIZE_TO_SAMPLE = 1_000  # the default: no update before the replay holds this many
HANG_GUARD_S = 600     # far above what the budget needs; reaching it fails the run's reason check


def run(tmp_path, backend: str, actors: int) -> dict:
    cmd = [sys.executable, "-m", "qfleet", "train", "--backend", backend, "--actors", str(actors),
           "--envs-per-actor", "16", "--max-seconds", str(HANG_GUARD_S), "--run-dir", str(tmp_path), "--name", "run",
           "--set", "run.stop_when_solved=false", "--set", f"run.max_updates={UPDATES}",
           "--set", f"learner.publish_every={PUBLISH_EVERY}",
           "--set", f"replay.min_size_to_sample={MIN_SIZE_TO_SAMPLE}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=python_env(), timeout=HANG_GUARD_S + 60)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((tmp_path / "run" / "summary.json").read_text())


def check(summary: dict, actors: int) -> None:
    assert summary["reason"] == "update budget reached" and summary["updates"] == UPDATES, summary["reason"]
    replay = summary["replay"]
    assert set(summary["sent_by_actor"]) == {str(i) for i in range(actors)}, "every actor connected"
    for index, sent in summary["sent_by_actor"].items():
        assert sent > 0 and replay[f"stored_by_actor.{index}"] == sent, (index, sent, replay)
    assert replay["rejected"] == 0 and replay["stored"] == sum(summary["sent_by_actor"].values())
    assert replay["stored"] >= MIN_SIZE_TO_SAMPLE  # the learner sampled, so the replay held at least this
    latest = summary["learner"]["version"]
    assert latest >= UPDATES // PUBLISH_EVERY  # a version per publish_every updates (version 0 at the start)
    for index, actor in summary["actors"].items():
        # an actor's last report is the one it sends as it stops, after the learner's last
        # publication; an actor that keeps taking weights is a few versions behind at most
        assert actor["weights_version"] >= latest - max(15, latest // 10), (index, actor["weights_version"], latest)
        assert actor["versions_applied"] > 0


@pytest.mark.parametrize("actors", [1, pytest.param(2, marks=pytest.mark.long),
                                    pytest.param(4, marks=pytest.mark.long), 8])
def test_local(tmp_path, actors):
    check(run(tmp_path, "local", actors), actors)


@pytest.mark.parametrize("actors", [pytest.param(1, marks=pytest.mark.long), 4])
def test_ray(tmp_path, actors):
    check(run(tmp_path, "ray", actors), actors)
