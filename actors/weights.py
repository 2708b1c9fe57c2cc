"""The actor's weight subscription: newest version wins, bad messages are counted.

`poll` never blocks: it drains what has arrived and returns the newest weights newer than
the ones in use, ordered by (epoch, version): older and duplicate versions, e.g.
republications, are skipped, and a restarted learner (higher epoch) always wins.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import zmq

from qfleet.common import messages as m
from qfleet.common.codec import decode
from qfleet.common.errors import CodecError
from qfleet.common.netspec import NetSpec, param_shapes
from qfleet.common.sockets import CurveKeys, make_socket

MAX_DRAIN = 64  # messages read per poll; the SUB high-water mark keeps fewer than this waiting


class WeightSubscriber:
    def __init__(self, *, spec: NetSpec, endpoint: Optional[str] = None, keys: Optional[CurveKeys] = None,
                 max_message_bytes: int = 256 * 1024 * 1024):
        self._schemas = {m.WEIGHTS: m.weights_schema(param_shapes(spec))}
        self._sock = make_socket(zmq.Context.instance(), zmq.SUB, hwm=4, keys=keys,
                                 max_message_bytes=max_message_bytes)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.max_message_bytes = max_message_bytes
        self.version = -1
        self.epoch = -1
        self.rejected: Counter = Counter()
        self.received = 0
        if endpoint:
            self.connect(endpoint)

    @property
    def socket(self) -> zmq.Socket:
        """The subscription socket, for a caller that waits on it together with others (poll only)."""
        return self._sock

    def connect(self, endpoint: str) -> None:
        self._sock.connect(endpoint)

    def poll(self) -> Optional[m.Weights]:
        newest: Optional[m.Weights] = None
        for _ in range(MAX_DRAIN):
            try:
                frames = self._sock.recv_multipart(copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            self.received += 1
            try:
                weights = m.unpack(m.Weights, decode(frames, self._schemas, max_bytes=self.max_message_bytes))
            except CodecError as exc:
                self.rejected[exc.reason] += 1
                continue
            key = (weights.epoch, weights.version)
            if key > (self.epoch, self.version) and (newest is None or key > (newest.epoch, newest.version)):
                newest = weights
        if newest is not None:
            self.epoch, self.version = newest.epoch, newest.version
        return newest

    def close(self) -> None:
        self._sock.close(0)
