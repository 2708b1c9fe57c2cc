"""`ray up` for real: three hosts made of namespaces on this machine (head + two workers,
each with its own network, PID and mount namespaces and its own sshd), qfleet's
on-premises config rendered for them, `ray up`, a training job that must solve
CartPole-v1 with the replay server and learner on the head and transitions from actors
on both workers, a second job during which a worker host is powered off and which must
still complete, then `ray down` and nothing left behind (tests/cluster/netns_cluster.py)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.netns_hosts import WORKDIR, leftovers, missing_requirements
from tests.cluster.netns_ray import processes_mentioning, ssh_control_dir
from tests.conftest import python_env

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.long]
ROOT = Path(__file__).resolve().parent.parent
HARNESS_TIMEOUT_S = 540


def skip_reason() -> str | None:
    missing = missing_requirements()
    if missing:
        return (f"the namespace cluster needs {', '.join(missing)} (Linux, root, iproute2, util-linux, "
                "openssh-server, rsync)")
    return None


@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
def test_ray_up_on_namespace_hosts(tmp_path):
    report_path = tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, "-m", "tests.cluster.netns_cluster", "test", "--report", str(report_path)],
                            cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=HARNESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)   # the harness tears down what it built
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            subprocess.run([sys.executable, "-m", "tests.cluster.netns_cluster", "down"], cwd=ROOT, env=python_env(),
                           capture_output=True, timeout=300)
    assert proc.returncode == 0, output[-6000:]
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["error"] is None
    steps = {s["step"]: s for s in report["steps"]}
    for name in ("hosts up", "ray up", "all nodes active", "job solved", "worker kill to completion",
                 "ray down and cleanup"):
        assert steps[name]["ok"] and steps[name]["seconds"] > 0, (name, report["steps"])

    workers = [ip for name, ip in report["hosts"].items() if name != "qfnc-head"]
    assert len(workers) == 2
    solve = report["solve"]
    assert all(solve["actors_by_worker"][ip] and solve["stored_by_worker"][ip] > 0 for ip in workers), solve
    kill = report["kill"]
    assert kill["lost_actors"] and kill["actor_restarts"] >= len(kill["lost_actors"]), kill

    kept = tmp_path / "report"    # the runs and logs the harness keeps next to its report
    assert (kept / "runs" / "solve" / "summary.json").exists() and (kept / "runs" / "kill" / "summary.json").exists()
    assert "Job 'raysubmit_" in (kept / "solve.log").read_text()

    assert leftovers() == [], "everything the harness made is gone"
    assert not ssh_control_dir().exists(), "Ray's SSH control sockets are gone"
    assert not os.path.ismount("/tmp/ray"), "the hosts' mounts never reach this machine's namespace"
    assert not processes_mentioning(str(WORKDIR)), "no sshd, Ray or qfleet process of the hosts is left"
    assert not processes_mentioning(str(ssh_control_dir())), "no SSH master connection of `ray up` is left"
