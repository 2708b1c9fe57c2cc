"""Shared fixtures: small CartPole-shaped transition batches and a replay server subprocess."""
from __future__ import annotations

import contextlib
import os
import sys
import threading

import numpy as np
import pytest

OBS_SHAPE = (4,)


def make_batch(n: int, seed: int = 0, actor_id: int = 0, seq: int = 0, obs_offset: float = 0.0):
    """A valid InsertBatch of n CartPole-shaped transitions."""
    from qfleet.common.messages import InsertBatch

    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, *OBS_SHAPE)).astype(np.float32) + obs_offset
    return InsertBatch(actor_id, seq, 0, obs, rng.integers(0, 2, n).astype(np.int32),
                       rng.standard_normal(n).astype(np.float32), obs + 1.0,
                       np.full(n, 0.97, np.float32))


@pytest.fixture
def batch_factory():
    return make_batch


def python_env() -> dict:
    """Environment for subprocesses: unbuffered output. qfleet itself comes from the
    installed package (`make test` installs this checkout editable), never a PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def qfleet_cmd():
    """argv prefix that runs the qfleet CLI of this checkout."""
    return [sys.executable, "-m", "qfleet"]


@contextlib.contextmanager
def replay_server_in_thread(**server_kwargs):
    """A real ReplayServer over a small prioritized CartPole-shaped table (capacity 256, no
    rate limiting), serving from a thread of this process; closed on exit."""
    from qfleet.replay_server.rate_limiter import RateLimiter
    from qfleet.replay_server.server import ReplayServer
    from qfleet.replay_server.table import Table

    limiter = RateLimiter(min_size_to_sample=1, samples_per_insert=0.0, error_buffer=0.0,
                          max_insert_batch=64, max_sample_batch=64)
    table = Table(capacity=256, obs_shape=OBS_SHAPE, obs_dtype=np.float32, num_actions=2, prioritized=True,
                  alpha=0.6, limiter=limiter)
    srv = ReplayServer(table=table, max_sample_batch=64, **server_kwargs)
    stop = threading.Event()
    thread = threading.Thread(target=srv.serve, args=(stop.is_set, 0.01), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        stop.set()
        thread.join(5)
        srv.close()
