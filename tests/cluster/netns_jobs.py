"""The training runs of the on-premises cluster test, submitted as Ray jobs to the head,
and what each must show.

The job's driver runs on the head and writes the run directory under the work directory,
on the filesystem every host shares with this machine, so it is read here afterwards.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.cluster import ClusterTestError
from tests.cluster.netns_hosts import Host, Hosts
from tests.cluster.netns_ray import REPO, RayCli

EXCLUDES = [".venv", ".git", "runs", "bench-results", "**/__pycache__"]


def submit_args(cli: RayCli, runs: Path, name: str, *train: str) -> list[str]:
    return ["job", "submit", "--address", cli.dashboard, "--working-dir", str(REPO),
            "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
            "--", "qfleet", "train", "--backend", "ray", "--run-dir", str(runs), "--name", name, *train]


def read_run(run: Path) -> tuple[dict, dict]:
    """(summary.json, processes.json) of a finished run."""
    try:
        return (json.loads((run / "summary.json").read_text()), json.loads((run / "processes.json").read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ClusterTestError(f"the run directory {run} is incomplete: {exc}") from exc


def actor_hosts(where: dict, hosts: Hosts) -> dict[str, list[int]]:
    """worker IP -> indices of the actors placed there; fails on an actor anywhere else."""
    placed: dict[str, list[int]] = {w.ip: [] for w in hosts.workers}
    for name, w in where.items():
        if name.startswith("actor-"):
            ip = (w or {}).get("node_ip")
            if ip not in placed:
                raise ClusterTestError(f"{name} ran on {ip}, not on a worker host ({', '.join(placed)}): "
                                       "the qfleet_actor resource should have kept it off the head")
            placed[ip].append(int(name.split("-")[1]))
    return placed


def check_core_on_head(where: dict, hosts: Hosts) -> None:
    for role in ("replay", "learner"):
        ip = (where.get(role) or {}).get("node_ip")
        if ip != hosts.head.ip:
            raise ClusterTestError(f"the {role} ran on {ip}, but the config pins it to the head {hosts.head.ip} "
                                   f"(resource qfleet_{role})")


def solve(cli: RayCli, hosts: Hosts, runs: Path, *, actors: int = 4, budget_s: float = 180) -> dict:
    """Train until CartPole-v1 is solved; the replay server and learner must run on the
    head, and transitions must arrive from actors on every worker."""
    out = cli(*submit_args(cli, runs, "solve", "--actors", str(actors), "--seed", "0",
                           "--max-seconds", str(budget_s)),
              timeout=budget_s + 240, log=runs.parent / "solve.log", check=False)
    summary, where = read_run(runs / "solve") if (runs / "solve" / "summary.json").exists() else ({}, {})
    if out.returncode != 0 or "solved CartPole-v1 in" not in out.stdout or not summary.get("solved"):
        raise ClusterTestError(f"the training job did not solve CartPole-v1 (exit {out.returncode}, "
                               f"stop reason {summary.get('reason')!r}):\n{(out.stdout + out.stderr)[-3000:]}")
    check_core_on_head(where, hosts)
    stored = {ip: sum(summary["replay"].get(f"stored_by_actor.{i}", 0) for i in idx)
              for ip, idx in actor_hosts(where, hosts).items()}
    silent = [ip for ip, n in stored.items() if n <= 0]
    if silent:
        raise ClusterTestError(f"no transitions arrived from actors on worker(s) {', '.join(silent)} "
                               f"(placement {actor_hosts(where, hosts)}, stored per worker {stored})")
    return {"solved_after_s": summary["solved_after_s"], "stored_by_worker": stored,
            "actors_by_worker": actor_hosts(where, hosts)}


def survive_worker_loss(cli: RayCli, hosts: Hosts, runs: Path, *, actors: int = 4, budget_s: float = 60,
                        kill_after_s: float = 5) -> dict:
    """A run with a fixed budget during which one worker host is powered off: it must
    finish normally, the lost actors restarted on the surviving worker and sending again."""
    run = runs / "kill"
    log = open(runs.parent / "kill.log", "w")
    job = subprocess.Popen([cli.ray, *submit_args(cli, runs, "kill", "--actors", str(actors), "--seed", "1",
                                                  "--max-seconds", str(budget_s),
                                                  "--set", "run.stop_when_solved=false")],
                           stdout=log, stderr=subprocess.STDOUT, env=cli.env(), cwd=REPO, text=True)
    try:
        victim, lost = _wait_for_actors_then_pick(run / "processes.json", hosts, job, timeout=120)
        time.sleep(kill_after_s)
        victim.power_off()
        killed_at = time.monotonic()
        code = job.wait(timeout=budget_s + 240)
        completed_after_kill_s = time.monotonic() - killed_at
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        log.close()
    output = (runs.parent / "kill.log").read_text()
    summary, where = read_run(run)
    if code != 0 or summary.get("reason") != "time budget reached":
        raise ClusterTestError(f"after {victim.name} ({victim.ip}) was powered off the run did not complete "
                               f"(exit {code}, stop reason {summary.get('reason')!r}):\n{output[-3000:]}")
    check_core_on_head(where, hosts)
    now = actor_hosts(where, hosts)
    if now[victim.ip]:
        raise ClusterTestError(f"actors {now[victim.ip]} still listed on the dead host {victim.ip}")
    faults = {f["name"]: f for f in summary["faults"]}
    for index in lost:
        fault = faults.get(f"actor-{index}")
        if fault is None or fault.get("recovered_after_s") is None:
            raise ClusterTestError(f"actor-{index} on the dead host {victim.ip} was not restarted and back "
                                   f"(faults: {summary['faults']}):\n{output[-3000:]}")
        counted = sum(f["name"] == f"actor-{index}" for f in summary["faults"])
        if counted != 1:
            raise ClusterTestError(f"the loss of actor-{index} was counted {counted} times, not once "
                                   f"(faults: {summary['faults']})")
        if summary["replay"].get("stored", 0) <= fault.get("sent_at_recovery", 0):
            raise ClusterTestError("no transition arrived after the lost actors came back")
    return {"killed": victim.name, "lost_actors": lost, "actor_restarts": summary["actor_restarts"],
            "recovered_after_s": {k: f["recovered_after_s"] for k, f in faults.items()},
            "completed_after_kill_s": round(completed_after_kill_s, 1)}


def _wait_for_actors_then_pick(path: Path, hosts: Hosts, job: subprocess.Popen,
                               timeout: float) -> tuple[Host, list[int]]:
    """Once every actor is placed, the worker that runs some of them (the last such)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.poll() is not None:
            raise ClusterTestError(f"the job ended ({job.returncode}) before its actors were placed")
        try:
            where = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            where = None
        if where and all(w and w.get("node_ip") for w in where.values()):
            placed = actor_hosts(where, hosts)
            victim = [w for w in hosts.workers if placed[w.ip]][-1]
            return victim, placed[victim.ip]
        time.sleep(0.2)
    raise ClusterTestError(f"the actors were not all placed within {timeout:.0f} s ({path} never complete)")
