"""`qfleet bench solve`: wall-clock time from launching `qfleet train` to solved, per seed.

Each seed runs `qfleet train` (default config unless overridden) as a fresh process, so
the time includes interpreter and process start-up, imports, and everything until the
learner's greedy evaluation reaches the solved threshold. Reported per seed: seconds to
solve, env steps and learner updates, the solving evaluation; overall: the median time
and how many seeds solved.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qfleet.deploy.bench.report import machine, markdown_table, median, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--max-seconds", type=float, default=120.0, help="budget per run")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--run-dir", help="keep the run directories here (default: a temporary folder)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config override")
    p.add_argument("--train-arg", action="append", default=[], metavar="ARG", help="extra argument for qfleet train")


def run_one(seed: int, args: argparse.Namespace, run_root: Path) -> dict:
    name = f"solve-seed{seed}"
    cmd = [sys.executable, "-m", "qfleet", "train", "--seed", str(seed), "--backend", args.backend,
           "--max-seconds", str(args.max_seconds), "--run-dir", str(run_root), "--name", name]
    for item in args.set:
        cmd += ["--set", item]
    cmd += args.train_arg
    launched = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    finished = time.time()
    summary_path = run_root / name / "summary.json"
    if not summary_path.exists():
        return {"seed": seed, "solved": False, "seconds": None, "exit_code": proc.returncode,
                "error": (proc.stderr or proc.stdout)[-2000:]}
    s = json.loads(summary_path.read_text())
    best = s.get("best_eval") or {}
    return {"seed": seed, "solved": bool(s["solved"]),
            "seconds": (s["solved_wall_time"] - launched) if s["solved"] else None,
            "total_seconds": finished - launched, "env_steps": s["env_steps"], "updates": s["updates"],
            "eval_mean": best.get("eval_mean"), "eval_episodes": best.get("eval_episodes"),
            "eval_min": best.get("eval_min"), "exit_code": proc.returncode, "run_dir": s["run_dir"]}


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="qfleet-solve-") as tmp:
        run_root = Path(args.run_dir) if args.run_dir else Path(tmp)
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            row = run_one(seed, args, run_root)
            runs.append(row)
            shown = f"{row['seconds']:.1f} s" if row["solved"] else f"not solved (exit code {row['exit_code']})"
            print(f"seed {seed}: {shown}, {row.get('env_steps', 0):,} env steps, {row.get('updates', 0):,} updates, "
                  f"eval {row.get('eval_mean')}", flush=True)
    solved = [r for r in runs if r["solved"]]
    result = {"median_seconds": median(r["seconds"] for r in solved) if len(solved) == len(runs) else
              median([r["seconds"] if r["solved"] else float("inf") for r in runs]),
              "solved": len(solved), "seeds": len(runs), "backend": args.backend, "runs": runs,
              "overrides": args.set, "machine": machine()}
    print(markdown_table(runs, ["seed", "solved", "seconds", "env_steps", "updates", "eval_mean", "eval_min"]))
    print(f"median seconds to solve: {result['median_seconds']:.1f}; solved {len(solved)} of {len(runs)}")
    write_json(result, args.json)
    return 0
