"""Component test: a real `qfleet replay-server` subprocess on real sockets, with several
inserting processes, a sampler with priority updates, stats, a flood of malformed
messages, a snapshot, and a clean SIGTERM shutdown."""
import json
import multiprocessing as mp
import signal
import subprocess
import time

import msgpack
import numpy as np
import pytest
import zmq

from qfleet.common import messages as m
from qfleet.common.errors import RemoteError
from qfleet.replay_server.client import ReplayClient
from tests.conftest import OBS_SHAPE, make_batch, python_env, replay_server_in_thread

ACTORS, BATCHES, BATCH = 3, 20, 50


def push_batches(endpoint: str, actor_id: int) -> None:
    client = ReplayClient(obs_shape=(4,), obs_dtype=np.float32, insert_endpoint=endpoint)
    for seq in range(BATCHES):
        b = make_batch(BATCH, seed=actor_id * 1000 + seq, actor_id=actor_id, seq=seq)
        # reward marks (actor, seq, index) so the test can check what was stored
        b = b._replace(reward=(actor_id * 10_000 + seq * 100 + np.arange(BATCH)).astype(np.float32))
        client.insert(b, timeout=10)
    client.close()


@pytest.fixture
def server(tmp_path, qfleet_cmd):
    proc = subprocess.Popen(
        qfleet_cmd + ["replay-server", "--set", "replay.capacity=5000", "--set", "replay.samples_per_insert=0",
                      "--set", "replay.min_size_to_sample=10", "--snapshot-dir", str(tmp_path / "snap")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
    endpoints = json.loads(proc.stdout.readline())
    yield proc, endpoints
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def flood(endpoints):
    """Malformed messages of every kind on both sockets."""
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoints["insert"])
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoints["request"])
    good = [bytes(memoryview(f).cast("B")) for f in m.pack(m.replay_schemas((4,), np.float32)[m.INSERT], make_batch(4))]
    nan_batch = make_batch(4)._replace(reward=np.array([0, np.nan, 0, 0], np.float32))
    nan = [bytes(memoryview(f).cast("B")) for f in m.pack(m.replay_schemas((4,), np.float32)[m.INSERT], nan_batch)]
    header = msgpack.unpackb(good[0])
    bad = [
        [b"garbage"], [b""], good[:-1], good + [b"x"], nan,
        [msgpack.packb({**header, "v": 99})] + good[1:],
        [msgpack.packb({**header, "t": "sample"})] + good[1:],
        [msgpack.packb({**header, "a": [["obs", "<f8", [4, 4]]] + header["a"][1:]})] + good[1:],
        [msgpack.packb({**header, "m": {"actor_id": 99, "seq": 0, "weights_version": 0}})] + good[1:2]
        + [np.array([0, 5, 0, 0], np.int32).tobytes()] + good[3:],  # action 5 of a 2-action env
    ]
    rng = np.random.default_rng(0)
    sent = 0
    for i in range(400):
        frames = bad[i % len(bad)] if i % 3 else [rng.bytes(int(rng.integers(1, 300)))]
        push.send_multipart(frames)
        dealer.send_multipart(frames)
        sent += 1
    replies = 0
    while dealer.poll(10_000):  # ends on the last reply; the 10 s only end a short count
        reply = dealer.recv_multipart()
        assert msgpack.unpackb(reply[0])["t"] == "error"
        replies += 1
        if replies == sent:
            break
    push.close(linger=1000)
    dealer.close()
    return sent, replies


