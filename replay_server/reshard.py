"""Redistribute a run's replay snapshots over another shard count (a resume with a new
replay.shards).

Each old shard's newest readable snapshot is read and its transitions put in insertion
order (oldest first); the shards' sequences are interleaved by relative age and dealt
round-robin to the new shards, so each new shard holds an even share of old and new
transitions. Priorities travel with their transitions (the stored sum-tree leaves). When
the new shards hold fewer transitions than the old ones did, the oldest go (and the count
is returned). Counters keep their global sums, which is what the summary reports (it sums
over shards): the table and server counters go to new shard 0; the rate limiters' inserts
and samples are split so that each new shard starts with an even share of the old shards'
total lead or lag against the samples-per-insert ratio, clipped to one error buffer.

Nothing already stored is lost on the way: the new snapshots are written to a staging
folder first, then the old snapshot files move into `replay/resharded-<S>-to-<T>-<n>/`
(kept, never deleted), then the new ones move into place.
"""
from __future__ import annotations

import json
import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qfleet.common.errors import CheckpointError
from qfleet.common.files import HEADER_KEY, write_npz_atomic
from qfleet.replay_server.snapshot import PATTERN, SnapshotStore, shard_dirs

log = logging.getLogger("qfleet.replay")
SERVER_COUNTERS = ("counts", "rejected", "stored_by_actor", "seq_gaps")  # summed into new shard 0


@dataclass(frozen=True)
class Ratio:
    """The rate limiter's settings of the resumed run (replay_server.rate_limiter)."""
    samples_per_insert: float
    min_size_to_sample: int
    error_buffer: float


@dataclass(frozen=True)
class Resharded:
    transitions: int   # kept in the new shards
    dropped: int       # the oldest, beyond the new shards' capacity
    kept_in: Path      # where the old snapshot files now are


def reshard(replay: Path, old: int, new: int, capacity: int, ratio: Ratio) -> Resharded:
    """Turn the snapshots of `old` shards under `replay` into snapshots of `new` shards. An
    old shard without a readable snapshot contributes nothing (as its own restart would)."""
    found = [_newest(d) for d in shard_dirs(replay, old)]
    found = [f for f in found if f is not None]
    if not found:
        raise CheckpointError(f"{replay} has no readable replay snapshot to redistribute")
    states, metas = zip(*found)
    if any("frame_shape" in state for state in states):
        raise CheckpointError(f"the replay snapshots under {replay} store frames (replay.frames), which "
                              f"cannot be redistributed over another shard count; resume with replay.shards = {old}")
    shard, slot = _age_order(states)
    total = len(shard)
    cut = max(0, total - new * capacity)  # the oldest go first
    shard, slot = shard[cut:], slot[cut:]
    picks = [np.arange(j, len(shard), new) for j in range(new)]

    staging = replay / ".reshard-staging"
    shutil.rmtree(staging, ignore_errors=True)
    limiters = _split_limiters([s["limiter"] for s in states], [len(p) for p in picks], ratio)
    for j, pick in enumerate(picks):
        state = _gather(states, shard[pick], slot[pick], capacity, limiters[j], first=j == 0)
        meta = _merged_meta(metas) if j == 0 else {}
        write_npz_atomic(staging / f"shard-{j}" / f"replay-{len(pick):015d}.npz", meta, state)

    kept_in = _free_name(replay / f"resharded-{old}-to-{new}")
    for i, d in enumerate(shard_dirs(replay, old)):
        target = kept_in if old == 1 else kept_in / f"shard-{i}"
        target.mkdir(parents=True, exist_ok=True)
        for path in SnapshotStore(d).paths():
            path.rename(target / path.name)
    for j, d in enumerate(shard_dirs(replay, new)):
        d.mkdir(parents=True, exist_ok=True)
        for path in (staging / f"shard-{j}").glob(PATTERN):
            path.rename(d / path.name)
    shutil.rmtree(staging, ignore_errors=True)
    return Resharded(transitions=total - cut, dropped=cut, kept_in=kept_in)


