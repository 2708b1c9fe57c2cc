"""`qfleet bench replay --obs atari`: the replay server on 84x84x4 Atari stacks, stored a
frame at a time (replay.frames, replay_server/frames.py).

Frames: a pool of real preprocessed frames (the Atari preset on --game, random actions), so
compression figures mean something. Pushers: processes that act as actors (32 environments
each, the actor's own FrameEncoder and n-step adder, episodes of ~--episode-steps steps),
sending InsertFrames; ingest is what the server stored per second (its own counter), and
wire bytes are the array payloads the messages carried per transition (headers, a few
hundred bytes a message of ~128 transitions, left out). The table is then filled to
--capacity and measured: resident bytes per transition (frames, links, slots, sum-tree),
sampling of batches of 32 and 256 with priority updates, the time a snapshot takes (it
writes the chunk being filled and the slot arrays; full chunks went to disk while filling),
and the time a fresh server takes to restore it. --frame-codec lz4 keeps the frames
compressed (replay.frame_codec); its bytes per transition are what the table holds
(payloads and Python's per-object header), as resident memory cannot single them out.
Compression: each codec available (lz4, zstandard) on the pool: bytes per frame, and what
decompressing the frames of a batch of 256 would add to sampling.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from qfleet.deploy.bench.report import machine, markdown_table, median, write_json

OBS_SHAPE = (4, 84, 84)
ENVS = 32


def frame_pool(game: str, steps: int, seed: int = 0) -> np.ndarray:
    """Newest frames of `steps` random-action steps of 8 preset environments."""
    from qfleet.common.envs import describe_env, make_vec_env

    spec = describe_env(game)
    envs = make_vec_env(spec, 8)
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)
    frames = []
    for _ in range(steps // 8):
        obs, *_ = envs.step(rng.integers(0, spec.num_actions, 8))
        frames.append(np.array(obs[:, -1]))
    envs.close()
    return np.concatenate(frames)


def _serve(capacity: int, codec: str, snapshot_dir: str, ready, stop, measure, measured) -> None:
    from qfleet.common.config import ReplayConfig
    from qfleet.common.envs import EnvSpec
    from qfleet.deploy.bench.replay import resident_bytes
    from qfleet.replay_server.build import build_replay_server

    cfg = ReplayConfig(capacity=capacity, prioritized=True, samples_per_insert=0.0, min_size_to_sample=1000,
                       max_insert_batch=65_536, insert_hwm=64, snapshot_every_s=0, frame_codec=codec)
    spec = EnvSpec("ALE/Pong-v5", OBS_SHAPE, np.dtype(np.uint8), 6, None, None)
    server = build_replay_server(cfg, spec, max_sample_batch=4096, snapshot_dir=snapshot_dir)
    ready.put((server.insert_endpoint, server.request_endpoint, server.table.nbytes))
    store, tree = server.table.storage, server.table.tree
    while not stop.is_set():
        server.step(0.01)
        if measure.is_set():
            if store.codec is None:
                arrays = [store.frames, store.frame_prev, store.obs_slots, store.next_slots, store.floor,
                          *store.arrays.values(), tree.leaves, tree._internal]
                measured.put(resident_bytes(arrays))
            else:  # compressed frames live on the Python heap: count what the table holds
                measured.put(store.nbytes + tree.leaves.nbytes + tree._internal.nbytes)
            measure.clear()
    server.close()


def _push(endpoint: str, actor_id: int, pool: np.ndarray, episode_steps: int, stop, wire) -> None:
    from qfleet.actors.frames import FrameEncoder, frame_messages
    from qfleet.actors.nstep import NStepAdder
    from qfleet.replay_server.client import ReplayClient

    rng = np.random.default_rng(actor_id)
    stream = int.from_bytes(os.urandom(7), "little")  # as an actor process does: its own frame numbering
    client = ReplayClient(obs_shape=OBS_SHAPE, obs_dtype=np.uint8, insert_endpoint=endpoint, insert_hwm=8)
    encoder = FrameEncoder(ENVS, OBS_SHAPE)
    adder = NStepAdder(num_envs=ENVS, n=3, gamma=0.99, obs_shape=(), obs_dtype=np.int64)
    obs = pool[rng.integers(0, len(pool), (ENVS, 4))]
    ids, done_prev = encoder.encode(obs), np.zeros(ENVS, bool)
    seq, steps, frames_sent, transitions_sent, bytes_sent = 0, [], 0, 0, 0
    while not stop.is_set():
        nxt = np.concatenate([obs[:, 1:], pool[rng.integers(0, len(pool), (ENVS, 1))]], axis=1)
        nxt[done_prev] = pool[rng.integers(0, len(pool), (int(done_prev.sum()), 4))]
        terminated = rng.random(ENVS) < 1.0 / episode_steps
        next_ids = encoder.encode(nxt)
        out = adder.add(ids, rng.integers(0, 6, ENVS).astype(np.int32), np.zeros(ENVS, np.float32), next_ids,
                        terminated, np.zeros(ENVS, bool), ~done_prev)
        first, frames, links = encoder.take()
        steps.append({"frame_first": first, "frames": frames, "frame_prev": links, **out})
        done_prev, obs, ids = terminated & ~done_prev, nxt, next_ids
        if len(steps) == 4:  # actor.flush_every_steps
            for msg in frame_messages(steps, actor_id=actor_id, version=0, stream=stream,
                                      max_transitions=4096, max_frames=4096):
                msg = msg._replace(seq=seq)
                while not stop.is_set():
                    try:
                        client.insert(msg, timeout=0.1)
                        break
                    except Exception:
                        continue
                seq += 1
                frames_sent += len(msg.frames)
                transitions_sent += len(msg.action)
                bytes_sent += msg.frames.nbytes + sum(getattr(msg, k).nbytes for k in
                                                      ("frame_prev", "obs_frame", "next_frame", "action", "reward",
                                                       "discount"))
            steps = []
    wire.put((frames_sent, transitions_sent, bytes_sent))
    client.close(linger_s=0)  # what is still queued is not measured: drop it rather than exit mid-send


def _ingest(ctx, endpoint, client, pool, pushers: int, seconds: float, episode_steps: int) -> tuple[float, tuple]:
    stop, wire = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_push, args=(endpoint, 100 + i, pool, episode_steps, stop, wire), daemon=True)
             for i in range(pushers)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # pushers import, connect and fill their queues
    n0, t0 = int(client.stats(timeout=30)["stored"]), time.perf_counter()
    time.sleep(seconds)
    n1, t1 = int(client.stats(timeout=30)["stored"]), time.perf_counter()
    stop.set()
    sums = np.sum([wire.get(timeout=60) for _ in procs], axis=0)
    for p in procs:
        p.join(10)
    return (n1 - n0) / (t1 - t0), tuple(int(x) for x in sums)


def _sampling(client, batch: int, seconds: float, in_flight: int = 4) -> float:
    rng = np.random.default_rng(0)
    for _ in range(in_flight):
        client.request_sample(batch, 0.4, 1)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() < t0 + seconds:
        _, reply = client.receive(timeout=30)
        client.update_priorities(reply.keys, rng.uniform(0.01, 2.0, len(reply.keys)).astype(np.float32))
        client.request_sample(batch, 0.4, 1)
        done += 1
    elapsed = time.perf_counter() - t0
    for _ in range(in_flight):
        client.receive(timeout=30)
    return done / elapsed


def _restore(capacity: int, codec: str, snapshot_dir: str, out) -> None:
    from qfleet.common.config import ReplayConfig
    from qfleet.common.envs import EnvSpec
    from qfleet.replay_server.build import build_replay_server

    cfg = ReplayConfig(capacity=capacity, prioritized=True, samples_per_insert=0.0, min_size_to_sample=1000,
                       frame_codec=codec)
    spec = EnvSpec("ALE/Pong-v5", OBS_SHAPE, np.dtype(np.uint8), 6, None, None)
    t0 = time.perf_counter()
    server = build_replay_server(cfg, spec, max_sample_batch=4096, snapshot_dir=snapshot_dir)
    server.restore()
    out.put((time.perf_counter() - t0, server.table.size))
    server.close()


def compression(pool: np.ndarray, batch: int = 256) -> dict:
    """Per available codec: bytes per frame and the decompression time of one batch's frames
    (2 stacks of 4 per transition)."""
    codecs = {}
    try:
        import lz4.block
        import lz4.frame
        size = int(np.prod(pool.shape[1:]))
        codecs["lz4"] = (lambda b: lz4.block.compress(b, store_size=False),    # what replay.frame_codec uses
                         lambda b: lz4.block.decompress(b, uncompressed_size=size))
        codecs["lz4-frame"] = (lz4.frame.compress, lz4.frame.decompress)
    except ImportError:
        pass
    try:
        import zstandard
        for level in (1, 3):
            c, d = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
            codecs[f"zstd-{level}"] = (c.compress, d.decompress)
    except ImportError:
        pass
    out = {}
    frames = [f.tobytes() for f in pool[:2048]]
    for name, (compress, decompress) in codecs.items():
        t0 = time.perf_counter()
        packed = [compress(f) for f in frames]
        t1 = time.perf_counter()
        picks = np.random.default_rng(0).integers(0, len(packed), batch * 8)
        t2 = time.perf_counter()
        for i in picks:
            decompress(packed[i])
        t3 = time.perf_counter()
        out[name] = {"bytes_per_frame": float(np.mean([len(p) for p in packed])),
                     "compress_us_per_frame": (t1 - t0) / len(frames) * 1e6,
                     "decompress_ms_per_batch_256": (t3 - t2) * 1e3}
    return out


def run(args: argparse.Namespace) -> int:
    from qfleet.replay_server.client import ReplayClient

    print(f"frame pool: {args.game}, random actions; frame codec {args.frame_codec} ...", flush=True)
    pool = frame_pool(args.game, args.pool_frames)
    ctx = mp.get_context("spawn")
    snapshot_dir = tempfile.mkdtemp(prefix="qfleet-bench-frames-", dir=args.snapshot_parent)
    ready, stop, measure, measured = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Queue()
    server = ctx.Process(target=_serve, args=(args.capacity, args.frame_codec, snapshot_dir, ready, stop, measure, measured), daemon=True)
    server.start()
    insert_ep, request_ep, table_bytes = ready.get(timeout=300)
    client = ReplayClient(obs_shape=OBS_SHAPE, obs_dtype=np.uint8, request_endpoint=request_ep, timeout=60)
    result: dict = {"capacity": args.capacity, "game": args.game, "episode_steps": args.episode_steps,
                    "frame_codec": args.frame_codec}
    try:
        ingest, wire = {}, None
        for pushers in [int(x) for x in args.pushers.split(",")]:
            runs = [_ingest(ctx, insert_ep, client, pool, pushers, args.seconds, args.episode_steps)
                    for _ in range(args.repeats)]
            ingest[pushers] = {"median": median([r for r, _ in runs]), "runs": [r for r, _ in runs]}
            wire = np.sum([w for _, w in runs], axis=0)
            print(f"ingest, {pushers} pusher(s): {ingest[pushers]['median']:,.0f} transitions/s (runs: "
                  + ", ".join(f"{r:,.0f}" for r, _ in runs) + ")", flush=True)
        fill_t0 = time.perf_counter()
        while int(client.stats(timeout=60)["size"]) < args.capacity:
            _ingest(ctx, insert_ep, client, pool, 2, 5.0, args.episode_steps)
        print(f"filled to {args.capacity:,} in {time.perf_counter() - fill_t0:.0f} s", flush=True)
        measure.set()
        resident = measured.get(timeout=60)
        sampling = {b: [_sampling(client, b, args.seconds) for _ in range(args.repeats)] for b in (32, 256)}
        for b, runs in sampling.items():
            print(f"sampling: {median(runs):,.0f} batches of {b}/s with priority updates", flush=True)
        stats = client.stats(timeout=60)
        t0 = time.perf_counter()
        snap = client.snapshot(timeout=300)
        snapshot_s = time.perf_counter() - t0
        print(f"snapshot at {args.capacity:,}: {snapshot_s:.2f} s", flush=True)
    finally:
        stop.set()
        server.join(30)
        if server.is_alive():
            server.kill()
    files = {p.name: p.stat().st_size for p in Path(snapshot_dir).rglob("*") if p.is_file()}
    out = ctx.Queue()
    restorer = ctx.Process(target=_restore, args=(args.capacity, args.frame_codec, snapshot_dir, out))
    restorer.start()
    restore_s, restored = out.get(timeout=600)
    restorer.join(60)
    shutil.rmtree(snapshot_dir, ignore_errors=True)
    frames_sent, transitions_sent, bytes_sent = (int(x) for x in wire)
    result.update({
        "ingest_transitions_per_s": max(v["median"] for v in ingest.values()),
        "ingest_by_pushers": {str(k): v for k, v in ingest.items()},
        "wire_bytes_per_transition": bytes_sent / transitions_sent,
        "wire_frames_per_transition": frames_sent / transitions_sent,
        "whole_stacks_wire_bytes_per_transition": 2 * int(np.prod(OBS_SHAPE)) + 12,
        "bytes_per_transition": resident / args.capacity,
        "allocated_bytes_per_transition": table_bytes / args.capacity,
        "naive_bytes_per_transition": 2 * int(np.prod(OBS_SHAPE)) + 12,
        "sample_batches_per_s": {str(b): median(r) for b, r in sampling.items()},
        "sample_runs": {str(b): r for b, r in sampling.items()},
        "snapshot_s": snapshot_s, "snapshot_path": Path(snap["path"]).name,
        "snapshot_files_bytes": files, "restore_s": restore_s, "restored_size": restored,
        "frames_missing": stats.get("frames_missing", 0), "rejected": stats["rejected"],
        "compression": compression(pool), "seconds": args.seconds, "repeats": args.repeats, "machine": machine(),
    })
    newest_files = sum(v for k, v in files.items() if not k.startswith("chunk-"))
    rows = [{"figure": "ingest, best of pushers (transitions/s)", "value": result["ingest_transitions_per_s"]},
            {"figure": "wire bytes per transition (InsertFrames)", "value": result["wire_bytes_per_transition"]},
            {"figure": "resident bytes per stored transition", "value": result["bytes_per_transition"]},
            {"figure": "sampling, batches of 32/s", "value": result["sample_batches_per_s"]["32"]},
            {"figure": "sampling, batches of 256/s", "value": result["sample_batches_per_s"]["256"]},
            {"figure": "snapshot of the full table (s; writes the newest chunk + slot arrays)", "value": snapshot_s},
            {"figure": "bytes a snapshot wrote (partial chunk + npz)", "value": newest_files},
            {"figure": "restore into a fresh server (s)", "value": restore_s}]
    for name, c in result["compression"].items():
        rows.append({"figure": f"{name}: bytes per frame / decompress ms per batch of 256",
                     "value": f"{c['bytes_per_frame']:,.0f} / {c['decompress_ms_per_batch_256']:.1f}"})
    print(markdown_table(rows, ["figure", "value"]))
    write_json(result, args.json)
    if stats["rejected"] or result["frames_missing"]:
        print(f"the server rejected {stats['rejected']} message(s) and dropped {result['frames_missing']} "
              "transition(s) for missing frames: these figures do not describe a healthy run")
        return 1
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--game", default="ALE/Pong-v5", help="where the frame pool comes from (--obs atari)")
    p.add_argument("--pool-frames", type=int, default=4000)
    p.add_argument("--episode-steps", type=int, default=1000, help="mean agent steps per simulated episode")
    p.add_argument("--snapshot-parent", default=None, help="where the snapshot folder goes (default: $TMPDIR)")
    p.add_argument("--frame-codec", choices=("none", "lz4"), default="none", help="replay.frame_codec")

