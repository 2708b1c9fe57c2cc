"""`qfleet cluster-config onprem`: render deploy/cluster/onprem.yaml for your machines."""
from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import yaml

from qfleet.common.errors import ConfigError

NODE_PYTHON = "3.11.7"  # what deploy/cluster/onprem.yaml, aws.yaml and check_node.py assume unless QFLEET_PYTHON says otherwise


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=("onprem",), help="which cluster config to render")
    p.add_argument("--head-ip", required=True, help="address of the head node (replay server and learner)")
    p.add_argument("--worker-ip", action="append", required=True, metavar="IP", help="an actor node (repeat)")
    p.add_argument("--ssh-user", required=True, help="user ray up logs in as on every node")
    p.add_argument("--ssh-key", required=True, help="private key for that user")
    p.add_argument("--cluster-name", default="qfleet-onprem")
    p.add_argument("--env-dir", help="Python environment on the nodes (QFLEET_ENV; default ~/qfleet-env)")
    p.add_argument("--python-version", default=NODE_PYTHON,
                   help=f"the Python every node runs (QFLEET_PYTHON; default {NODE_PYTHON}): Ray refuses mixed versions")
    p.add_argument("--ray-start-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for every `ray start`, e.g. --temp-dir=/var/tmp/ray-node1")
    p.add_argument("--auth-token-file", default="~/.ray/auth_token",
                   help="Ray auth token file on this machine, synced to ~/.ray/auth_token on every node")
    p.add_argument("--out", help="write here (default: standard output)")


def render_onprem(*, head_ip: str, worker_ips: list[str], ssh_user: str, ssh_key: str,
                  cluster_name: str = "qfleet-onprem", env_dir: str | None = None,
                  ray_start_args: tuple[str, ...] = (), auth_token_file: str = "~/.ray/auth_token",
                  python_version: str = NODE_PYTHON) -> dict:
    """The on-premises cluster config for these machines, as a dict ready for yaml.safe_dump.
    `ray_start_args` are appended to every `ray start` (a shell expression such as
    `--node-ip-address=$(hostname -i)` is evaluated on each node); `python_version` is the
    Python every node must run (the setup commands check it and install it where missing)."""
    if head_ip in worker_ips:
        raise ConfigError(f"--head-ip {head_ip} is also listed as a worker")
    template = resources.files("qfleet.deploy").joinpath("cluster/onprem.yaml").read_text()
    cfg = yaml.safe_load(template)
    cfg["cluster_name"] = cluster_name
    cfg["provider"] = {"type": "local", "head_ip": head_ip, "worker_ips": list(worker_ips)}
    cfg["auth"] = {"ssh_user": ssh_user, "ssh_private_key": ssh_key}
    cfg["file_mounts"]["~/.ray/auth_token"] = auth_token_file
    prefix = (f"export QFLEET_ENV={env_dir}; " if env_dir else "") + \
        (f"export QFLEET_PYTHON={python_version}; " if python_version != NODE_PYTHON else "")
    extra = " " + " ".join(ray_start_args) if ray_start_args else ""
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        cfg[key] = [prefix + cmd + (extra if "ray start" in cmd else "") for cmd in cfg[key]]
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = render_onprem(head_ip=args.head_ip, worker_ips=args.worker_ip, ssh_user=args.ssh_user,
                        ssh_key=args.ssh_key, cluster_name=args.cluster_name, env_dir=args.env_dir,
                        ray_start_args=tuple(args.ray_start_arg), auth_token_file=args.auth_token_file,
                        python_version=args.python_version)
    text = yaml.safe_dump(cfg, sort_keys=False, width=1000)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
