"""The actor's weight subscription: newest version wins, bad messages are counted.

`poll` never blocks: it drains what has arrived and returns the newest weights newer than
the ones in use, ordered by (epoch, version): older and duplicate versions, e.g.
republications, are skipped, and a restarted learner (higher epoch) always wins.

With a `fallback` endpoint, `endpoint` is the primary (the node's weights relay, see
actors.weights_relay) and `fallback` the learner: when no valid message has come from
the primary for `fallback_after_s` (a few of the relay's republish intervals), a second
socket connects to the fallback; as soon as the primary delivers again, it disconnects.
`source` says where the last valid message came from ('primary' or 'fallback').
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Iterator, Optional

import zmq

from qfleet.common import messages as m
from qfleet.common.codec import decode
from qfleet.common.errors import CodecError
from qfleet.common.netspec import NetSpec, param_shapes
from qfleet.common.sockets import CurveKeys, make_socket

MAX_DRAIN = 64  # messages read per poll; the SUB high-water mark keeps fewer than this waiting


class WeightsReader:
    """Reads and validates the Weights messages waiting on SUB sockets; counts them all
    (`received`) and the malformed ones by reason (`rejected`)."""

    def __init__(self, spec: NetSpec, max_message_bytes: int):
        self.schemas = {m.WEIGHTS: m.weights_schema(param_shapes(spec))}
        self.max_message_bytes = max_message_bytes
        self.received = 0
        self.rejected: Counter = Counter()

    def drain(self, sock: zmq.Socket) -> Iterator[tuple[list, m.Weights]]:
        """(frames, weights) of each valid message waiting (at most MAX_DRAIN read); never blocks."""
        for _ in range(MAX_DRAIN):
            try:
                frames = sock.recv_multipart(copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self.received += 1
            try:
                weights = m.unpack(m.Weights, decode(frames, self.schemas, max_bytes=self.max_message_bytes))
            except CodecError as exc:
                self.rejected[exc.reason] += 1
                continue
            yield frames, weights


class WeightSubscriber:
    def __init__(self, *, spec: NetSpec, endpoint: Optional[str] = None, keys: Optional[CurveKeys] = None,
                 max_message_bytes: int = 256 * 1024 * 1024, fallback: Optional[str] = None,
                 fallback_after_s: float = 3.0):
        if fallback and not fallback_after_s > 0:
            raise ValueError(f"fallback_after_s = {fallback_after_s} must be > 0")
        self._reader = WeightsReader(spec, max_message_bytes)
        self._sock = self._subscriber(keys, max_message_bytes)
        self._fallback_sock = self._subscriber(keys, max_message_bytes) if fallback else None
        self.max_message_bytes = max_message_bytes
        self.fallback = fallback
        self.fallback_after_s = fallback_after_s
        self.using_fallback = False
        self.fallbacks = 0          # times the fallback was connected
        self.source: Optional[str] = None  # 'primary' or 'fallback': where the last valid message came from
        self._primary_seen = time.monotonic()  # last valid primary message (or the start)
        self.version = -1
        self.epoch = -1
        self.rejected = self._reader.rejected  # reason -> malformed messages
        if endpoint:
            self.connect(endpoint)

    @staticmethod
    def _subscriber(keys: Optional[CurveKeys], max_message_bytes: int) -> zmq.Socket:
        sock = make_socket(zmq.Context.instance(), zmq.SUB, hwm=4, keys=keys, max_message_bytes=max_message_bytes)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        return sock

    @property
    def socket(self) -> zmq.Socket:
        """The primary subscription socket, for a caller that waits on it together with
        others (poll only); `sockets` has the fallback's too."""
        return self._sock

    @property
    def sockets(self) -> tuple[zmq.Socket, ...]:
        return (self._sock,) if self._fallback_sock is None else (self._sock, self._fallback_sock)

    @property
    def received(self) -> int:
        return self._reader.received

    def connect(self, endpoint: str) -> None:
        self._sock.connect(endpoint)

    def poll(self) -> Optional[m.Weights]:
        newest, from_primary = self._drain(self._sock, None, "primary")
        now = time.monotonic()
        if from_primary:
            self._primary_seen = now
            if self.using_fallback:
                self._fallback_sock.disconnect(self.fallback)
                self.using_fallback = False
        elif self._fallback_sock is not None and not self.using_fallback \
                and now - self._primary_seen > self.fallback_after_s:
            self._fallback_sock.connect(self.fallback)
            self.using_fallback = True
            self.fallbacks += 1
        if self.using_fallback:
            newest, _ = self._drain(self._fallback_sock, newest, "fallback")
        if newest is not None:
            self.epoch, self.version = newest.epoch, newest.version
        return newest

    def _drain(self, sock: zmq.Socket, newest: Optional[m.Weights], source: str) -> tuple[Optional[m.Weights], bool]:
        """(newest weights newer than those in use, whether any valid message came)."""
        valid = False
        for _, weights in self._reader.drain(sock):
            valid = True
            self.source = source
            key = (weights.epoch, weights.version)
            if key > (self.epoch, self.version) and (newest is None or key > (newest.epoch, newest.version)):
                newest = weights
        return newest, valid

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)
