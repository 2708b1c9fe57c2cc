"""The replay client against a real in-process server: a reply that arrives after its
request timed out must not trap the next request (it used to spin forever); a sample
reply carries its shard's totals, and one with impossible totals is refused."""
import threading

import numpy as np
import pytest
import zmq

from qfleet.common import messages as m
from qfleet.common.errors import RemoteError
from qfleet.common.sockets import bind
from tests.conftest import make_batch, replay_server_in_thread

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


def test_sample_reply_carries_the_shards_totals():
    with replay_server_in_thread(max_message_bytes=1 << 20) as srv:
        client = ReplayClient(obs_shape=(4,), obs_dtype=np.float32, insert_endpoint=srv.insert_endpoint,
                              request_endpoint=srv.request_endpoint, timeout=10)
        try:
            client.insert(make_batch(40)._replace(priority=np.linspace(0.5, 4, 40).astype(np.float32)))
            while client.stats()["size"] < 40:
                pass
            batch = client.sample(16, beta=0.4, num_batches=2)
            assert batch.size == 40
            assert batch.total_priority == pytest.approx(float((np.linspace(0.5, 4, 40).astype(np.float32)
                                                                .astype(np.float64) ** 0.6).sum()), rel=1e-5)
            leaves = srv.table.tree.get(batch.keys % 256).astype(np.float64)
            np.testing.assert_allclose(batch.probability, leaves / batch.total_priority, rtol=1e-6)
        finally:
            client.close()


@pytest.mark.parametrize("total,size,probability", [(0.0, 8, 0.125), (8.0, 0, 0.125), (8.0, 8, 1.5),
                                                     (8.0, 8, 0.0), (-1.0, 8, 0.125)])
def test_a_sample_reply_with_impossible_totals_is_refused(total, size, probability):
    """A server that answers with what no table can produce: the client raises bad_reply."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    endpoint = bind(router, "127.0.0.1")
    client = ReplayClient(obs_shape=(4,), obs_dtype=np.float32, request_endpoint=endpoint, timeout=10)
    try:
        rid = client.request_sample(4, 0.4)
        identity, *_ = router.recv_multipart()
        b = make_batch(4)
        reply = m.SampleBatch(rid, np.arange(4, dtype=np.int64), b.obs, b.action, b.reward, b.next_obs,
                              b.discount, np.ones(4, np.float32), np.full(4, probability), total, size)
        router.send_multipart([identity] + m.pack(m.replay_schemas((4,), np.float32)[m.SAMPLE_BATCH], reply))
        with pytest.raises(RemoteError, match="bad_reply"):
            client.wait_for(rid, timeout=10)
    finally:
        client.close()
        router.close(0)
