"""`qfleet bench learner`: learner updates/s and samples/s, isolated and in the full system.

Isolated: the update implementation the learner uses on --device (numpy for the MLP on
the CPU, torch for the CNNs on the CPU, DeviceDQN with CUDA graphs on CUDA) runs in this
process on synthetic batches shaped like each case's observations:

- mlp: CartPole vectors, the default 128x128 MLP, batches of 256;
- cnn: CartPole's 4x84x84 uint8 pixel stacks, the Nature CNN, batches of 64;
- atari: 4x84x84 uint8 Atari stacks, the Nature CNN with 6 actions, batches of 32;
- atari-nips2013: the same with the 2013 DQN torso (learner.torso = nips2013);
- minatar: 10x10x4 bool HWC MinAtar grids (Breakout), the MinAtar paper's small CNN with
  6 actions, batches of 32.

The networks are what `common.netspec.choose_net` gives those observations under
learner.network = auto (and learner.torso = auto but for atari-nips2013). `--cases minatar:256` overrides a case's batch size. A case is
driven as the learner loop drives it: submit, collect at the implementation's depth, a
weight snapshot every publish_every updates. Timing starts after a warm-up (which includes
CUDA graph capture) and runs for --seconds, in a fresh process with the learner's thread
settings (--threads, default learner.threads); the figure is the median of three equal
windows. Updates per CPU-second of that process are reported beside it: on a shared CPU
they show what one busy core does (on CUDA the host also waits for the GPU, so only the
wall-clock figure means anything there).

Full system (mlp and cnn only): `qfleet train` for --system-seconds (not stopping when
solved) with the default config for the MLP and deploy/configs/cartpole-pixels.yaml for the
CNN, on the same device; the learner's rate is read from the run's metrics.jsonl: updates
between the first and the last status tick that saw updates, over the time between them.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from qfleet.common.config import LearnerConfig
from qfleet.common.errors import ConfigError
from qfleet.common.metrics import read_jsonl
from qfleet.common.netspec import NetSpec, choose_net
from qfleet.deploy.bench.report import machine, markdown_table, median, write_json

PIXEL_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cartpole-pixels.yaml"


class Case(NamedTuple):
    obs_shape: tuple
    obs_dtype: type
    num_actions: int
    batch_size: int
    system_flags: Optional[list]  # `qfleet train` flags of the full-system run; None: isolated only
    torso: str = "auto"

    def spec(self) -> NetSpec:
        return choose_net(obs_shape=self.obs_shape, obs_dtype=self.obs_dtype, num_actions=self.num_actions,
                          torso=self.torso)


CASES = {
    "mlp": Case((4,), np.float32, 2, 256, []),
    "cnn": Case((4, 84, 84), np.uint8, 2, 64, ["--config", str(PIXEL_CONFIG)]),
    "atari": Case((4, 84, 84), np.uint8, 6, 32, None),
    "atari-nips2013": Case((4, 84, 84), np.uint8, 6, 32, None, torso="nips2013"),
    "minatar": Case((10, 10, 4), np.bool_, 6, 32, None),
}


def parse_cases(text: str) -> list[tuple[str, str, int]]:
    """(label, case, batch size) for each of 'name' or 'name:BATCH', comma-separated."""
    out = []
    for item in (c.strip() for c in text.split(",")):
        if not item:
            continue
        name, _, batch = item.partition(":")
        if name not in CASES or (batch and not (batch.isdigit() and int(batch) > 0)):
            raise ConfigError(f"--cases {item!r}: expected NAME or NAME:BATCH with NAME one of {', '.join(CASES)}")
        out.append((item.replace(":", "_b"), name, int(batch) if batch else CASES[name].batch_size))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="learner device (auto: CUDA when there is one)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed duration of each isolated measurement")
    p.add_argument("--system-seconds", type=float, default=60.0,
                   help="wall-clock budget of each full-system run (0 skips them)")
    p.add_argument("--cases", default="mlp,cnn",
                   help=f"comma-separated subset of: {', '.join(CASES)}; NAME:BATCH sets the batch size "
                        "(e.g. minatar:32,minatar:256,atari:32)")
    p.add_argument("--threads", type=int, default=LearnerConfig().threads,
                   help="CPU threads of the learner's math (learner.threads; default %(default)s)")
    p.add_argument("--json", help="write the results here")


def synthetic_batches(spec: NetSpec, batch_size: int, count: int = 8, seed: int = 0, obs_dtype=None) -> list[dict]:
    """Random batches shaped like the replay server's replies (read-only, as received);
    observations of `obs_dtype` (default: uint8 frames for a CNN, float32 for an MLP)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(obs_dtype or (np.uint8 if spec.kind == "cnn" else np.float32))
    batches = []
    for _ in range(count):
        if dtype == np.bool_:  # MinAtar grids: ~10% of the cells set
            obs = rng.random((2, batch_size, *spec.obs_shape)) < 0.1
        elif dtype == np.uint8:
            obs = rng.integers(0, 256, (2, batch_size, *spec.obs_shape), dtype=np.uint8)
        else:
            obs = rng.standard_normal((2, batch_size, *spec.obs_shape)).astype(dtype)
        batch = {"obs": obs[0], "next_obs": obs[1],
                 "action": rng.integers(0, spec.num_actions, batch_size).astype(np.int32),
                 "reward": rng.standard_normal(batch_size).astype(np.float32),
                 "discount": np.where(rng.random(batch_size) < 0.05, 0.0, 0.97).astype(np.float32),
                 "weight": rng.uniform(0.2, 1.0, batch_size).astype(np.float32)}
        for v in batch.values():
            v.flags.writeable = False
        batches.append(batch)
    return batches


