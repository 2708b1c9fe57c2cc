"""`ray up` for real on one Linux machine: an on-premises (Ray `local` provider) cluster of
three hosts made of namespaces, driven end to end.

    python -m tests.cluster.netns_cluster test   # hosts, ray up, jobs, a worker killed, ray down; timings
    python -m tests.cluster.netns_cluster up     # hosts and ray up only; the cluster stays up
    python -m tests.cluster.netns_cluster down   # ray down, then remove everything made here (by name)

`test` times every step, prints it and writes a JSON report (`--report`), and always
tears down what it built, also when a step fails or it is interrupted. Needs root,
iproute2, util-linux (`unshare`), openssh-server and rsync; see tests/cluster/netns_hosts.py for
how the hosts are made and docs/cluster-test.md for a worked example with timings.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tests.cluster import ClusterTestError
from tests.cluster.netns_hosts import Hosts, leftovers, missing_requirements, remove_leftovers, run
from tests.cluster.netns_jobs import solve, survive_worker_loss
from tests.cluster.netns_ray import RayCli, remove_ssh_control_dir


class Timings:
    """Seconds per step, printed as each ends and kept in order for the report."""

    def __init__(self):
        self.steps: list[dict] = []

    @contextmanager
    def step(self, name: str):
        say(f"{name} ...")
        start = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.record(name, time.monotonic() - start, ok)

    def record(self, name: str, seconds: float, ok: bool = True) -> None:
        self.steps.append({"step": name, "seconds": round(seconds, 1), "ok": ok})
        say(f"{name}: {seconds:.1f} s" + ("" if ok else " (failed)"))


def say(text: str) -> None:
    print(f"[netns-cluster] {text}", flush=True)


def check_machine(subnet: str) -> None:
    missing = missing_requirements()
    if missing:
        raise ClusterTestError(f"this machine lacks {', '.join(missing)} (as root on Debian: "
                               "apt-get install -y --no-install-recommends rsync openssh-server)")
    if not re.fullmatch(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})", subnet):
        raise ClusterTestError(f"--subnet {subnet!r}: give the first three octets, e.g. 10.213.0")
    if f" {subnet}." in run("ip", "-o", "-4", "addr", "show").stdout:
        raise ClusterTestError(f"--subnet {subnet}.0/24 is already in use on this machine; pick another")
    found = leftovers()
    if found:
        raise ClusterTestError(f"a cluster from an earlier run is still there ({', '.join(found)}); "
                               "remove it with `python -m tests.cluster.netns_cluster down`")


def bring_up(hosts: Hosts, cli: RayCli, timings: Timings) -> dict:
    """Hosts, `ray up`, every node active; returns the idle cluster's memory per host (MB)."""
    with timings.step("hosts up"):
        hosts.create()
    started = time.monotonic()
    with timings.step("ray up"):
        cli.prepare()
        cli.up()
    with timings.step("all nodes active"):
        cli.wait_for_nodes()
    timings.record("all nodes active since ray up started", time.monotonic() - started)
    memory = {h.name: h.memory_mb() for h in hosts.all}
    say(f"memory of the idle cluster: {sum(memory.values()):.0f} MB ({memory})")
    return memory


def tear_down(hosts: Hosts, cli: RayCli, timings: Timings, keep: Path | None) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):     # cleaning up is not interruptible
        signal.signal(sig, signal.SIG_IGN)
    with timings.step("ray down and cleanup"):
        if keep is not None:
            save_artifacts(hosts, keep)
        if hosts.head.init_pid() is not None:     # ray down needs the head's sshd
            try:
                cli.down()
            except Exception as exc:  # noqa: BLE001 - whatever ray down does, the namespaces go
                say(f"ray down failed ({exc}); removing the hosts anyway")
        hosts.destroy()
        remove_ssh_control_dir()


