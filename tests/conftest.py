"""Shared fixtures: small CartPole-shaped transition batches and a replay server subprocess."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

OBS_SHAPE = (4,)


def make_batch(n: int, seed: int = 0, actor_id: int = 0, seq: int = 0, obs_offset: float = 0.0):
    """A valid InsertBatch of n CartPole-shaped transitions."""
    from common.messages import InsertBatch

    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, *OBS_SHAPE)).astype(np.float32) + obs_offset
    return InsertBatch(actor_id, seq, 0, obs, rng.integers(0, 2, n).astype(np.int32),
                       rng.standard_normal(n).astype(np.float32), obs + 1.0,
                       np.full(n, 0.97, np.float32))


@pytest.fixture
def batch_factory():
    return make_batch


def python_env() -> dict:
    """Environment for subprocesses: this checkout importable, unbuffered output."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def qfleet_cmd():
    """argv prefix that runs the qfleet CLI of this checkout."""
    return [sys.executable, "-m", "deploy.cli"]
