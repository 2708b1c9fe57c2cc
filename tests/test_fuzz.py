"""Property-based fuzzing of every socket that receives from the network: the replay
server's insert and request sockets, and an actor's weight subscription. At least 10,000
malformed messages each: no crash, every one rejected and counted, stored data intact,
and a well-formed message right after still works."""
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qfleet.actors.weights import WeightSubscriber
from qfleet.common import messages as m
from qfleet.common.netspec import NetSpec, param_shapes
from qfleet.common.sockets import bind, make_socket
from qfleet.replay_server.client import ReplayClient
from tests.conftest import make_batch, replay_server_in_thread
from tests.fuzz_messages import defective, wire

CASES = 10_000
MAX_BYTES = 64 * 1024
FUZZ = settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
pytestmark = [pytest.mark.slow, pytest.mark.long]


@pytest.fixture
def server():
    with replay_server_in_thread(max_message_bytes=MAX_BYTES, max_insert_batch=64, insert_hwm=100_000) as srv:
        client = ReplayClient(obs_shape=(4,), obs_dtype=np.float32, insert_endpoint=srv.insert_endpoint,
                              request_endpoint=srv.request_endpoint, timeout=10)
        client.insert(make_batch(50, seed=1))
        client.insert(make_batch(50, seed=2, seq=1))
        wait(lambda: client.stats()["stored"] == 100)
        yield srv, client
        client.close()


def wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def valid_insert():
    batch = make_batch(8)._replace(priority=np.full(8, 1.5, np.float32))
    return wire(m.pack(m.replay_schemas((4,), np.float32)[m.INSERT], batch))


def stats_request():
    return wire(m.pack(m.replay_schemas((4,), np.float32)[m.STATS], m.StatsRequest(1)))


def bad_inserts():
    return defective(valid_insert(), ("actor_id", "seq", "weights_version"), ("obs", "reward", "next_obs", "discount"),
                     MAX_BYTES + 1, {"action": [2, 5, -1, 2**31 - 1], "discount": [1.5, -0.5],
                                     "priority": [0.0, -1.0]}, stats_request())


def bad_requests():
    schemas = m.replay_schemas((4,), np.float32)
    sample = wire(m.pack(schemas[m.SAMPLE], m.SampleRequest(7, 16, 0.5, 1)))
    prio = wire(m.pack(schemas[m.PRIORITIES], m.PriorityUpdate(np.arange(4, dtype=np.int64),
                                                               np.ones(4, np.float32))))
    out_of_range = st.builds(lambda bs, nb, beta: wire(m.pack(schemas[m.SAMPLE], m.SampleRequest(9, bs, beta, nb))),
                             st.sampled_from([0, -1, 65]), st.just(1), st.just(0.5)) | \
        st.builds(lambda beta: wire(m.pack(schemas[m.SAMPLE], m.SampleRequest(9, 8, beta, 1))),
                  st.sampled_from([-0.5, 1.5])) | \
        st.builds(lambda nb: wire(m.pack(schemas[m.SAMPLE], m.SampleRequest(9, 8, 0.5, nb))), st.sampled_from([0, -2, 9]))
    return (defective(sample, ("request_id", "batch_size", "beta", "num_batches"), (), MAX_BYTES + 1, {}, valid_insert())
            | defective(prio, (), ("priority",), MAX_BYTES + 1, {"keys": [-1, -7], "priority": [0.0, -2.0]},
                        valid_insert())
            | out_of_range)