def drive(update, batches: list[dict], *, seconds: float, publish_every: int, warmup: int,
          windows: int = 3) -> tuple[list[float], list[float]]:
    """Run updates as the learner loop does; returns the updates per wall-clock second and
    per CPU-second of this process of `windows` consecutive timed windows of seconds /
    windows each (after `warmup` untimed updates)."""
    def one(i: int) -> None:
        update.submit(batches[i % len(batches)])
        while update.in_flight >= update.depth:
            update.collect()
        if update.updates % publish_every == 0:
            update.snapshot_params()
        update.take_params()

    for i in range(warmup):
        one(i)
    wall, cpu = [], []
    for _ in range(windows):
        while update.in_flight:
            update.collect()
        done, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds / windows:
            one(done)
            done += 1
        while update.in_flight:
            update.collect()
        wall.append(done / (time.perf_counter() - started))
        cpu.append(done / max(time.process_time() - cpu_started, 1e-9))
    return wall, cpu


def isolated(name: str, batch_size: int, device: str, seconds: float, threads: int) -> dict:
    """The isolated measurement in a fresh process with the learner's thread settings (as
    the launcher starts it: learner.threads BLAS/OpenMP threads, one by default)."""
    from qfleet.deploy.local.children import blas_threads

    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    with blas_threads(threads):
        proc = ctx.Process(target=_isolated_child, args=(name, batch_size, device, seconds, threads, sender))
        proc.start()
    sender.close()
    try:
        return receiver.recv()
    finally:
        proc.join()


def _isolated_child(name: str, batch_size: int, device: str, seconds: float, threads: int, conn) -> None:
    conn.send(_isolated(name, batch_size, device, seconds, threads))


