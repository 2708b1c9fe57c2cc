"""CURVE on every socket: a client without the run's keys cannot insert, sample or
subscribe, and the run's own clients are unaffected."""
import time

import numpy as np
import pytest

from qfleet.common.errors import QfleetTimeout
from qfleet.common.netspec import NetSpec, param_shapes
from qfleet.common.sockets import CurveKeys
from qfleet.actors.weights import WeightSubscriber
from qfleet.learner.publisher import WeightPublisher
from qfleet.replay_server.client import ReplayClient
from tests.conftest import make_batch, replay_server_in_thread

RUN = CurveKeys.generate()
OTHER_RUN = CurveKeys.generate()
# knows the server's public key (it is public) but brings its own client key pair
STRANGER = RUN._replace(client_public=OTHER_RUN.client_public, client_secret=OTHER_RUN.client_secret)


@pytest.fixture
def secure_server():
    with replay_server_in_thread(host="0.0.0.0", max_message_bytes=1 << 20, keys=RUN) as srv:
        yield srv


def client(srv, keys):
    return ReplayClient(obs_shape=(4,), obs_dtype=np.float32, insert_endpoint=srv.insert_endpoint.replace("0.0.0.0", "127.0.0.1"),
                        request_endpoint=srv.request_endpoint.replace("0.0.0.0", "127.0.0.1"), keys=keys, timeout=1.5)


def test_run_clients_work(secure_server):
    good = client(secure_server, RUN)
    good.insert(make_batch(8))
    deadline = time.monotonic() + 10
    while good.stats()["stored"] != 8:
        assert time.monotonic() < deadline
    assert len(good.sample(4).keys) == 4
    good.close()


@pytest.mark.parametrize("keys", [None, STRANGER, OTHER_RUN], ids=["no-curve", "wrong-client-key", "other-run"])
def test_clients_without_the_run_keys_are_refused(secure_server, keys):
    intruder = client(secure_server, keys)
    for seq in range(3):
        try:
            intruder.insert(make_batch(8, seq=seq), timeout=0.5)
        except QfleetTimeout:
            pass  # the handshake never completes, so the queue fills: refused either way
    with pytest.raises(QfleetTimeout):
        intruder.sample(4, timeout=1.5)
    with pytest.raises(QfleetTimeout):
        intruder.stats(timeout=1.0)
    intruder.close(linger_s=0)
    good = client(secure_server, RUN)
    stats = good.stats()
    assert stats["stored"] == 0 and stats.get("insert_messages", 0) == 0 and stats["requests"] == 1
    good.insert(make_batch(8))  # the run is unaffected
    deadline = time.monotonic() + 10
    while good.stats()["stored"] != 8:
        assert time.monotonic() < deadline
    good.close()


@pytest.mark.parametrize("keys", [None, STRANGER], ids=["no-curve", "wrong-client-key"])
def test_subscribing_needs_the_run_keys(keys):
    spec = NetSpec("mlp", (4,), 2, (8,))
    publisher = WeightPublisher(spec=spec, host="0.0.0.0", keys=RUN, republish_s=0.05)
    endpoint = publisher.endpoint.replace("0.0.0.0", "127.0.0.1")
    params = {k: np.ones(s, np.float32) for k, s in param_shapes(spec).items()}
    member = WeightSubscriber(spec=spec, endpoint=endpoint, keys=RUN)
    outsider = WeightSubscriber(spec=spec, endpoint=endpoint, keys=keys)
    got = None
    deadline = time.monotonic() + 10
    while got is None and time.monotonic() < deadline:
        publisher.publish(params, 3)
        time.sleep(0.05)
        got = member.poll()
    assert got is not None and got.version == 3
    time.sleep(0.5)
    publisher.publish(params, 4)
    time.sleep(0.3)
    assert outsider.poll() is None and outsider.received == 0
    member.close(), outsider.close(), publisher.close()


def test_keys_never_show_in_text():
    from qfleet.deploy.components import Placement

    keys = CurveKeys.generate()
    texts = [repr(keys), str(keys), repr(Placement(telemetry="tcp://h:1", keys=keys)), f"{keys}"]
    for secret in (keys.server_secret, keys.client_secret, keys.client_public):
        assert not any(secret.decode() in text for text in texts)
