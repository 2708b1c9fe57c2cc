"""Component tests of the weights relay and of the actors' fallback to the learner, on real
CURVE-secured ZeroMQ sockets in one process: the relay forwards only valid, newer weights
(frame for frame, so the learner's publish time survives), re-publishes for late
subscribers, and when it dies the actor's subscriber takes weights from the learner until
the restarted relay (same port) delivers again. Progress is checked by counts and states;
time limits are hang guards only."""
import time

import numpy as np
import pytest
import zmq

from qfleet.actors.weights import WeightSubscriber
from qfleet.actors.weights_relay import WeightsRelay
from qfleet.common import messages as m
from qfleet.common.codec import decode
from qfleet.common.netspec import NetSpec, param_shapes
from qfleet.common.sockets import CurveKeys, bind, make_socket
from qfleet.learner.publisher import WeightPublisher

SPEC = NetSpec("mlp", (4,), 2, (8,))
KEYS = CurveKeys.generate()
# CURVE servers check clients against the keys of the first run that used their context;
# a context of this module's own keeps this module's keys away from other tests' sockets
CTX = zmq.Context()
SCHEMA = m.weights_schema(param_shapes(SPEC))


def params(value: float) -> dict:
    return {k: np.full(s, value, np.float32) for k, s in param_shapes(SPEC).items()}


def until(predicate, *turns, hang_guard_s: float = 30.0) -> None:
    """Run `turns` (each a callable) until `predicate()` holds; fail after the hang guard."""
    deadline = time.monotonic() + hang_guard_s
    while not predicate():
        assert time.monotonic() < deadline, "hang guard: condition never reached"
        for turn in turns:
            turn()
        time.sleep(0.002)


def relay_on(upstream: str, port: int = 0, republish_s: float = 0.05) -> WeightsRelay:
    for attempt in range(50):  # a restarted relay's old listener may take a moment to go
        try:
            return WeightsRelay(spec=SPEC, upstream=upstream, port=port, keys=KEYS, republish_s=republish_s, ctx=CTX)
        except zmq.ZMQError:
            if attempt == 49:
                raise
            time.sleep(0.1)


def test_forwards_only_valid_newer_weights_frame_for_frame():
    """An upstream that mixes malformed messages, old versions and new ones."""
    upstream = make_socket(CTX, zmq.PUB, hwm=1000, server=True, keys=KEYS)
    relay = relay_on(bind(upstream, "127.0.0.1"), republish_s=0.01)
    downstream = make_socket(CTX, zmq.SUB, hwm=1000, keys=KEYS)
    downstream.setsockopt(zmq.SUBSCRIBE, b"")
    downstream.connect(relay.endpoint)
    got: list = []

    def receive():
        while downstream.poll(0):
            got.append(m.unpack(m.Weights, decode(downstream.recv_multipart(), {m.WEIGHTS: SCHEMA})))

    def send(version, epoch=0, published_at=1000.0):
        upstream.send_multipart(m.pack(SCHEMA, m.Weights(version, published_at + version, params(version), epoch)))

    # both connections are up once a first version has gone all the way through; the relay
    # forwards version 0 only once, possibly before the downstream CURVE handshake is done,
    # so its re-publication is what reaches the downstream socket
    until(lambda: got, lambda: send(0), lambda: relay.step(0.01), receive)
    relay.republish_s = 3600  # no re-publication from here on: every message below is forwarded or not
    start = relay.received
    good = m.pack(SCHEMA, m.Weights(5, 1005.0, params(5), 0))
    header = bytes(memoryview(good[0]))
    bad = [[b"garbage"], [header], [header] + [bytes(memoryview(f)) for f in good[1:]] + [b"x"],
           m.pack(SCHEMA, m.Weights(5, 1005.0, {**params(5), "head.bias": np.array([np.nan, 0], np.float32)}, 0))]
    for frames in bad:
        upstream.send_multipart(frames)
    for version, epoch in [(3, 0), (2, 0), (3, 0), (4, 0), (1, 1)]:  # 2 and the repeated 3 are not newer
        send(version, epoch)
    until(lambda: relay.received - start == len(bad) + 5, lambda: relay.step(0.01))
    until(lambda: got[-1].epoch == 1, receive)
    assert sum(relay.rejected.values()) == len(bad) and set(relay.rejected) >= {"bad_header", "not_finite"}
    versions = [(w.epoch, w.version) for w in got if (w.epoch, w.version) != (0, 0)]
    assert versions == sorted(set(versions)) and (0, 2) not in versions and versions[-1] == (1, 1)
    assert all(w.published_at == 1000.0 + w.version for w in got)  # the learner's publish time
    np.testing.assert_array_equal(got[-1].params["head.bias"], params(1)["head.bias"])
    relay.close()
    upstream.close(0)
    downstream.close(0)


