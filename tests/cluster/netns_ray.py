"""Ray on the namespace hosts: the nodes' Python environment, qfleet's on-premises config
rendered for the hosts, `ray up` / `ray down` run from this machine, and the wait until
every node has joined.

The Ray CLI runs here with its own HOME and TMPDIR under the work directory (the local
provider's state file, the config cache and Ray's client files stay out of this
machine's /tmp/ray and home) and with the run's Ray auth token in its environment.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import yaml

from qfleet.deploy.cli.cluster_config import render_onprem
from tests.cluster import ClusterTestError
from tests.cluster.netns_hosts import PREFIX, Hosts

CLUSTER_NAME = f"{PREFIX}-onprem"
REPO = Path(__file__).resolve().parents[2]
DASHBOARD_PORT = 8265
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def node_env(workdir: Path, home: Path) -> Path:
    """The nodes' QFLEET_ENV: a virtual environment over the Python that runs this harness
    (its packages through a .pth, so every node runs this Python and the pinned packages
    of the project's environment), with qfleet importable from the checkout `ray up`
    syncs to ~/qfleet on each host, and `ray` and `qfleet` in its bin. The config's setup
    commands find everything in place and skip installing, as on a node built from
    deploy/cluster/Dockerfile; the environment running the harness is never modified."""
    env = workdir / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, capture_output=True)
    site = Path(sysconfig.get_paths(vars={"base": str(env), "platbase": str(env)})["purelib"])
    base_site = sysconfig.get_paths()["purelib"]
    (site / "_qfnc_base.pth").write_text(f"import site; site.addsitedir({base_site!r})\n")
    (site / "_qfnc_qfleet.pth").write_text(f"{home / 'qfleet'}\n")
    python = env / "bin" / "python"
    scripts = {"ray": "from ray.scripts.scripts import main", "qfleet": "from qfleet.deploy.cli import main"}
    for name, line in scripts.items():
        path = env / "bin" / name
        path.write_text(f"#!{python}\nimport sys\n{line}\nsys.exit(main())\n")
        path.chmod(0o755)
    return env


def render(hosts: Hosts, env_dir: Path, token_file: Path) -> dict:
    """qfleet's on-premises config for the hosts: root over SSH with the run's key; every
    `ray start` told its node's address (with no default route Ray cannot guess it)."""
    cfg = render_onprem(head_ip=hosts.head.ip, worker_ips=[w.ip for w in hosts.workers], ssh_user="root",
                        ssh_key=str(hosts.client_key), cluster_name=CLUSTER_NAME, env_dir=str(env_dir),
                        ray_start_args=("--node-ip-address=$(hostname -I | cut -d' ' -f1)",
                                        "--disable-usage-stats"),
                        auth_token_file=str(token_file), python_version=sys.version.split()[0])
    cfg["file_mounts"]["~/qfleet"] = str(REPO)
    return cfg


class RayCli:
    """The `ray` command of this environment, run here against the namespace cluster."""

    def __init__(self, hosts: Hosts):
        self.hosts = hosts
        self.workdir = hosts.workdir
        self.config = self.workdir / "cluster.yaml"
        self.token_file = self.workdir / "auth_token"
        self.ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
        self.dashboard = f"http://{hosts.head.ip}:{DASHBOARD_PORT}"

    def prepare(self) -> None:
        """Auth token, node environment and cluster config (before `ray up`)."""
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        env_dir = node_env(self.workdir, self.hosts.home)
        cfg = render(self.hosts, env_dir, self.token_file)
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False, width=1000))

    def env(self) -> dict:
        client = self.workdir / "client"
        (client / "tmp").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOME": str(client), "TMPDIR": str(client / "tmp"),
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               "RAY_UP_enable_autoscaler_v2": "0", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        if self.token_file.exists():
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token_file.read_text())
        return env

    def __call__(self, *args: str, timeout: float, log: Path | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([self.ray, *args], capture_output=True, text=True, env=self.env(), cwd=REPO,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        if log is not None:
            log.write_text(out.stdout + out.stderr)
        if check and out.returncode != 0:
            raise ClusterTestError(f"`ray {' '.join(args)}` failed ({out.returncode}):\n"
                                   f"{(out.stdout + out.stderr)[-3000:]}")
        return out

    # -- the cluster --------------------------------------------------------------------------
    def up(self, timeout: float = 300) -> None:
        self("up", "-y", "--no-config-cache", "--disable-usage-stats", "--log-style", "record", str(self.config),
             timeout=timeout, log=self.workdir / "ray-up.log")

    def down(self, timeout: float = 180) -> None:
        if self.config.exists():
            self("down", "-y", "--log-style", "record", str(self.config), timeout=timeout,
                 log=self.workdir / "ray-down.log", check=False)

    def alive_nodes(self) -> dict[str, dict]:
        """node IP -> the head's record of each ALIVE node (from the dashboard's state API)."""
        out = self("list", "nodes", "--address", self.dashboard, "--format", "json", "--detail",
                   timeout=60, check=False)
        if out.returncode != 0:
            return {}
        try:
            nodes = json.loads(out.stdout)
        except json.JSONDecodeError:
            return {}
        return {n["node_ip"]: n for n in nodes if n.get("state") == "ALIVE"}

    def wait_for_nodes(self, timeout: float = 180) -> dict[str, dict]:
        """Until the head and every worker are ALIVE members of the cluster; on timeout,
        the error names each host that did not join and quotes the autoscaler's log."""
        expected = [h.ip for h in self.hosts.all]
        deadline = time.monotonic() + timeout
        while True:
            alive = self.alive_nodes()
            if all(ip in alive for ip in expected):
                return alive
            if time.monotonic() > deadline:
                missing = [h for h in self.hosts.all if h.ip not in alive]
                raise ClusterTestError(
                    f"within {timeout:.0f} s of `ray up`, these nodes did not join the cluster: "
                    f"{', '.join(f'{h.name} ({h.ip})' for h in missing)}. The head's autoscaler log says:\n"
                    f"{self.autoscaler_log()}")
            time.sleep(2)

    def autoscaler_log(self, lines: int = 12) -> str:
        """The last lines of the head's autoscaler log, without colour codes."""
        path = self.hosts.head.session_logs() / "monitor.out"
        if not path.exists():
            return f"(no autoscaler log at {path})"
        text = ANSI.sub("", path.read_text(errors="replace")).splitlines()
        return "\n".join(line[:300] for line in text[-lines:])


def ssh_control_dir() -> Path:
    """Where Ray keeps the SSH master connections for this cluster, here and on the head
    (fixed by Ray: /tmp/ray_ssh_<hash of the user>/<hash of the cluster name>)."""
    import getpass

    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    return Path(f"/tmp/ray_ssh_{user}") / hashlib.sha256(CLUSTER_NAME.encode()).hexdigest()[:10]


def remove_ssh_control_dir() -> None:
    """End the SSH master connections `ray up` / `ray down` left behind on this machine
    (they linger for ControlPersist) and remove their directory."""
    control = ssh_control_dir()
    for pid in processes_mentioning(str(control)):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    shutil.rmtree(control, ignore_errors=True)
    try:
        control.parent.rmdir()   # only when nothing else (another cluster's connections) is in it
    except OSError:
        pass


def processes_mentioning(text: str) -> list[int]:
    """PIDs of the processes whose command line contains `text` (this one excluded)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args and int(cmdline.parent.name) != os.getpid():
            found.append(int(cmdline.parent.name))
    return found
