"""A thin client for the replay server, for actors (insert) and the learner (sample...).

Cheap to build and safe to send to another process: sockets are created lazily in the
process that first uses them (after pickling only the endpoints and keys travel). Every
call takes `timeout=`; failures raise qfleet's own errors: `QfleetTimeout` when the server
does not answer, `RemoteError` when it answers with an error (rate_limited, bad_key, ...).
"""
from __future__ import annotations

import itertools
import os
import time
from typing import Optional, Sequence

import numpy as np
import zmq

from qfleet.common import messages as m
from qfleet.common.codec import decode
from qfleet.common.errors import CodecError, RemoteError
from qfleet.common.sockets import CurveKeys, make_socket, recv_frames, send_frames

MAX_INBOX = 256  # replies kept for requests other than the one being waited for


class ReplayClient:
    def __init__(self, *, obs_shape: Sequence[int], obs_dtype, insert_endpoint: Optional[str] = None,
                 request_endpoint: Optional[str] = None, keys: Optional[CurveKeys] = None,
                 timeout: float = 10.0, insert_hwm: int = 16):
        self.obs_shape = tuple(obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.insert_endpoint = insert_endpoint
        self.request_endpoint = request_endpoint
        self.keys = keys
        self.timeout = timeout
        self.insert_hwm = insert_hwm
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._push: Optional[zmq.Socket] = None
        self._dealer: Optional[zmq.Socket] = None
        self._ids = itertools.count(1)
        self._inbox: dict[int, object] = {}
        self._schemas = m.replay_schemas(self.obs_shape, self.obs_dtype)

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def _socket(self, kind: int) -> zmq.Socket:
        if self._pid != os.getpid():  # inherited across fork: never share sockets between processes
            self._reset()
        if kind == zmq.PUSH:
            if self._push is None:
                if not self.insert_endpoint:
                    raise ValueError("this ReplayClient has no insert_endpoint")
                self._push = make_socket(zmq.Context.instance(), zmq.PUSH, hwm=self.insert_hwm, keys=self.keys)
                self._push.connect(self.insert_endpoint)
            return self._push
        if self._dealer is None:
            if not self.request_endpoint:
                raise ValueError("this ReplayClient has no request_endpoint")
            self._dealer = make_socket(zmq.Context.instance(), zmq.DEALER, hwm=1024, keys=self.keys)
            self._dealer.connect(self.request_endpoint)
        return self._dealer

    # -- actors --------------------------------------------------------------------------
    @property
    def insert_socket(self) -> zmq.Socket:
        """The insert socket, for a caller that waits on it together with others (poll only)."""
        return self._socket(zmq.PUSH)

    def insert(self, batch: m.InsertBatch | m.InsertFrames, timeout: Optional[float] = None) -> None:
        """Queue a batch for the server; QfleetTimeout if backpressure lasts `timeout` s."""
        frames = m.pack(self._schemas[m.INSERT_FRAMES if isinstance(batch, m.InsertFrames) else m.INSERT], batch)
        send_frames(self._socket(zmq.PUSH), frames, self._t(timeout), "insert")

    # -- learner -------------------------------------------------------------------------
    @property
    def request_socket(self) -> zmq.Socket:
        """The request socket, for a caller that waits on it together with others (poll only)."""
        return self._socket(zmq.DEALER)

    def request_sample(self, batch_size: int, beta: float, num_batches: int = 1,
                       timeout: Optional[float] = None) -> int:
        """Send a sample request without waiting; returns its id for `receive`."""
        request_id = next(self._ids)
        self._send(m.SAMPLE, m.SampleRequest(request_id, batch_size, float(beta), num_batches), timeout)
        return request_id

    def sample(self, batch_size: int, beta: float = 0.4, timeout: Optional[float] = None,
               num_batches: int = 1) -> m.SampleBatch:
        return self.wait_for(self.request_sample(batch_size, beta, num_batches), timeout)

    def update_priorities(self, keys: np.ndarray, priority: np.ndarray, timeout: Optional[float] = None) -> None:
        self._send(m.PRIORITIES, m.PriorityUpdate(keys, priority), timeout)

    def stats(self, timeout: Optional[float] = None) -> dict:
        request_id = next(self._ids)
        self._send(m.STATS, m.StatsRequest(request_id), timeout)
        return self.wait_for(request_id, timeout).values

    def snapshot(self, timeout: Optional[float] = None) -> dict:
        request_id = next(self._ids)
        self._send(m.SNAPSHOT, m.SnapshotRequest(request_id), timeout)
        return self.wait_for(request_id, timeout).values

    def receive(self, timeout: Optional[float] = None):
        """The next reply of any id: (request_id, SampleBatch | StatsReply | RemoteError)."""
        if self._inbox:
            request_id = next(iter(self._inbox))
            return request_id, self._inbox.pop(request_id)
        return self._read(self._t(timeout))

    def _read(self, timeout: float):
        frames = recv_frames(self._socket(zmq.DEALER), timeout, "reply from the replay server")
        try:
            msg = decode(frames, self._schemas)
        except CodecError as exc:
            return -1, RemoteError("bad_reply", str(exc))
        if msg.type == m.ERROR:
            err = m.unpack(m.ErrorReply, msg)
            return err.request_id, RemoteError(err.reason, err.detail)
        cls = m.SampleBatch if msg.type == m.SAMPLE_BATCH else m.StatsReply
        reply = m.unpack(cls, msg)
        problem = _sample_problem(reply) if cls is m.SampleBatch else None
        if problem:
            return reply.request_id, RemoteError("bad_reply", problem)
        return reply.request_id, reply

    def wait_for(self, request_id: int, timeout: Optional[float] = None):
        """The reply to one request, within `timeout` overall. Replies to other requests are
        kept for `receive` (a bounded number: late replies to abandoned requests age out)."""
        if request_id in self._inbox:
            return self._raise_or_return(self._inbox.pop(request_id))
        deadline = time.monotonic() + self._t(timeout)
        while True:
            rid, reply = self._read(max(0.0, deadline - time.monotonic()))
            if rid == request_id or rid == -1:
                return self._raise_or_return(reply)
            self._inbox[rid] = reply
            while len(self._inbox) > MAX_INBOX:
                self._inbox.pop(next(iter(self._inbox)))

    @staticmethod
    def _raise_or_return(reply):
        if isinstance(reply, RemoteError):
            raise reply
        return reply

    def _send(self, mtype: str, msg, timeout: Optional[float] = None) -> None:
        send_frames(self._socket(zmq.DEALER), m.pack(self._schemas[mtype], msg), self._t(timeout), mtype)

    def _t(self, timeout: Optional[float]) -> float:
        return self.timeout if timeout is None else timeout

    def close(self, linger_s: Optional[float] = None) -> None:
        """Close the sockets; `linger_s` bounds how long unsent inserts may still go out."""
        for sock in (self._push, self._dealer):
            if sock is not None:
                sock.close(None if linger_s is None else int(linger_s * 1000))
        self._push = self._dealer = None


def _sample_problem(batch: m.SampleBatch) -> Optional[str]:
    """What makes a decoded sample batch unusable (the codec checked types and shapes)."""
    if not batch.total_priority > 0 or batch.size < 1:
        return f"sample batch from a shard with total priority {batch.total_priority} and size {batch.size}"
    p = batch.probability
    if len(p) and not (p.min() > 0 and p.max() <= 1):
        return "sample batch with probabilities outside (0, 1]"
    return None
