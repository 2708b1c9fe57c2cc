"""Sampling S replay shards as if they were one table: which shard each request goes to,
the global importance weights of what comes back, and which shards are answering.

    shards = ShardSet(S, seed=..., retry_s=...)
    s = shards.choose()                       # or shards.probe_due(now) for a left-out shard
    ... send a sample request to shard s ...
    weights = shards.take_batch(s, reply.total_priority, reply.size, reply.probability, beta, batch_size, now)
    shards.timed_out(s, sent, now)            # a request to s went unanswered for retry_s

Why the distribution is the single table's: a request goes to shard s with probability
T_s / T (T_s its total priority, T their sum, from the latest replies), and the shard
draws row i with probability p_i / T_s, so row i is drawn with p_i / T, exactly as from
one table holding every shard's rows (tests/test_shards.py checks it with chi-square).
The importance weights use that global probability and the global size N = sum of N_s
(`common.importance`); with the table's batch-max normalisation both cancel within a
batch from one shard, so they equal the shard's own up to rounding, and with S = 1 they
are bit for bit the single table's.

Shards that stop answering: a shard with a request unanswered for `retry_s` and no reply
since is left out of the draw (and of T and N: the learner samples what is reachable)
while any other shard answers; it gets one probe request every `retry_s` and rejoins on
its first reply of any kind. When no shard is up, all are asked, as with one server.

Rate limiting across shards: each shard's RateLimiter holds its own
`diff_s = spi * inserts_s - samples_s` inside [spi * min_size - eb, spi * min_size + eb]
once it has min_size transitions (replay_server/rate_limiter.py; the first inserts of an
empty shard may overshoot the upper bound by up to spi * (max_insert_batch - 1), because
inserts below min_size are never held). Summed over shards, the global samples-per-insert
ratio holds within S * error_buffer samples around an offset of S * spi * min_size (each
shard waits for its own min_size), not one error_buffer: the bound is S times looser,
whatever the split of inserts. Actors spread evenly over shards keep each shard's share of
inserts close to its share of samples (T_s / T); where they differ, the shard sampled
beyond its inserts answers 'rate_limited' and the learner's batches come from the others
meanwhile, so the realised mix leans toward the shards with data to spare.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np

from qfleet.common.importance import importance_weights

COUNTS = ("requests", "replies", "batches", "timeouts", "rate_limited", "probes", "priorities_dropped")


class ShardSet:
    def __init__(self, count: int, *, seed: int = 0, retry_s: float = 3.0):
        if count < 1:
            raise ValueError(f"a ShardSet needs at least one shard, got {count}")
        self.count = count
        self.retry_s = retry_s
        self.rng = np.random.default_rng(seed)
        self.total = np.full(count, np.nan)  # latest total priority each shard reported (nan: none yet)
        self.size = np.full(count, np.nan)   # latest size each shard reported
        self.up = np.ones(count, bool)
        self._last_reply = np.full(count, -np.inf)
        self._last_probe = np.full(count, -np.inf)
        self.counts = [Counter() for _ in range(count)]  # per shard, see COUNTS

    def reachable(self) -> np.ndarray:
        """Indices of the shards the draw uses: those up, or all when none is."""
        up = np.flatnonzero(self.up)
        return up if len(up) else np.arange(self.count)

    def _filled(self, values: np.ndarray, shards: np.ndarray) -> np.ndarray:
        """Values of `shards`; a shard that has not reported yet counts as the mean of those
        that have (all equal before the first reply)."""
        v = values[shards]
        known = v[~np.isnan(v)]
        return np.where(np.isnan(v), known.mean() if len(known) else 1.0, v)

    def choose(self) -> int:
        """The shard for the next request, drawn with probability T_s / T over reachable shards."""
        shards = self.reachable()
        if len(shards) == 1:
            return int(shards[0])
        cum = np.cumsum(self._filled(self.total, shards))
        i = int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))
        return int(shards[min(i, len(shards) - 1)])

    def probe_due(self, now: float) -> Optional[int]:
        """A left-out shard to send one probe request to now (one per retry_s), if any."""
        if not self.up.any():
            return None  # every shard is asked anyway
        for s in np.flatnonzero(~self.up):
            if now - self._last_probe[s] >= self.retry_s:
                self._last_probe[s] = now
                self.counts[s]["probes"] += 1
                return int(s)
        return None

    def requested(self, shard: int) -> None:
        self.counts[shard]["requests"] += 1

    def replied(self, shard: int, now: float) -> None:
        """Shard `shard` answered (a batch, or an error such as rate_limited): it is up."""
        self.counts[shard]["replies"] += 1
        self._last_reply[shard] = now
        self.up[shard] = True

    def timed_out(self, shard: int, sent: float, now: float) -> None:
        """A request sent to `shard` at `sent` went unanswered; with no reply since, the
        shard leaves the draw."""
        self.counts[shard]["timeouts"] += 1
        if self._last_reply[shard] < sent:
            self.up[shard] = False
            self._last_probe[shard] = now

    def global_probability(self, shard: int, probability: np.ndarray) -> np.ndarray:
        """p_i / T for rows drawn from `shard` with probability p_i / T_s within it."""
        shards = self.reachable()
        return probability * (self.total[shard] / self._filled(self.total, shards).sum())

    def take_batch(self, shard: int, total_priority: float, size: int, probability: np.ndarray, beta: float,
                   batch_size: int, now: float) -> np.ndarray:
        """Record a sample reply's totals; returns the global importance weights of its rows."""
        self.replied(shard, now)
        self.total[shard], self.size[shard] = total_priority, size
        self.counts[shard]["batches"] += len(probability) // batch_size
        global_size = self._filled(self.size, self.reachable()).sum()
        return importance_weights(self.global_probability(shard, probability), global_size, beta, batch_size)

    def report(self) -> dict:
        """Per-shard counters and state, flat (`shard.<i>.<name>`), for the learner's reports."""
        values: dict = {}
        for s in range(self.count):
            values.update({f"shard.{s}.{k}": self.counts[s][k] for k in COUNTS})
            values[f"shard.{s}.up"] = bool(self.up[s])
            values[f"shard.{s}.total_priority"] = None if np.isnan(self.total[s]) else float(self.total[s])
            values[f"shard.{s}.size"] = None if np.isnan(self.size[s]) else int(self.size[s])
        return values
