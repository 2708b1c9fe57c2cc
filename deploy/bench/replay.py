"""`qfleet bench replay`: ingest, sampling and memory of a real replay server process
(--obs atari: 84x84x4 Atari stacks stored a frame at a time, deploy/bench/replay_frames.py).

Setup: one server process with a prioritized table of `--capacity` (1M) CartPole-sized
transitions and the rate limiter off. Ingest: 1, 2 and 4 pusher processes send batched
inserts for `--seconds`; the rate is what the server stored (its own counter) per second.
Sampling: the benchmark process keeps `--in-flight` requests open, each for
`--batches-per-request` batches of 256, and answers each reply with a priority update
for its keys, as the learner does. Memory: the resident bytes of the table's own memory
(storage and sum-tree) when full, per stored transition, against the raw payload of one
transition (obs, action, reward, next obs, discount); the whole process's RSS growth is
reported beside it.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from dataclasses import replace

import numpy as np
import psutil

from qfleet.deploy.bench.report import machine, markdown_table, median, write_json

OBS_SHAPE = (4,)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qfleet.deploy.bench import replay_frames

    p.add_argument("--obs", choices=("vector", "atari"), default="vector",
                   help="vector: CartPole-sized transitions; atari: 84x84x4 stacks stored a frame at a time "
                        "(deploy/bench/replay_frames.py; needs the atari extra)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--capacity", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    p.add_argument("--repeats", type=int, default=3, help="measurements per figure (the median is reported)")
    p.add_argument("--pushers", default="1,2,4", help="inserting process counts")
    p.add_argument("--insert-batch", type=int, default=1024, help="transitions per insert message")
    p.add_argument("--sample-batch", type=int, default=256)
    p.add_argument("--in-flight", type=int, default=4, help="sample requests kept open")
    p.add_argument("--batches-per-request", type=int, default=4,
                   help="batches per sample request (the learner's learner.batches_per_request)")
    replay_frames.add_arguments(p.add_argument_group("--obs atari"))


def resident_bytes(arrays) -> int:
    """Resident bytes of the memory mappings that hold `arrays` (Linux /proc/self/smaps).
    Big numpy arrays get mappings of their own, so this is what the table itself costs,
    without transport buffers and allocator arenas that whole-process RSS also counts."""
    spans = [(a.__array_interface__["data"][0], a.__array_interface__["data"][0] + a.nbytes) for a in arrays]
    total, current = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:
                # numpy's madvise(MADV_HUGEPAGE) splits a big array into several mappings
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                current = any(lo < end and start < hi for start, end in spans)
            elif head[0] == "Rss:" and current:
                total += int(head[1]) * 1024
    return total


def _serve(capacity: int, ready, stop, measure, measured) -> None:
    from qfleet.common.config import ReplayConfig
    from qfleet.common.envs import EnvSpec
    from qfleet.replay_server.build import build_replay_server

    cfg = ReplayConfig(capacity=capacity, prioritized=True, samples_per_insert=0.0, min_size_to_sample=1000,
                       max_insert_batch=65_536, insert_hwm=64)
    spec = EnvSpec("CartPole-v1", OBS_SHAPE, np.dtype(np.float32), 2, 475.0, 500)
    _warm_up(build_replay_server(replace(cfg, capacity=4096), spec, max_sample_batch=4096))
    rss_before = psutil.Process().memory_info().rss  # after JIT compilation and socket setup
    server = build_replay_server(cfg, spec, max_sample_batch=4096)
    ready.put((server.insert_endpoint, server.request_endpoint, rss_before, server.table.nbytes))
    table = server.table
    while not stop.is_set():
        server.step(0.01)
        if measure.is_set():
            arrays = [table.storage.records, table.tree.leaves, table.tree._internal]
            measured.put(resident_bytes(arrays))
            measure.clear()
    server.close()


def _warm_up(server) -> None:
    """Run every code path once so compiled kernels are loaded before memory is measured."""
    table = server.table
    n = 2048
    table.insert({"obs": np.zeros((n, *OBS_SHAPE), np.float32), "action": np.zeros(n, np.int32),
                  "reward": np.zeros(n, np.float32), "next_obs": np.zeros((n, *OBS_SHAPE), np.float32),
                  "discount": np.ones(n, np.float32)})
    batch = table.sample(256, 0.4)
    table.update_priorities(batch["keys"], np.ones(256, np.float32))
    server.close()


def _push(endpoint: str, actor_id: int, batch: int, stop) -> None:
    from qfleet.common.messages import InsertBatch
    from qfleet.replay_server.client import ReplayClient

    rng = np.random.default_rng(actor_id)
    client = ReplayClient(obs_shape=OBS_SHAPE, obs_dtype=np.float32, insert_endpoint=endpoint, insert_hwm=8)
    obs = rng.standard_normal((batch, *OBS_SHAPE), dtype=np.float32)
    data = (obs, rng.integers(0, 2, batch).astype(np.int32), np.ones(batch, np.float32),
            obs + 0.01, np.full(batch, 0.97, np.float32))
    seq = 0
    while not stop.is_set():
        try:
            client.insert(InsertBatch(actor_id, seq, 0, *data), timeout=0.1)
            seq += 1
        except Exception:
            continue
    client.close()


def _stored(client) -> int:
    return int(client.stats(timeout=10)["stored"])


def _measure_ingest(ctx, endpoints, client, pushers: int, args) -> float:
    stop = ctx.Event()
    procs = [ctx.Process(target=_push, args=(endpoints[0], i, args.insert_batch, stop), daemon=True)
             for i in range(pushers)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # pushers import, connect and fill their queues
    n0, t0 = _stored(client), time.perf_counter()
    time.sleep(args.seconds)
    n1, t1 = _stored(client), time.perf_counter()
    stop.set()
    for p in procs:
        p.join(10)
    return (n1 - n0) / (t1 - t0)


def _measure_sampling(client, args) -> float:
    rng = np.random.default_rng(0)
    k = args.batches_per_request
    for _ in range(args.in_flight):
        client.request_sample(args.sample_batch, 0.4, k)
    done, t0 = 0, time.perf_counter()
    deadline = t0 + args.seconds
    while time.perf_counter() < deadline:
        _, batch = client.receive(timeout=10)
        client.update_priorities(batch.keys, rng.uniform(0.01, 2.0, len(batch.keys)).astype(np.float32))
        client.request_sample(args.sample_batch, 0.4, k)
        done += k
    elapsed = time.perf_counter() - t0
    for _ in range(args.in_flight):
        client.receive(timeout=10)
    return done / elapsed


def run(args: argparse.Namespace) -> int:
    from qfleet.replay_server.client import ReplayClient

    if args.obs == "atari":
        from qfleet.deploy.bench import replay_frames
        return replay_frames.run(args)

    ctx = mp.get_context("spawn")
    ready, stop, measure, measured = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Queue()
    server = ctx.Process(target=_serve, args=(args.capacity, ready, stop, measure, measured), daemon=True)
    server.start()
    insert_ep, request_ep, rss_before, table_bytes = ready.get(timeout=120)
    client = ReplayClient(obs_shape=OBS_SHAPE, obs_dtype=np.float32, request_endpoint=request_ep, timeout=10)
    try:
        ingest = {}
        for pushers in [int(x) for x in args.pushers.split(",")]:
            runs = [_measure_ingest(ctx, (insert_ep,), client, pushers, args) for _ in range(args.repeats)]
            ingest[pushers] = {"median": median(runs), "runs": runs}
            print(f"ingest, {pushers} pusher(s): {median(runs):,.0f} transitions/s  (runs: "
                  + ", ".join(f"{r:,.0f}" for r in runs) + ")", flush=True)
        while int(client.stats()["size"]) < args.capacity:  # fill to capacity for the memory figure
            _measure_ingest(ctx, (insert_ep,), client, 2, argparse.Namespace(**{**vars(args), "seconds": 1.0}))
        rss_full = psutil.Process(server.pid).memory_info().rss
        measure.set()
        table_resident = measured.get(timeout=30)
        sampling = [_measure_sampling(client, args) for _ in range(max(args.repeats, 5))]
        print(f"sampling: {median(sampling):,.0f} batches of {args.sample_batch}/s with priority updates (runs: "
              + ", ".join(f"{r:,.0f}" for r in sampling) + ")", flush=True)
        stats = client.stats()
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.kill()
    raw = 2 * 4 * int(np.prod(OBS_SHAPE)) + 4 + 4 + 4
    per_item = table_resident / args.capacity
    process_growth = (rss_full - rss_before) / args.capacity
    result = {
        "ingest_transitions_per_s": max(v["median"] for v in ingest.values()),
        "sample_batches_per_s": median(sampling),
        "bytes_per_transition": per_item,
        "raw_bytes_per_transition": raw,
        "memory_ratio": per_item / raw,
        "allocated_bytes_per_transition": table_bytes / args.capacity,
        "process_rss_growth_per_transition": process_growth,
        "ingest_by_pushers": {str(k): v for k, v in ingest.items()},
        "sample_runs": sampling,
        "capacity": args.capacity, "insert_batch": args.insert_batch, "sample_batch": args.sample_batch,
        "in_flight": args.in_flight, "batches_per_request": args.batches_per_request,
        "seconds": args.seconds, "rejected": stats["rejected"],
        "machine": machine(),
    }
    rows = [{"figure": "ingest, best of pushers (transitions/s)", "value": result["ingest_transitions_per_s"],
             "target": ">= 1,000,000"},
            {"figure": f"sampling, batches of {args.sample_batch}/s with priority updates",
             "value": result["sample_batches_per_s"], "target": ">= 5,000"},
            {"figure": "memory per stored transition (bytes resident in the table)", "value": per_item,
             "target": f"<= {1.3 * raw:.1f} (1.3 x {raw} raw)"},
            {"figure": "whole server process RSS growth per transition (bytes, incl. transport buffers)",
             "value": process_growth, "target": "(for reference)"}]
    print(markdown_table(rows, ["figure", "value", "target"]))
    write_json(result, args.json)
    return 0
