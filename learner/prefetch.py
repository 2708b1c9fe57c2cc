"""Sample prefetching: several requests always in flight, so updates never wait on a round trip.

A background thread owns the replay clients' request sockets (ZeroMQ sockets are not
thread-safe): it keeps `in_flight` sample requests open, splits each multi-batch reply
into batches for a bounded queue, and sends the priority updates the training thread
hands it (coalesced into one message per shard when several are waiting). Lost requests
(a replay server restart) are re-sent after `retry_s`; if no answer at all arrives for
`timeout_s`, `get` raises QfleetTimeout naming the replay server. A 'rate_limited' answer
is an answer: a server still filling up to min_size_to_sample (slow actors, a large
minimum) is alive, and the learner waits for it rather than dying.

With several replay shards (one client each), every request goes to one shard drawn by
`learner.shards.ShardSet` (in proportion to its total priority), each batch carries the
index of its shard (`batch["shard"]`) and global importance weights, and its priority
update goes back to that shard. A shard that stops answering leaves the draw while the
others serve, and is probed until it answers again; `get` times out only when no shard
answers. With one client everything is as with a single replay server.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict, deque
from typing import Callable, Optional, Sequence

import numpy as np
import zmq

from qfleet.common.errors import QfleetTimeout, RemoteError
from qfleet.common.messages import TRANSITION_FIELDS
from qfleet.learner.shards import ShardSet
from qfleet.replay_server.client import ReplayClient

RETRYABLE = ("rate_limited", "busy")
SEND_TIMEOUT_S = 0.5   # a request or priority update a shard's socket cannot take by then is given up
MAX_READS = 64         # replies read from one shard before looking at the others
log = logging.getLogger("qfleet.learner")


class Prefetcher:
    def __init__(self, clients: Sequence[ReplayClient], *, batch_size: int, batches_per_request: int,
                 in_flight: int, timeout_s: float, retry_s: float = 3.0, seed: int = 0):
        if not clients:
            raise ValueError("a Prefetcher needs at least one replay client")
        self.clients = list(clients)
        self.shards = ShardSet(len(self.clients), seed=seed, retry_s=retry_s)
        self.batch_size, self.per_request, self.in_flight = batch_size, batches_per_request, in_flight
        self.timeout_s, self.retry_s = timeout_s, retry_s
        self.beta = 0.4
        # Unbounded on purpose: what is queued plus what is requested never exceeds
        # `capacity` (plus one probe per left-out shard), and the thread must never block on
        # a full queue while replies wait on the sockets (the wait would count as latency).
        self.capacity = in_flight * batches_per_request
        self._batches: queue.Queue = queue.Queue()
        self._priorities: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._last_reply = time.monotonic()   # last batch
        self._last_heard = self._last_reply     # last answer of any kind (a refusal too)
        self.latencies: deque = deque(maxlen=2048)  # seconds from request to reply
        self.wait_s = 0.0                          # time the training thread spent waiting
        self.rate_limited = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="qfleet-prefetch")

    def start(self) -> "Prefetcher":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def get(self, should_stop: Callable[[], bool] = lambda: False) -> Optional[dict[str, np.ndarray]]:
        """The next batch, or None once `should_stop()`; waits at most timeout_s (then the
        replay server, or every shard, counts as gone)."""
        started = time.monotonic()
        try:
            while not should_stop():
                if self._error is not None:
                    raise self._error
                try:
                    return self._batches.get(timeout=0.05)
                except queue.Empty:
                    now = time.monotonic()
                    if now - max(started, self._last_heard) > self.timeout_s:
                        where = "the replay server" if len(self.clients) == 1 else \
                            f"any of the {len(self.clients)} replay shards"
                        raise QfleetTimeout(f"no sample from {where} and no answer for {self.timeout_s:g} s "
                                            f"(last batch {now - self._last_reply:.1f} s ago)") from None
            return None
        finally:
            self.wait_s += time.monotonic() - started

    def send_priorities(self, keys: np.ndarray, priorities: np.ndarray, shard: int = 0) -> None:
        """Priorities for keys of a batch from `shard` (its `batch["shard"]`)."""
        self._priorities.put((shard, keys, priorities))

    # -- the background thread -------------------------------------------------------------
    def _run(self) -> None:
        pending: dict[tuple[int, int], float] = {}  # (shard, request id) -> time sent
        poller = zmq.Poller()
        sockets = {c.request_socket: s for s, c in enumerate(self.clients)}
        for sock in sockets:
            poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                self._flush_priorities()
                now = time.monotonic()
                for (shard, rid), sent in list(pending.items()):
                    if now - sent > self.retry_s:  # lost with a restarted server: ask again
                        del pending[(shard, rid)]
                        self.shards.timed_out(shard, sent, now)
                room = self.capacity - self._batches.qsize() - len(pending) * self.per_request
                probe = self.shards.probe_due(now) if room >= self.per_request else None
                if probe is not None:
                    self._request(probe, pending, now)
                    room -= self.per_request
                while len(pending) < self.in_flight and room >= self.per_request:
                    self._request(self.shards.choose(), pending, now)
                    room -= self.per_request
                for sock in dict(poller.poll(20)):
                    self._read(sockets[sock], pending)
        except BaseException as exc:  # surfaced to the training thread by get()
            self._error = exc

    def _request(self, shard: int, pending: dict, now: float) -> None:
        try:
            rid = self.clients[shard].request_sample(self.batch_size, self.beta, self.per_request,
                                                     timeout=SEND_TIMEOUT_S)
        except QfleetTimeout:  # its queue is full: the shard is gone for now
            self.shards.timed_out(shard, now, now)
            return
        pending[(shard, rid)] = now
        self.shards.requested(shard)

    def _read(self, shard: int, pending: dict) -> None:
        for _ in range(MAX_READS):
            try:
                rid, reply = self.clients[shard].receive(timeout=0)
            except QfleetTimeout:
                return
            now = time.monotonic()
            sent = pending.pop((shard, rid), None)
            self._last_heard = now
            if isinstance(reply, RemoteError):
                if reply.reason in RETRYABLE:
                    self.rate_limited += 1
                    self.shards.counts[shard]["rate_limited"] += 1
                    self.shards.replied(shard, now)
                elif sent is None:  # not about a pending sample (e.g. a rejected priority update)
                    self.errors += 1
                    log.warning("replay server%s: %s", self._name(shard), reply)
                else:
                    raise reply     # our own sample request is wrong: retrying cannot help
                continue
            self._last_reply = now
            if sent is not None:
                self.latencies.append(now - sent)
            weight = self.shards.take_batch(shard, reply.total_priority, reply.size, reply.probability, self.beta,
                                            self.batch_size, now)
            self._split(reply, weight, shard)

    def _name(self, shard: int) -> str:
        return f" shard {shard}" if len(self.clients) > 1 else ""

    def _split(self, reply, weight: np.ndarray, shard: int) -> None:
        b = self.batch_size
        for i in range(self.per_request):
            rows = slice(i * b, (i + 1) * b)
            batch = {f: getattr(reply, f)[rows] for f in ("keys", *TRANSITION_FIELDS)}
            batch["weight"] = weight[rows]
            batch["shard"] = shard
            self._batches.put(batch)

    def _flush_priorities(self) -> None:
        by_shard: dict[int, list] = defaultdict(list)
        while True:
            try:
                shard, keys, priorities = self._priorities.get_nowait()
            except queue.Empty:
                break
            by_shard[shard].append((keys, priorities))
        for shard, items in by_shard.items():
            if len(self.clients) > 1 and not self.shards.up[shard]:
                self.shards.counts[shard]["priorities_dropped"] += sum(len(k) for k, _ in items)
                continue  # it is restarting from a snapshot: those keys are probably gone anyway
            keys = np.concatenate([k for k, _ in items])
            priorities = np.concatenate([p for _, p in items]).astype(np.float32, copy=False)
            try:
                self.clients[shard].update_priorities(keys, priorities, timeout=SEND_TIMEOUT_S if
                                                      len(self.clients) > 1 else 1.0)
            except QfleetTimeout:
                if len(self.clients) == 1:
                    raise
                self.shards.counts[shard]["priorities_dropped"] += len(keys)