def test_server_end_to_end(server, tmp_path):
    proc, endpoints = server
    ctx = mp.get_context("spawn")
    pushers = [ctx.Process(target=push_batches, args=(endpoints["insert"], i)) for i in range(ACTORS)]
    for p in pushers:
        p.start()
    for p in pushers:
        p.join(60)
        assert p.exitcode == 0

    client = ReplayClient(obs_shape=(4,), obs_dtype=np.float32, request_endpoint=endpoints["request"], timeout=10)
    total = ACTORS * BATCHES * BATCH
    wait_for(lambda: client.stats()["stored"] == total)
    stats = client.stats()
    for i in range(ACTORS):
        assert stats[f"stored_by_actor.{i}"] == BATCHES * BATCH
        assert f"seq_gaps.{i}" not in stats
    assert stats["rejected"] == 0

    for _ in range(10):
        batch = client.sample(32, beta=0.4, num_batches=2)
        assert len(batch.keys) == 64 and np.all((batch.keys >= 0) & (batch.keys < total))
        client.update_priorities(batch.keys, np.abs(batch.reward) % 7 + 0.1)
    wait_for(lambda: client.stats()["priorities_applied"] == 640)
    with pytest.raises(RemoteError, match="bad_batch_size"):
        client.sample(0)

    sent, replies = flood(endpoints)
    assert replies == sent, "every malformed request gets an error reply"
    wait_for(lambda: client.stats()["insert_rejected"] == sent)
    stats = client.stats()
    assert stats["stored"] == total and stats["size"] == total
    assert "stored_by_actor.99" not in stats
    assert stats["rejected.bad_action"] > 0 and stats["rejected_transitions"] == 4 * stats["rejected.bad_action"]
    assert stats["request_rejected"] == sent + 1  # the flood plus the bad batch size above

    # Nothing stored was lost or altered: the snapshot holds exactly what the pushers sent.
    path = client.snapshot()["path"]
    with np.load(path) as snap:
        rewards = np.sort(snap["data.reward"])
    expected = np.sort(np.concatenate([a * 10_000 + s * 100 + np.arange(BATCH)
                                       for a in range(ACTORS) for s in range(BATCHES)]).astype(np.float32))
    np.testing.assert_array_equal(rewards, expected)

    client.close()
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - started < 5


def test_rate_limiter_backpressure_reaches_the_actor(tmp_path, qfleet_cmd):
    """With samples_per_insert on and no sampler, inserts stop being drained: a pusher with a
    small HWM must time out instead of the server buffering without bound (after the
    kernel's TCP buffers, a few MB, are full)."""
    proc = subprocess.Popen(
        qfleet_cmd + ["replay-server", "--set", "replay.samples_per_insert=4", "--set", "replay.min_size_to_sample=100",
                      "--set", "replay.insert_hwm=2", "--set", "replay.max_insert_batch=50",
                      "--set", "learner.batch_size=32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
    try:
        endpoints = json.loads(proc.stdout.readline())
        client = ReplayClient(obs_shape=(4,), obs_dtype=np.float32, insert_endpoint=endpoints["insert"],
                              request_endpoint=endpoints["request"], insert_hwm=2, timeout=5)
        from qfleet.common.errors import QfleetTimeout
        with pytest.raises(QfleetTimeout):
            batch = make_batch(50)
            for seq in range(20_000):
                client.insert(batch._replace(seq=seq), timeout=1.0)
        stats = client.stats()
        assert stats["insert_held"] and stats["stored"] <= 200
        # Sampling releases the backpressure.
        stored = stats["stored"]
        for _ in range(40):
            client.sample(32)
        wait_for(lambda: client.stats()["stored"] > stored)
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_reply_to_another_request_does_not_hang_the_client(server):
    """A sample reply nobody has claimed yet sits in front of a stats reply; stats() must
    return its own answer and keep the other for receive() (the client once spun forever
    re-reading such a reply from its inbox)."""
    proc, endpoints = server
    push_batches(endpoints["insert"], 0)
    client = ReplayClient(obs_shape=(4,), obs_dtype=np.float32, request_endpoint=endpoints["request"], timeout=5)
    wait_for(lambda: client.stats()["size"] == BATCHES * BATCH)
    pending = client.request_sample(8, 0.4)
    time.sleep(0.3)  # the sample reply is now waiting on the socket
    # the bug this guards against spun until stats() timed out: the 30 s are a hang guard
    assert client.stats(timeout=30)["size"] == BATCHES * BATCH
    assert client.stats(timeout=30)["size"] == BATCHES * BATCH
    rid, batch = client.receive(timeout=30)
    assert rid == pending and len(batch.keys) == 8
    client.close()


def test_well_formed_requests_that_cannot_be_served_are_answered_and_counted():
    with replay_server_in_thread(max_message_bytes=1 << 20) as srv:
        client = ReplayClient(obs_shape=OBS_SHAPE, obs_dtype=np.float32, insert_endpoint=srv.insert_endpoint,
                              request_endpoint=srv.request_endpoint, timeout=30)
        bad = make_batch(4)
        client.insert(bad._replace(action=np.array([0, 1, 2, 0], np.int32)))
        client.insert(make_batch(8, seq=1))
        wait_for(lambda: client.stats()["stored"] == 8)
        with pytest.raises(RemoteError, match="no_snapshots"):
            client.snapshot()
        with pytest.raises(RemoteError, match="bad_batch_size"):
            client.sample(65)
        stats = client.stats()
        client.close()
    assert stats["rejected.bad_action"] == 1 and stats["rejected_transitions"] == 4
    assert stats["rejected.no_snapshots"] == 1 and stats["rejected.bad_batch_size"] == 1