def save_artifacts(hosts: Hosts, keep: Path) -> None:
    """The job run directories, the jobs' and `ray up`'s output and the head's autoscaler
    log, copied out of the work directory before it goes."""
    keep.mkdir(parents=True, exist_ok=True)
    runs = hosts.workdir / "runs"
    if runs.exists():
        shutil.copytree(runs, keep / "runs", dirs_exist_ok=True)
    for log in hosts.workdir.glob("*.log"):
        shutil.copy(log, keep / log.name)
    logs = hosts.head.session_logs()
    for name in ("monitor.out", "monitor.err", "monitor.log"):
        if (logs / name).exists():
            shutil.copy(logs / name, keep / f"head-{name}")


def test(args: argparse.Namespace) -> int:
    check_machine(args.subnet)
    hosts, timings = Hosts(subnet=args.subnet), Timings()
    cli = RayCli(hosts)
    report_path = Path(args.report or f"runs/netns-cluster/report-{time.strftime('%Y%m%d-%H%M%S')}.json")
    report = {"command": " ".join([Path(sys.executable).name, "-m", "tests.cluster.netns_cluster", *sys.argv[1:]]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hosts": {h.name: h.ip for h in hosts.all},
              "ok": False, "error": None, "steps": timings.steps}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # run the finally below
    try:
        report["idle_memory_mb"] = bring_up(hosts, cli, timings)
        runs = hosts.workdir / "runs"
        runs.mkdir()
        with timings.step("job solved"):
            report["solve"] = solve(cli, hosts, runs)
        say(f"solved; actors by worker {report['solve']['actors_by_worker']}, "
            f"transitions stored by worker {report['solve']['stored_by_worker']}")
        with timings.step("job with a worker killed"):
            report["kill"] = survive_worker_loss(cli, hosts, runs)
        timings.record("worker kill to completion", report["kill"]["completed_after_kill_s"])
        timings.record("lost actors back", max(report["kill"]["recovered_after_s"].values()))
        say(f"{report['kill']['killed']} powered off; lost actors {report['kill']['lost_actors']} came back "
            f"after {report['kill']['recovered_after_s']} s")
        report["ok"] = True
    except (Exception, KeyboardInterrupt, SystemExit) as exc:   # noqa: BLE001 - reported, then torn down
        report["error"] = describe(exc)
        say(f"FAILED: {report['error']}")
    finally:
        tear_down(hosts, cli, timings, report_path.parent / report_path.stem)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=1))
        say("timings: " + ", ".join(f"{s['step']} {s['seconds']:.1f} s" for s in timings.steps))
        say(f"report: {report_path}")
    return 0 if report["ok"] else 1


def describe(exc: BaseException) -> str:
    if isinstance(exc, ClusterTestError):
        return str(exc)
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


def up(args: argparse.Namespace) -> int:
    check_machine(args.subnet)
    hosts, timings = Hosts(subnet=args.subnet), Timings()
    cli = RayCli(hosts)
    try:
        bring_up(hosts, cli, timings)
    except BaseException:
        tear_down(hosts, cli, timings, None)
        raise
    say(f"cluster up: head {hosts.head.ip}, workers {', '.join(w.ip for w in hosts.workers)}; submit jobs with\n"
        f"  RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat {cli.token_file}) ray job submit --address {cli.dashboard} "
        "--working-dir . -- qfleet train --backend ray --actors 4\n"
        f"and remove it with `python -m tests.cluster.netns_cluster down`")
    return 0


def down(args: argparse.Namespace) -> int:
    hosts = Hosts(subnet=args.subnet)
    if (hosts.workdir / "cluster.yaml").exists():
        try:
            RayCli(hosts).down()
        except Exception as exc:  # noqa: BLE001 - whatever ray down does, the namespaces go
            say(f"ray down failed ({exc}); removing the hosts anyway")
    removed = remove_leftovers()
    remove_ssh_control_dir()
    say("removed " + (", ".join(removed) if removed else "nothing (no leftovers)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.netns_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("test", "up", "down"))
    parser.add_argument("--subnet", default="10.213.0", help="first three octets of the hosts' private /24")
    parser.add_argument("--report", help="JSON report of `test` (default runs/netns-cluster/report-<time>.json); "
                        "the runs and logs are kept next to it")
    args = parser.parse_args(argv)
    try:
        return {"test": test, "up": up, "down": down}[args.command](args)
    except ClusterTestError as exc:
        print(f"netns-cluster {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
