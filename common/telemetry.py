"""Progress reports from every component to the launcher (PUSH -> the launcher's PULL).

Reports are small Report messages (metrics as metadata, finished episodes as arrays).
Sending never blocks: if the launcher is slow or gone, a report is dropped rather than
stalling an actor or the learner.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import zmq

from qfleet.common import messages as m
from qfleet.common.sockets import CurveKeys, make_socket, send_frames, send_nowait


def component_name(role: str, index: int = 0) -> str:
    """How logs, faults and files name a component: 'replay', 'learner', 'actor-3'."""
    return role if role != "actor" else f"actor-{index}"


class Telemetry:
    def __init__(self, endpoint: Optional[str], role: str, index: int = 0, keys: Optional[CurveKeys] = None):
        self.role, self.index = role, index
        self._pid = os.getpid()  # tells a restarted component's reports from its predecessor's
        self._sock = None
        if endpoint:
            self._sock = make_socket(zmq.Context.instance(), zmq.PUSH, hwm=256, keys=keys)
            self._sock.connect(endpoint)
        self.dropped = 0

    def report(self, values: dict, episode_returns: Optional[np.ndarray] = None,
               episode_lengths: Optional[np.ndarray] = None, lag_ms: Optional[np.ndarray] = None) -> None:
        if self._sock is None:
            return
        msg = m.Report(self.role, self.index, {**values, "pid": self._pid},
                       None if episode_returns is None else np.asarray(episode_returns, np.float32),
                       None if episode_lengths is None else np.asarray(episode_lengths, np.int32),
                       None if lag_ms is None else np.asarray(lag_ms, np.float32))
        try:
            send_nowait(self._sock, m.pack(m.REPORT_SCHEMA, msg))
        except zmq.Again:
            self.dropped += 1

    def send_file(self, name: str, path: str, chunk_bytes: int = 1 << 20, timeout_s: float = 10.0) -> None:
        """Ship a file to the launcher in chunks (blocking: a file must arrive whole)."""
        if self._sock is None:
            return
        data = np.fromfile(path, np.uint8)
        for offset in range(0, max(len(data), 1), chunk_bytes):
            msg = m.Report(self.role, self.index, {"event": "file", "name": name, "offset": offset,
                                                   "total": len(data), "pid": self._pid},
                           data=data[offset:offset + chunk_bytes])
            send_frames(self._sock, m.pack(m.REPORT_SCHEMA, msg), timeout_s, f"file {name}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=500)  # let a final report out
