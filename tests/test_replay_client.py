"""The replay client against a real in-process server: a reply that arrives after its
request timed out must not trap the next request (it used to spin forever)."""
import threading

import numpy as np
import pytest

from qfleet.common.config import ReplayConfig
from qfleet.common.envs import EnvSpec
from qfleet.common.errors import QfleetTimeout
from qfleet.replay_server.build import build_replay_server
from qfleet.replay_server.client import ReplayClient


def test_a_late_stats_reply_does_not_trap_the_next_request():
    spec = EnvSpec("CartPole-v1", (4,), np.dtype(np.float32), 2, 475.0, 500)
    server = build_replay_server(ReplayConfig(capacity=64, min_size_to_sample=1), spec, max_sample_batch=8)
    client = ReplayClient(obs_shape=(4,), obs_dtype=np.float32, request_endpoint=server.request_endpoint)
    stop = threading.Event()
    serving = threading.Thread(target=lambda: [server.step(0.01) for _ in iter(stop.is_set, True)])
    try:
        with pytest.raises(QfleetTimeout):
            client.stats(timeout=0.05)  # nobody serves yet: this reply will come late
        serving.start()
        answered = []
        waiter = threading.Thread(target=lambda: answered.append(client.stats(timeout=2.0)), daemon=True)
        waiter.start()
        waiter.join(10)
        assert not waiter.is_alive(), "stats() never returned after a late reply"
        assert answered and answered[0]["capacity"] == 64
    finally:
        stop.set()
        if serving.is_alive():
            serving.join(5)
        client.close()
        server.close()
