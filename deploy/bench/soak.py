"""`qfleet bench soak`: run the full system for a long time and check nothing grows.

Starts `qfleet train` (default config, never stopping on solve) for `--minutes`, samples
every process of the run (launcher, replay server, learner, its evaluator, actors) once a
second: resident memory and open file descriptors. After the warm-up, neither may grow by
more than `--tolerance` (5%) from the first post-warm-up window to the last window (the
mean of each window, so one-second noise does not decide). Writes the series and the
verdict as JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from qfleet.deploy.bench.report import machine, markdown_table, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run")
    p.add_argument("--warmup", type=float, default=None, help="seconds ignored at the start (default: 20%% of the run)")
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed growth after the warm-up (0.05 = 5%%)")
    p.add_argument("--window", type=float, default=None, help="seconds averaged at each end (default: 10%% of the run)")
    p.add_argument("--json", help="write the series and the verdict here")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config override")
    p.add_argument("--run-dir", help="keep the run directory here (default: a temporary folder)")


def sample(root: psutil.Process, roles: dict[int, str]) -> dict[str, tuple[int, int]]:
    """(rss bytes, open fds) of the launcher and every descendant, keyed by role."""
    out = {}
    try:
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return out
    for proc in procs:
        try:
            out[_name(proc, root, roles)] = (proc.memory_info().rss, proc.num_fds())
        except psutil.NoSuchProcess:
            continue
    return out


def _name(proc: psutil.Process, root: psutil.Process, roles: dict[int, str]) -> str:
    if proc.pid == root.pid:
        return "launcher"
    if proc.pid in roles:
        return roles[proc.pid]
    if roles.get(proc.ppid()) == "learner":
        return "evaluator"
    if any("resource_tracker" in part for part in proc.cmdline()):
        return "resource-tracker"
    return f"pid-{proc.pid}"


def verdict(series: dict[str, list], warmup_s: float, window_s: float, tolerance: float) -> dict:
    result = {}
    for name, points in series.items():
        points = [p for p in points if p["t"] >= warmup_s]
        if len(points) < 4:
            continue
        end = points[-1]["t"]
        first = [p for p in points if p["t"] <= points[0]["t"] + window_s]
        last = [p for p in points if p["t"] >= end - window_s]
        row = {}
        for key in ("rss", "fds"):
            a = sum(p[key] for p in first) / len(first)
            b = sum(p[key] for p in last) / len(last)
            row[f"{key}_start"], row[f"{key}_end"] = a, b
            row[f"{key}_growth"] = (b - a) / a if a else 0.0
        row["ok"] = row["rss_growth"] <= tolerance and row["fds_growth"] <= tolerance
        result[name] = row
    return result


def run(args: argparse.Namespace) -> int:
    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else 0.2 * seconds
    window = args.window if args.window is not None else max(2.0, 0.1 * seconds)
    with tempfile.TemporaryDirectory(prefix="qfleet-soak-") as tmp:
        root_dir = Path(args.run_dir) if args.run_dir else Path(tmp)
        cmd = [sys.executable, "-m", "qfleet", "train", "--max-seconds", str(seconds), "--run-dir", str(root_dir),
               "--name", "soak", "--set", "run.stop_when_solved=false"]
        for item in args.set:
            cmd += ["--set", item]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        root = psutil.Process(proc.pid)
        started = time.monotonic()
        series: dict[str, list] = {}
        while proc.poll() is None:
            t = time.monotonic() - started
            if t > seconds - 1.0:  # the run is about to shut down; stop sampling before that
                break
            roles_file = root_dir / "soak" / "processes.json"
            roles = {pid: name for name, pid in json.loads(roles_file.read_text()).items()} \
                if roles_file.exists() else {}
            for name, (rss, fds) in sample(root, roles).items():
                series.setdefault(name, []).append({"t": round(t, 2), "rss": rss, "fds": fds})
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started - t)))
        code = proc.wait(timeout=seconds + 60)
    checks = verdict(series, warmup, window, args.tolerance)
    ok = bool(checks) and all(c["ok"] for c in checks.values()) and code == 0
    rows = [{"process": n, "rss start MB": c["rss_start"] / 2**20, "rss end MB": c["rss_end"] / 2**20,
             "rss growth %": 100 * c["rss_growth"], "fds start": c["fds_start"], "fds end": c["fds_end"],
             "fds growth %": 100 * c["fds_growth"], "ok": c["ok"]} for n, c in sorted(checks.items())]
    print(markdown_table(rows, list(rows[0]) if rows else ["process"]))
    print(f"verdict: {'PASS' if ok else 'FAIL'} (after {warmup:.0f} s of warm-up, growth <= "
          f"{100 * args.tolerance:.0f}% allowed; run exit code {code})")
    write_json({"ok": ok, "minutes": args.minutes, "warmup_s": warmup, "window_s": window,
                "tolerance": args.tolerance, "exit_code": code, "checks": checks, "series": series,
                "machine": machine()}, args.json)
    return 0 if ok else 1