def _newest(directory: Path) -> Optional[tuple[dict, dict]]:
    """(state, meta) of the newest readable snapshot in `directory`, or None."""
    for path in SnapshotStore(directory).paths():
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
            meta = json.loads(state.pop(HEADER_KEY).tobytes().decode()) if HEADER_KEY in state else {}
            return state, meta
        except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
            log.warning("replay snapshot %s is unreadable (%s); trying the previous one", path, exc)
    log.warning("%s has no readable replay snapshot; its shard contributes nothing", directory)
    return None


def _age_order(states: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(shard, slot) of every stored transition, all shards interleaved, oldest first: a
    transition's age is its position in its own shard's insertion order relative to the
    shard's size (shards fill at the same pace, so equal relative ages are contemporaries)."""
    ages, shards, slots = [], [], []
    for s, state in enumerate(states):
        size, inserted, capacity = len(state["data.action"]), int(state["inserted"]), int(state["capacity"])
        slots.append(np.arange(size) if inserted <= capacity else (inserted + np.arange(size)) % capacity)
        ages.append((np.arange(size) + 0.5) / max(size, 1))
        shards.append(np.full(size, s))
    age, shard, slot = (np.concatenate(x) for x in (ages, shards, slots))
    order = np.lexsort((shard, age))  # by age, then by shard
    return shard[order], slot[order]


def _gather(states: Sequence[dict], shard: np.ndarray, slot: np.ndarray, capacity: int, limiter: np.ndarray,
            first: bool) -> dict:
    """The snapshot state of one new shard holding the given (shard, slot) rows, in order."""
    head = states[0]
    out = {}
    fields = [k for k in head if k.startswith("data.")] + (["priorities"] if "priorities" in head else [])
    for key in fields:
        column = np.empty((len(slot),) + head[key].shape[1:], head[key].dtype)
        for s, state in enumerate(states):
            mine = shard == s
            column[mine] = state[key][slot[mine]]
        out[key] = column
    out["inserted"] = np.int64(len(slot))
    out["capacity"] = np.int64(capacity)
    out["max_priority"] = np.float64(max(float(s["max_priority"]) for s in states))
    out["limiter"] = limiter
    counts = [s["counts"] for s in states if "counts" in s]
    if counts:  # the table counters, summed into new shard 0
        out["counts"] = np.sum(counts, axis=0).astype(np.int64) if first else np.zeros_like(counts[0])
    return out


def _split_limiters(old: Sequence[np.ndarray], sizes: Sequence[int], ratio: Ratio) -> list[np.ndarray]:
    """Each new shard's (inserts, samples): the old inserts in proportion to what it holds,
    and samples such that its lead or lag against the ratio is an even share of the old
    shards' total, within one error buffer of the ratio's offset (its allowed window)."""
    inserts = sum(int(x[0]) for x in old)
    samples = sum(int(x[1]) for x in old)
    new = len(sizes)
    spi = ratio.samples_per_insert
    offset = spi * ratio.min_size_to_sample
    held = max(1, sum(sizes))
    shares = [inserts * n // held for n in sizes]
    shares[0] += inserts - sum(shares)
    if spi <= 0:  # no ratio to hold: split the samples like the inserts
        spent = [samples * n // held for n in sizes]
        spent[0] += samples - sum(spent)
        return [np.array([i, s], np.int64) for i, s in zip(shares, spent)]
    excess = (inserts * spi - samples - len(old) * offset) / new
    excess = min(ratio.error_buffer, max(-ratio.error_buffer, excess))
    return [np.array([i, max(0, round(i * spi - offset - excess))], np.int64) for i in shares]


def _merged_meta(metas: Sequence[dict]) -> dict:
    """The server counters of all old shards, summed (an actor's sequence numbers are not
    kept: actors start again from 0 on a resume)."""
    merged: dict = {}
    for name in SERVER_COUNTERS:
        total: dict = {}
        for meta in metas:
            for k, v in meta.get(name, {}).items():
                total[k] = total.get(k, 0) + v
        merged[name] = total
    return merged


def _free_name(base: Path) -> Path:
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path
