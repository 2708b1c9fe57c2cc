"""Sample prefetching: several requests always in flight, so updates never wait on a round trip.

A background thread owns the replay client's request socket (ZeroMQ sockets are not
thread-safe): it keeps `in_flight` sample requests open, splits each multi-batch reply
into batches for a bounded queue, and sends the priority updates the training thread
hands it (coalesced into one message when several are waiting). Lost requests (a replay
server restart) are re-sent after `retry_s`; if nothing arrives for `timeout_s`, `get`
raises QfleetTimeout naming the replay server.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Callable, Optional

import numpy as np

from qfleet.common.errors import QfleetTimeout, RemoteError
from qfleet.common.messages import TRANSITION_FIELDS
from qfleet.replay_server.client import ReplayClient

RETRYABLE = ("rate_limited", "busy")
log = logging.getLogger("qfleet.learner")


class Prefetcher:
    def __init__(self, client: ReplayClient, *, batch_size: int, batches_per_request: int, in_flight: int,
                 timeout_s: float, retry_s: float = 3.0):
        self.client = client
        self.batch_size, self.per_request, self.in_flight = batch_size, batches_per_request, in_flight
        self.timeout_s, self.retry_s = timeout_s, retry_s
        self.beta = 0.4
        # Unbounded on purpose: what is queued plus what is requested never exceeds
        # `capacity`, and the thread must never block on a full queue while replies wait on
        # the socket (the wait would be counted as sample latency).
        self.capacity = in_flight * batches_per_request
        self._batches: queue.Queue = queue.Queue()
        self._priorities: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._last_reply = time.monotonic()
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
        replay server counts as gone)."""
        started = time.monotonic()
        try:
            while not should_stop():
                if self._error is not None:
                    raise self._error
                try:
                    return self._batches.get(timeout=0.05)
                except queue.Empty:
                    if time.monotonic() - started > self.timeout_s:
                        raise QfleetTimeout(f"no sample from the replay server for {self.timeout_s:g} s "
                                            f"(last reply {time.monotonic() - self._last_reply:.1f} s ago)") from None
            return None
        finally:
            self.wait_s += time.monotonic() - started

    def send_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        self._priorities.put((keys, priorities))

    # -- the background thread -------------------------------------------------------------
    def _run(self) -> None:
        pending: dict[int, float] = {}  # request id -> time sent
        try:
            while not self._stop.is_set():
                self._flush_priorities()
                now = time.monotonic()
                for rid, sent in list(pending.items()):
                    if now - sent > self.retry_s:  # lost with a restarted server: ask again
                        del pending[rid]
                room = self.capacity - self._batches.qsize() - len(pending) * self.per_request
                while len(pending) < self.in_flight and room >= self.per_request:
                    pending[self.client.request_sample(self.batch_size, self.beta, self.per_request)] = now
                    room -= self.per_request
                try:
                    rid, reply = self.client.receive(timeout=0.02)
                except QfleetTimeout:
                    continue
                sent = pending.pop(rid, None)
                if isinstance(reply, RemoteError):
                    if reply.reason in RETRYABLE:
                        self.rate_limited += 1
                    elif sent is None:  # not about a pending sample (e.g. a rejected priority update)
                        self.errors += 1
                        log.warning("replay server: %s", reply)
                    else:
                        raise reply     # our own sample request is wrong: retrying cannot help
                    continue
                self._last_reply = time.monotonic()
                if sent is not None:
                    self.latencies.append(self._last_reply - sent)
                self._split(reply)
        except BaseException as exc:  # surfaced to the training thread by get()
            self._error = exc

    def _split(self, reply) -> None:
        fields = ("keys", *TRANSITION_FIELDS, "weight")
        b = self.batch_size
        for i in range(self.per_request):
            self._batches.put({f: getattr(reply, f)[i * b:(i + 1) * b] for f in fields})

    def _flush_priorities(self) -> None:
        items = []
        while True:
            try:
                items.append(self._priorities.get_nowait())
            except queue.Empty:
                break
        if items:
            keys = np.concatenate([k for k, _ in items])
            priorities = np.concatenate([p for _, p in items]).astype(np.float32, copy=False)
            self.client.update_priorities(keys, priorities, timeout=1.0)
