"""Versioned weight broadcast: a PUB socket that actors SUBscribe to.

Every publication carries a version and the publish wall-clock time (for policy-lag
measurement). The latest weights are re-sent every `republish_s`, so actors that start
late or restart catch up without a handshake. PUB never blocks: a slow subscriber's
queue (HWM) drops old versions, which is what an actor wants anyway.
"""
from __future__ import annotations

import time
from typing import Optional

import zmq

from qfleet.common import messages as m
from qfleet.common.netspec import NetSpec, param_shapes
from qfleet.common.sockets import CurveKeys, bind, make_socket, publish


class WeightPublisher:
    def __init__(self, *, spec: NetSpec, host: str = "127.0.0.1", port: int = 0,
                 keys: Optional[CurveKeys] = None, republish_s: float = 1.0, epoch: int = 0,
                 ctx: Optional[zmq.Context] = None):
        self.schema = m.weights_schema(param_shapes(spec))
        self._sock = make_socket(ctx or zmq.Context.instance(), zmq.PUB, hwm=4, server=True, keys=keys)
        self.endpoint = bind(self._sock, host, port)
        self.republish_s = republish_s
        self.epoch = epoch
        self.version = -1
        self._frames: Optional[list] = None
        self._bytes = 0
        self._last_send = 0.0
        self.published = 0
        self.sends = 0          # publications and re-publications handed to the socket
        self.bytes_sent = 0     # their bytes, once per send: the socket sends a copy to each subscriber

    def publish(self, params: dict, version: int) -> None:
        self.version = version
        self._frames = m.pack(self.schema, m.Weights(version, time.time(), params, self.epoch))
        self._bytes = sum(memoryview(f).nbytes for f in self._frames)
        self._send()
        self.published += 1

    def maybe_republish(self) -> None:
        if self._frames is not None and time.monotonic() - self._last_send >= self.republish_s:
            self._send()

    def _send(self) -> None:
        if publish(self._sock, self._frames):
            self.sends += 1
            self.bytes_sent += self._bytes
        self._last_send = time.monotonic()

    def close(self) -> None:
        self._sock.close(0)
