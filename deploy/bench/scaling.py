"""`qfleet bench scaling`: the full system at several actor counts, measured in steady state.

For each actor count and each rate-limiter mode ('off': samples_per_insert 0, raw
throughput; 'on': the configured ratio, the training setting) this runs `qfleet train`
(learner running, never stopping on solve), waits for training plus `--warmup` seconds,
and measures over the next `--seconds`, between two of the run's own metrics ticks:
env steps/s, transitions stored/s, learner updates/s, achieved samples per insert, policy
lag (versions behind, and ms from publication to first use, from policy_lag.csv), replay
sample latency, the learner's fraction of time waiting for data, and CPU per process.
`--shards` and `--relays` measure replay shards and weights relays instead (bench/shards.py).
"""
from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import psutil

from qfleet.common.errors import LaunchError
from qfleet.deploy.bench import shards
from qfleet.deploy.bench.report import machine, markdown_table, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actors", default="1,2,4,8,16", help="actor counts, comma-separated")
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--modes", default="off,on", help="rate limiter modes to run: off (raw), on (training)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds after training starts before measuring")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config override")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--table", help="write the markdown table here")
    p.add_argument("--plot", help="write a PNG of throughput and lag against actor count here")
    shards.add_arguments(p)


def ticks(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "learner/updates" in r]


def cpu_seconds(root: psutil.Process, roles: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for proc in [root] + root.children(recursive=True):
        try:
            t = proc.cpu_times()
            name = "launcher" if proc.pid == root.pid else roles.get(proc.pid) or \
                ("evaluator" if roles.get(proc.ppid()) == "learner" else "other")
            out[name] = out.get(name, 0.0) + t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return out


def measure(n: int, mode: str, args: argparse.Namespace, root_dir: Path, extra: tuple = (), tag: str = "",
            after: Optional[Callable[[dict, Path], None]] = None) -> dict:
    """One row; `extra` are further overrides, `after` adds to the row from the finished run."""
    name = f"scale-{n}-{mode}{tag}"
    cmd = [sys.executable, "-m", "qfleet", "train", "--backend", args.backend, "--actors", str(n),
           "--max-seconds", str(args.warmup + args.seconds + 120), "--run-dir", str(root_dir), "--name", name,
           "--set", "run.stop_when_solved=false"]
    if mode == "off":
        cmd += ["--set", "replay.samples_per_insert=0"]
    for item in [*args.set, *extra]:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = root_dir / name
    try:
        deadline = time.monotonic() + 180
        while not any(t.get("learner/updates") for t in ticks(run)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LaunchError(f"{name}: training never started: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
            time.sleep(0.2)
        time.sleep(args.warmup)
        start_tick = ticks(run)[-1]
        roles = _roles(run)
        root = psutil.Process(proc.pid)
        cpu0, wall0 = cpu_seconds(root, roles), time.monotonic()
        time.sleep(args.seconds)
        end_tick = ticks(run)[-1]
        cpu1, wall1 = cpu_seconds(root, roles), time.monotonic()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    row = _row(n, mode, start_tick, end_tick, run, {k: (cpu1.get(k, 0) - cpu0.get(k, 0)) / (wall1 - wall0)
                                                    for k in cpu1})
    if after is not None:
        after(row, run)
    return row


def _roles(run: Path) -> dict[int, str]:
    raw = json.loads((run / "processes.json").read_text())
    return {(v["pid"] if isinstance(v, dict) else v): k for k, v in raw.items() if v}


def _row(n: int, mode: str, t0: dict, t1: dict, run: Path, cpu: dict) -> dict:
    dt = t1["time/elapsed_s"] - t0["time/elapsed_s"]

    def rate(key: str) -> float:
        return ((t1.get(key) or 0) - (t0.get(key) or 0)) / dt if dt > 0 else float("nan")

    stored = rate("replay/stored")
    lags = {"ms": [], "versions": []}
    with open(run / "policy_lag.csv") as f:
        for r in csv.DictReader(f):
            if t0["time/elapsed_s"] <= float(r["elapsed_s"]) <= t1["time/elapsed_s"]:
                lags[r["unit"]].append(float(r["lag"]))

    def pct(values: list, q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    return {"actors": n, "mode": mode, "seconds": dt, "env_steps_per_s": rate("actors/env_steps"),
            "transitions_stored_per_s": stored, "learner_updates_per_s": rate("learner/updates"),
            "samples_per_s": rate("replay/sampled"), "versions_per_s": rate("learner/version"),
            "samples_per_insert": rate("replay/sampled") / stored if stored else float("nan"),
            "policy_lag_versions_p50": pct(lags["versions"], 50), "policy_lag_versions_p99": pct(lags["versions"], 99),
            "policy_lag_ms_p50": pct(lags["ms"], 50), "policy_lag_ms_p99": pct(lags["ms"], 99),
            "sample_latency_ms_p50": t1.get("learner/sample_latency_p50_ms"),
            "sample_latency_ms_p99": t1.get("learner/sample_latency_p99_ms"),
            "data_wait_fraction": rate("learner/data_wait_s"),
            "cpu_percent": {k: round(100 * v, 1) for k, v in sorted(cpu.items())},
            "cpu_total_percent": round(100 * sum(cpu.values()), 1)}


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, style in (("off", "o-"), ("on", "s--")):
        sel = [r for r in rows if r["mode"] == mode]
        if not sel:
            continue
        x = [r["actors"] for r in sel]
        a.plot(x, [r["env_steps_per_s"] for r in sel], style, label=f"env steps/s (limiter {mode})")
        a.plot(x, [r["transitions_stored_per_s"] for r in sel], style, alpha=0.5, label=f"stored/s (limiter {mode})")
        b.plot(x, [r["policy_lag_ms_p50"] for r in sel], style, label=f"publish-to-use p50 (limiter {mode})")
        b.plot(x, [r["policy_lag_ms_p99"] for r in sel], style, alpha=0.5, label=f"p99 (limiter {mode})")
    for ax, title, unit in ((a, "throughput", "per second"), (b, "weight broadcast lag", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("actors")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


COLUMNS = ["actors", "mode", "env_steps_per_s", "transitions_stored_per_s", "learner_updates_per_s",
           "samples_per_insert", "policy_lag_versions_p50", "policy_lag_versions_p99", "policy_lag_ms_p50",
           "policy_lag_ms_p99", "sample_latency_ms_p50", "sample_latency_ms_p99", "data_wait_fraction",
           "cpu_total_percent"]


def run(args: argparse.Namespace) -> int:
    if args.shards or args.relays:
        return shards.run(args)
    counts = [int(x) for x in args.actors.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="qfleet-scaling-") as tmp:
        for n in counts:
            for mode in modes:
                row = measure(n, mode, args, Path(tmp))
                rows.append(row)
                print(f"{n} actor(s), limiter {mode}: {row['env_steps_per_s']:,.0f} env steps/s, "
                      f"{row['learner_updates_per_s']:,.0f} updates/s, lag p50/p99 {row['policy_lag_ms_p50']:.1f}/"
                      f"{row['policy_lag_ms_p99']:.1f} ms, data wait {row['data_wait_fraction']:.1%}, "
                      f"cpu {row['cpu_percent']}", flush=True)
    table = markdown_table(rows, COLUMNS)
    print(table)
    if args.table:
        Path(args.table).write_text(table + "\n")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    write_json({"backend": args.backend, "rows": rows, "overrides": args.set, "machine": machine()}, args.json)
    return 0