def test_insert_socket(server):
    srv, client = server
    before = srv.table.storage.records.copy(), srv.table.tree.leaves.copy()
    push = make_socket(zmq.Context.instance(), zmq.PUSH, hwm=100_000)
    push.connect(srv.insert_endpoint)
    sent = []

    @FUZZ
    @given(bad_inserts())
    def send(frames):
        push.send_multipart(frames)
        sent.append(1)

    send()
    assert len(sent) >= CASES
    wait(lambda: client.stats()["insert_messages"] == 2 + len(sent))
    stats = client.stats()
    assert stats["insert_rejected"] == len(sent) and stats["stored"] == 100 and stats["inserted"] == 100
    assert np.array_equal(srv.table.storage.records, before[0]) and np.array_equal(srv.table.tree.leaves, before[1])
    client.insert(make_batch(8, seed=3))  # a well-formed insert right after is stored
    wait(lambda: client.stats()["stored"] == 108)
    print(f"\ninsert socket: {len(sent)} malformed messages, all rejected: "
          f"{ {k[9:]: v for k, v in stats.items() if k.startswith('rejected.')} }")
    push.close(0)


def test_request_socket(server):
    srv, client = server
    before = srv.table.storage.records.copy(), srv.table.tree.leaves.copy()
    dealer = make_socket(zmq.Context.instance(), zmq.DEALER, hwm=100_000)
    dealer.connect(srv.request_endpoint)
    sent, replies = [], []

    @FUZZ
    @given(bad_requests())
    def send(frames):
        dealer.send_multipart(frames)
        sent.append(1)
        while dealer.poll(0):
            replies.append(dealer.recv_multipart())

    send()
    while len(replies) < len(sent) and dealer.poll(30_000):  # ends on the last reply; 30 s is a hang guard
        replies.append(dealer.recv_multipart())
    assert len(sent) >= CASES
    assert len(replies) == len(sent), "every malformed request gets exactly one error reply"
    assert all(m.decode_as(m.ErrorReply, r, m.replay_schemas((4,), np.float32)).reason for r in replies)
    stats = client.stats()
    assert stats["request_rejected"] == len(sent)
    assert np.array_equal(srv.table.storage.records, before[0]) and np.array_equal(srv.table.tree.leaves, before[1])
    batch = client.sample(16, 0.5)  # a well-formed request right after succeeds
    assert len(batch.keys) == 16
    print(f"\nrequest socket: {len(sent)} malformed requests, {len(replies)} error replies")
    dealer.close(0)


def test_weight_subscription():
    spec = NetSpec("mlp", (4,), 2, (8,))
    schema = m.weights_schema(param_shapes(spec))
    params = {k: np.zeros(s, np.float32) for k, s in param_shapes(spec).items()}
    valid = wire(m.pack(schema, m.Weights(5, 1.0, params, 0)))
    pub = make_socket(zmq.Context.instance(), zmq.PUB, hwm=100_000, server=True)
    subscriber = WeightSubscriber(spec=spec, endpoint=bind(pub, "127.0.0.1"), max_message_bytes=MAX_BYTES)
    def first_delivery() -> bool:  # PUB drops what it sends before the SUB has joined: resend
        pub.send_multipart(valid)
        time.sleep(0.05)
        return subscriber.poll() is not None
    wait(first_delivery)  # connected, version 5 in use
    sent = []
    received_before = subscriber.received
    strategy = defective(valid, ("version", "published_at", "epoch"), tuple(params), MAX_BYTES + 1, {},
                         wire(m.pack(m.REPORT_SCHEMA, m.Report("x", 0, {}))))

    @FUZZ
    @given(strategy)
    def send(frames):
        pub.send_multipart(frames)
        sent.append(1)
        deadline = time.monotonic() + 5
        while subscriber.received < len(sent) + received_before:  # block on the socket, not in sleeps
            assert time.monotonic() < deadline, "timed out"
            subscriber.socket.poll(50)
            assert subscriber.poll() is None, "a malformed message was taken as weights"

    send()
    assert len(sent) >= CASES
    assert sum(subscriber.rejected.values()) == len(sent) and subscriber.version == 5
    pub.send_multipart(wire(m.pack(schema, m.Weights(6, 2.0, params, 0))))  # well-formed right after
    wait(lambda: (w := subscriber.poll()) is not None and w.version == 6)
    print(f"\nweight subscription: {len(sent)} malformed messages rejected: {dict(subscriber.rejected)}")
    subscriber.close()
    pub.close(0)
