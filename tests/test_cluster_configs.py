"""Every cluster YAML in deploy/cluster validates against Ray's own cluster-config schema,
after the defaults `ray up` fills in; and installs the exact versions this package pins."""
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "deploy" / "cluster"
CONFIGS = sorted(CLUSTER.glob("*.yaml"))


def test_there_are_cloud_and_on_premises_configs():
    providers = {yaml.safe_load(p.read_text())["provider"]["type"] for p in CONFIGS}
    assert {"aws", "local"} <= providers


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_validates_against_rays_schema(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load(path.read_text())))


@pytest.mark.parametrize("path", CONFIGS + [CLUSTER / "Dockerfile"], ids=[p.name for p in CONFIGS] + ["Dockerfile"])
def test_installs_with_the_one_constraints_file(path):
    """Versions are pinned once, in deploy/constraints.txt; every node install reads it."""
    text = path.read_text()
    assert "-c deploy/constraints.txt" in text or "-c ~/qfleet/deploy/constraints.txt" in text
    assert "3.11.7" in text
    assert "==2." not in text, "a version pinned here instead of in deploy/constraints.txt"


def test_constraints_pin_what_nodes_must_share():
    pins = dict(line.split("==") for line in (CLUSTER.parent / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert set(pins) == {"torch", "ray", "msgpack"}
    pyproject = (CLUSTER.parent.parent / "pyproject.toml").read_text()
    assert "==" not in pyproject, "pyproject.toml states ranges; exact pins live in deploy/constraints.txt"


def test_check_node_accepts_this_environment_and_names_a_wrong_pin(tmp_path):
    import subprocess
    import sys

    script = CLUSTER / "check_node.py"
    ok = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    if sys.version.split()[0] == "3.11.7":
        assert ok.returncode == 0, ok.stderr
    wrong = tmp_path / "constraints.txt"
    wrong.write_text("msgpack==0.0.1\n")
    bad = subprocess.run([sys.executable, str(script), str(wrong)], capture_output=True, text=True)
    assert bad.returncode == 1 and "msgpack" in bad.stderr and "want 0.0.1" in bad.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_pins_components_to_node_types(path):
    text = path.read_text()
    for resource in ("qfleet_replay", "qfleet_learner", "qfleet_actor"):
        assert resource in text, resource


def test_rendered_onprem_config_validates():
    from ray.autoscaler._private.util import prepare_config, validate_config

    from qfleet.deploy.cli.cluster_config import render_onprem

    cfg = render_onprem(head_ip="10.1.0.2", worker_ips=["10.1.0.3", "10.1.0.4"], ssh_user="qf", ssh_key="/k",
                        env_dir="/opt/env", ray_start_args=("--temp-dir=/tmp/ray-x",), auth_token_file="/run/tok")
    validate_config(prepare_config(cfg))
    assert cfg["provider"]["worker_ips"] == ["10.1.0.3", "10.1.0.4"]
    assert all(c.startswith("export QFLEET_ENV=/opt/env; ") for c in cfg["worker_start_ray_commands"])
    assert cfg["worker_start_ray_commands"][-1].endswith("--temp-dir=/tmp/ray-x")
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "/run/tok"


def test_onprem_jobs_find_qfleet():
    """`ray job submit -- qfleet train ...` runs in the raylet's environment: every
    `ray start` has the node environment's bin first on PATH."""
    cfg = yaml.safe_load((CLUSTER / "onprem.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cfg[key] if "ray start" in c)
        assert "PATH=${QFLEET_ENV:-$HOME/qfleet-env}/bin:$PATH" in start, start


def test_the_node_python_is_one_setting(tmp_path):
    """The namespace cluster test runs wherever its prerequisites are: its nodes share this
    machine's Python, whichever it is, through QFLEET_PYTHON."""
    import os
    import subprocess
    import sys

    from qfleet.deploy.cli.cluster_config import NODE_PYTHON, render_onprem

    cfg = render_onprem(head_ip="10.1.0.2", worker_ips=["10.1.0.3"], ssh_user="qf", ssh_key="/k",
                        python_version="3.12.1")
    assert all("export QFLEET_PYTHON=3.12.1; " in c for c in cfg["setup_commands"])
    default = render_onprem(head_ip="10.1.0.2", worker_ips=["10.1.0.3"], ssh_user="qf", ssh_key="/k")
    assert not any("QFLEET_PYTHON=" in c for c in default["setup_commands"]) and NODE_PYTHON == "3.11.7"

    here = sys.version.split()[0]
    check = subprocess.run([sys.executable, str(CLUSTER / "check_node.py")], capture_output=True, text=True,
                           env={**os.environ, "QFLEET_PYTHON": here})
    assert check.returncode == 0, check.stderr
    other = subprocess.run([sys.executable, str(CLUSTER / "check_node.py")], capture_output=True, text=True,
                           env={**os.environ, "QFLEET_PYTHON": "3.0.0"})
    assert other.returncode == 1 and "want 3.0.0" in other.stderr