def test_late_subscribers_catch_up_through_re_publication():
    learner = WeightPublisher(spec=SPEC, keys=KEYS, republish_s=0.02, ctx=CTX)
    relay = relay_on(learner.endpoint, republish_s=0.05)
    direct = WeightSubscriber(spec=SPEC, endpoint=learner.endpoint, keys=KEYS)
    learner.publish(params(7), 7)
    seen: dict = {}

    def take(name, subscriber):
        def turn():
            weights = subscriber.poll()
            if weights is not None:
                seen.setdefault(name, weights)
        return turn
    until(lambda: relay.version == 7 and "direct" in seen, learner.maybe_republish, lambda: relay.step(0.01),
          take("direct", direct))
    late = WeightSubscriber(spec=SPEC, endpoint=relay.endpoint, keys=KEYS)  # joins after version 7 went by
    republished = relay.republished
    until(lambda: "late" in seen, lambda: relay.step(0.01), take("late", late))  # the learner is silent now
    assert seen["late"].version == 7 and relay.republished > republished
    assert seen["late"].published_at == seen["direct"].published_at  # lag is measured end to end
    for sub in (direct, late):
        sub.close()
    relay.close()
    learner.close()


def test_actor_falls_back_to_the_learner_and_returns_to_the_restarted_relay():
    learner = WeightPublisher(spec=SPEC, keys=KEYS, republish_s=0.05, ctx=CTX)
    relay = relay_on(learner.endpoint, republish_s=0.05)
    port = int(relay.endpoint.rsplit(":", 1)[1])
    actor = WeightSubscriber(spec=SPEC, endpoint=relay.endpoint, keys=KEYS, fallback=learner.endpoint,
                             fallback_after_s=3 * 0.05)
    learner.publish(params(1), 1)
    turns = [learner.maybe_republish, lambda: relay.step(0.005), actor.poll]
    until(lambda: actor.version == 1 and actor.source == "primary", *turns)
    assert not actor.using_fallback and actor.fallbacks == 0

    relay.close()  # the relay dies: after the fallback window the learner serves the actor
    learner.publish(params(2), 2)
    until(lambda: actor.version == 2, learner.maybe_republish, actor.poll)
    assert actor.source == "fallback" and actor.using_fallback and actor.fallbacks == 1

    relay = relay_on(learner.endpoint, port=port, republish_s=0.05)  # restarted on the same port
    turns = [learner.maybe_republish, lambda: relay.step(0.005), actor.poll]
    until(lambda: not actor.using_fallback, *turns)
    learner.publish(params(3), 3)
    until(lambda: actor.version == 3, *turns)
    assert actor.source == "primary" and not actor.using_fallback and actor.fallbacks == 1
    actor.close()
    relay.close()
    learner.close()


def test_without_a_fallback_nothing_changes():
    actor = WeightSubscriber(spec=SPEC, endpoint="tcp://127.0.0.1:1", keys=KEYS)
    assert actor.poll() is None and len(actor.sockets) == 1 and not actor.using_fallback
    actor.close()
    with pytest.raises(ValueError):
        WeightSubscriber(spec=SPEC, fallback="tcp://127.0.0.1:1", fallback_after_s=0)
