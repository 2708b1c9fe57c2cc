"""A per-node weights relay: SUBscribes to the learner's versioned weights and rePUBlishes
them to the actors of its node, so the learner sends each version once per node instead of
once per actor.

    learner PUB --(one connection per node)--> relay SUB | relay PUB --> actors' SUB

    relay = WeightsRelay(spec=spec, upstream=learner_endpoint, keys=keys, republish_s=1.0)
    relay.serve(should_stop)        # or relay.step(timeout_s) from the caller's own loop

Both sides use the run's CURVE keys: the relay is a client of the learner and a server to
its actors. Every message is decoded and checked against the network's weights schema
before it goes on; a malformed one is counted by reason and dropped, never forwarded. Only
versions newer than the last forwarded, ordered by (epoch, version) as actors order them,
are forwarded (the learner's own re-publications are not), and the relay re-publishes its
latest message every `republish_s` so late or restarted actors catch up. Messages are
forwarded as received, frame for frame: the learner's `published_at` stays, so the
actors' publish-to-use lag covers the hop through the relay.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Optional

import zmq

from qfleet.actors.weights import WeightsReader
from qfleet.common.netspec import NetSpec
from qfleet.common.sockets import CurveKeys, bind, make_socket, publish


class WeightsRelay:
    def __init__(self, *, spec: NetSpec, upstream: str, host: str = "127.0.0.1", port: int = 0,
                 keys: Optional[CurveKeys] = None, republish_s: float = 1.0,
                 max_message_bytes: int = 256 * 1024 * 1024, ctx: Optional[zmq.Context] = None):
        if not republish_s > 0:
            raise ValueError(f"republish_s = {republish_s} must be > 0")
        ctx = ctx or zmq.Context.instance()
        self._reader = WeightsReader(spec, max_message_bytes)
        self.republish_s = republish_s
        self.upstream = upstream
        self._sub = make_socket(ctx, zmq.SUB, hwm=4, keys=keys, max_message_bytes=max_message_bytes)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(upstream)
        self._pub = make_socket(ctx, zmq.PUB, hwm=4, server=True, keys=keys)
        self.endpoint = bind(self._pub, host, port)
        self.epoch = self.version = -1
        self._frames: Optional[list] = None
        self._last_send = 0.0
        self.forwarded = 0
        self.republished = 0
        self.skipped = 0  # valid but not newer (the learner's re-publications, reordered versions)

    def serve(self, should_stop: Callable[[], bool], poll_s: float = 0.05) -> None:
        while not should_stop():
            self.step(poll_s)

    def step(self, timeout_s: float) -> None:
        """Wait up to timeout_s (less when a re-publication is due) for weights, forward
        the newest valid one, and re-publish the latest when republish_s has passed."""
        wait = timeout_s
        if self._frames is not None:
            wait = min(wait, max(0.0, self._last_send + self.republish_s - time.monotonic()))
        if self._sub.poll(int(wait * 1000), zmq.POLLIN):
            newest = self._drain()
            if newest is not None:
                self._frames = newest
                self._send()
                self.forwarded += 1
                return
        if self._frames is not None and time.monotonic() - self._last_send >= self.republish_s:
            self._send()
            self.republished += 1

    @property
    def received(self) -> int:
        return self._reader.received

    @property
    def rejected(self) -> Counter:
        """Reason -> malformed messages dropped."""
        return self._reader.rejected

    def _drain(self) -> Optional[list]:
        newest: Optional[list] = None
        for frames, weights in self._reader.drain(self._sub):
            key = (weights.epoch, weights.version)
            if key <= (self.epoch, self.version):
                self.skipped += 1
                continue
            self.epoch, self.version = key
            newest = frames
        return newest

    def _send(self) -> None:
        publish(self._pub, self._frames)
        self._last_send = time.monotonic()

    def stats(self) -> dict:
        return {"received": self.received, "forwarded": self.forwarded, "republished": self.republished,
                "skipped": self.skipped, "rejected": sum(self.rejected.values()), "version": self.version,
                "epoch": self.epoch, **{f"rejected.{k}": v for k, v in self.rejected.items()}}

    def close(self) -> None:
        self._sub.close(0)
        self._pub.close(0)
