"""The Ray backend: `qfleet train --backend ray` on a local Ray solves CartPole-v1 with
every transition accounted for while a client without the run's keys is refused; on a
multi-node cluster (ray.cluster_utils) the replay server and learner land on the node
types that pin them, actors spread over the actor nodes and all of their transitions
arrive; killed actors and a removed actor node come back and the run completes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from qfleet.common import messages as m
from tests.conftest import make_batch, python_env
from tests.test_faults import updates_so_far

pytestmark = pytest.mark.slow
# Runs end when solved (under an update cap many times what solving takes) or on an update
# budget; --max-seconds is only a hang guard.
HANG_GUARD_S = 600
SOLVE_UPDATE_CAP = 30_000


def train_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qfleet", "train", "--backend", "ray", "--run-dir", str(run_dir),
            "--name", "run", *extra]


def wait_for_file(path: Path, timeout: float = HANG_GUARD_S) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)
    time.sleep(0.2)
    return json.loads(path.read_text())


def wait_for_updates(run: Path, updates: int, proc: subprocess.Popen) -> None:
    """Until the run's metrics show this many learner updates (the run still going)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while updates_so_far(run) < updates:
        assert proc.poll() is None and time.monotonic() < deadline, f"the run never reached {updates} updates"
        time.sleep(0.2)


def assert_every_transition_arrived(summary: dict) -> None:
    replay = summary["replay"]
    for index, sent in summary["sent_by_actor"].items():
        assert sent > 0 and replay[f"stored_by_actor.{index}"] == sent, (index, sent, replay)
    assert replay["rejected"] == 0


def test_local_ray_solves_and_refuses_intruders(tmp_path):
    proc = subprocess.Popen(train_cmd(tmp_path, "--seed", "0", "--max-seconds", str(HANG_GUARD_S),
                                      "--set", f"run.max_updates={SOLVE_UPDATE_CAP}"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=python_env())
    try:
        endpoints = wait_for_file(tmp_path / "run" / "endpoints.json")
        assert endpoints["curve"] is True
        intruder = zmq.Context.instance().socket(zmq.PUSH)  # no keys at all
        intruder.setsockopt(zmq.SNDTIMEO, 500)
        intruder.setsockopt(zmq.LINGER, 0)
        intruder.connect(endpoints["replay_insert"])
        frames = m.pack(m.replay_schemas((4,), np.float32)[m.INSERT], make_batch(8, actor_id=666))
        for _ in range(3):
            try:
                intruder.send_multipart(frames)
            except zmq.Again:
                pass
        output, _ = proc.communicate(timeout=HANG_GUARD_S + 60)
        intruder.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["solved"] and summary["reason"] == "solved" and summary["best_eval"]["eval_mean"] >= 475
    assert_every_transition_arrived(summary)
    assert "stored_by_actor.666" not in summary["replay"]
    assert (run / "checkpoint.npz").exists(), "the learner's checkpoint is shipped to the driver"
    where = json.loads((run / "processes.json").read_text())
    assert set(where) == {"replay", "learner", "actor-0", "actor-1"} and all(w["node_ip"] for w in where.values())


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"qfleet_replay": 1}})
    learner = c.add_node(num_cpus=1, resources={"qfleet_learner": 1})
    actors_a = c.add_node(num_cpus=2, resources={"qfleet_actor": 4})
    actors_b = c.add_node(num_cpus=2, resources={"qfleet_actor": 4})
    c.wait_for_nodes()
    ray.init(address=c.address)
    ids = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    ray.shutdown()
    yield c, ids, actors_a
    c.shutdown()


def node_with(ids: dict, resource: str) -> set:
    return {node for node, res in ids.items() if res.get(resource)}


@pytest.mark.long
def test_multi_node_placement_and_delivery(cluster, tmp_path):
    c, ids, _ = cluster
    out = subprocess.run(train_cmd(tmp_path, "--address", c.address, "--actors", "4",
                                   "--max-seconds", str(HANG_GUARD_S), "--set", "run.stop_when_solved=false",
                                   "--set", "run.max_updates=2000"),
                         capture_output=True, text=True, env=python_env(), timeout=HANG_GUARD_S + 60)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "run"
    where = json.loads((run / "processes.json").read_text())
    assert where["replay"]["node_id"] in node_with(ids, "qfleet_replay")
    assert where["learner"]["node_id"] in node_with(ids, "qfleet_learner")
    actor_nodes = {where[f"actor-{i}"]["node_id"] for i in range(4)}
    assert actor_nodes == node_with(ids, "qfleet_actor"), "actors spread over both actor nodes"
    assert_every_transition_arrived(json.loads((run / "summary.json").read_text()))


@pytest.mark.long
def test_killed_actor_and_lost_node_come_back(cluster, tmp_path):
    c, ids, doomed = cluster
    # A budget of updates; the faults come at 5% and 15% of it, by the run's own count, so
    # the restarted actors have most of the run to come back in.
    budget = 10_000
    proc = subprocess.Popen(train_cmd(tmp_path, "--address", c.address, "--actors", "4", "--max-seconds",
                                      str(HANG_GUARD_S), "--set", "run.stop_when_solved=false",
                                      "--set", f"run.max_updates={budget}"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=python_env())
    run = tmp_path / "run"
    try:
        where = wait_for_file(run / "processes.json")
        wait_for_updates(run, budget // 20, proc)
        os.kill(where["actor-0"]["pid"], signal.SIGKILL)
        wait_for_updates(run, 3 * budget // 20, proc)
        c.remove_node(doomed)  # every actor on it dies; Ray restarts them on the other actor node
        output, _ = proc.communicate(timeout=HANG_GUARD_S + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["actor_restarts"] >= 2, (summary["faults"], output[-3000:])
    assert "actor-0 on node" in output and "Ray restarts it" in output
    assert all(f["recovered_after_s"] is not None for f in summary["faults"]), (summary["faults"], output[-3000:])
    assert summary["replay"]["stored"] > 0 and summary["updates"] > 0