def _isolated(name: str, batch_size: int, device: str, seconds: float, threads: int) -> dict:
    from qfleet.learner.backend import make_update, resolve_backend

    spec = CASES[name].spec()
    cfg = dataclasses.replace(LearnerConfig(), batch_size=batch_size, device=device, threads=threads)
    update = make_update(cfg, spec, device, seed=0)
    warmup = 20 if spec.kind == "mlp" or device == "cuda" else 2
    batches = synthetic_batches(spec, batch_size, obs_dtype=CASES[name].obs_dtype)
    wall, cpu = drive(update, batches, seconds=seconds, publish_every=cfg.publish_every, warmup=warmup)
    rate = median(wall)
    return {"updates_per_s": rate, "samples_per_s": rate * batch_size, "batch_size": batch_size,
            "network": spec.describe(), "threads": threads,
            "updates_per_cpu_s": median(cpu), "backend": f"{resolve_backend(cfg, spec, device)} "
            f"({type(update).__name__})", "window_rates": wall}


def system(name: str, device: str, seconds: float, run_root: Path) -> dict:
    flags = CASES[name].system_flags
    cmd = [sys.executable, "-m", "qfleet", "train", *flags, "--max-seconds", str(seconds), "--run-dir",
           str(run_root), "--name", f"bench-{name}", "--set", "run.stop_when_solved=false",
           "--set", f"learner.device={device}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    metrics = run_root / f"bench-{name}" / "metrics.jsonl"
    ticks = [r for r in read_jsonl(metrics) if r.get("learner/updates")] if metrics.exists() else []
    if proc.returncode != 0 or len(ticks) < 2:
        return {"error": (proc.stderr or proc.stdout)[-2000:], "exit_code": proc.returncode}
    first, last = ticks[0], ticks[-1]
    span = last["time/elapsed_s"] - first["time/elapsed_s"]
    rate = (last["learner/updates"] - first["learner/updates"]) / span
    steps = (last["actors/env_steps"] - first["actors/env_steps"]) / span
    return {"updates_per_s": rate, "env_steps_per_s": steps, "measured_s": span, "updates": last["learner/updates"]}


def run(args: argparse.Namespace) -> int:
    from qfleet.learner.backend import resolve_device

    device = resolve_device(args.device)
    result: dict = {"device": device, "machine": machine()}
    if device == "cuda":
        import torch

        result["gpu"] = torch.cuda.get_device_name()
    rows = []
    cases = parse_cases(args.cases)
    with tempfile.TemporaryDirectory(prefix="qfleet-bench-learner-") as tmp:
        for label, name, batch_size in cases:
            iso = isolated(name, batch_size, device, args.seconds, args.threads)
            result[f"{label}_updates_per_s"] = iso["updates_per_s"]
            result[f"{label}_samples_per_s"] = iso["samples_per_s"]
            result[f"{label}_isolated"] = iso
            print(f"{label}, isolated: {iso['updates_per_s']:,.1f} updates/s, {iso['samples_per_s']:,.0f} samples/s "
                  f"(batch {iso['batch_size']}, {iso['network']}, {iso['backend']}, {args.threads} thread(s); "
                  f"{iso['updates_per_cpu_s']:,.1f} updates per CPU-second)", flush=True)
            rows.append({"network": label, "measurement": "isolated", "batch": iso["batch_size"],
                         "updates/s": iso["updates_per_s"], "samples/s": iso["samples_per_s"]})
            if args.system_seconds > 0 and CASES[name].system_flags is not None and label == name:
                full = system(name, device, args.system_seconds, Path(tmp))
                result[f"{name}_system"] = full
                if "error" in full:
                    print(f"{name}, full system: failed (exit code {full['exit_code']}): {full['error'][-300:]}")
                    continue
                result[f"{name}_system_updates_per_s"] = full["updates_per_s"]
                print(f"{name}, full system: {full['updates_per_s']:,.1f} updates/s, "
                      f"{full['env_steps_per_s']:,.0f} env steps/s", flush=True)
                rows.append({"network": name, "measurement": "full system", "batch": iso["batch_size"],
                             "updates/s": full["updates_per_s"],
                             "samples/s": full["updates_per_s"] * iso["batch_size"]})
    print(markdown_table(rows, ["network", "measurement", "batch", "updates/s", "samples/s"]))
    write_json(result, args.json)
    return 0
