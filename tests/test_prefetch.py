"""The prefetcher against a real replay server that has nothing to serve: a stop request
ends the wait at once (so a stopping learner still writes its checkpoint), a server that
answers 'rate_limited' (still filling) is waited for past the timeout, and a dead one
times out naming the replay server."""
import time

import numpy as np
import pytest

from qfleet.common.errors import QfleetTimeout
from qfleet.learner.prefetch import Prefetcher
from qfleet.replay_server.client import ReplayClient
from tests.test_replay_server import server  # noqa: F401  (the fixture: a real replay-server process)


@pytest.fixture
def starved(server):  # noqa: F811
    _, endpoints = server  # nothing inserted: every sample request is answered 'rate_limited'
    client = ReplayClient(obs_shape=(4,), obs_dtype=np.float32, request_endpoint=endpoints["request"], timeout=2.0)
    yield lambda timeout_s: Prefetcher([client], batch_size=8, batches_per_request=2, in_flight=2,
                                       timeout_s=timeout_s).start()


def test_stop_ends_the_wait_for_a_batch(starved):
    prefetcher = starved(30.0)
    asked: list = []

    def stop_on_the_sixth_check() -> bool:  # five empty waits first, then stop
        asked.append(1)
        return len(asked) > 5
    try:
        assert prefetcher.get(stop_on_the_sixth_check) is None  # no QfleetTimeout: the stop ended it
        assert len(asked) == 6  # returned at the first stop, without waiting on
    finally:
        prefetcher.close()


def test_a_server_that_answers_rate_limited_is_waited_for_past_the_timeout(starved):
    # Each refusal comes after the server's 1 s sample wait, two requests in flight: ten
    # refusals take at least 5 s, past the 4 s timeout, which counts silence only.
    prefetcher = starved(4.0)
    try:
        asked = time.monotonic()
        assert prefetcher.get(lambda: prefetcher.rate_limited >= 10) is None
        assert time.monotonic() - asked > 4.0
    finally:
        prefetcher.close()


def test_a_dead_server_times_out_naming_the_replay_server(server, starved):  # noqa: F811
    proc, _ = server
    proc.kill()
    proc.wait()
    prefetcher = starved(0.5)
    try:
        with pytest.raises(QfleetTimeout, match="no sample from the replay server and no answer for 0.5 s"):
            prefetcher.get()
    finally:
        prefetcher.close()
