"""Component test: the sharded prefetcher against two real replay servers (threads of this
process, real ZeroMQ sockets). Batches come from both shards and priorities go back to the
shard of their batch; one shard stops and batches keep coming from the other; it restarts
on the same port and rejoins; with both gone, `get` times out naming the shards. Progress
is counted in batches; time limits are only hang guards."""
import contextlib
import time

import numpy as np
import pytest
import zmq

from qfleet.common.errors import QfleetTimeout
from qfleet.learner.prefetch import Prefetcher
from qfleet.replay_server.client import ReplayClient
from tests.conftest import make_batch, replay_server_in_thread

BUDGET = 200_000  # batches a phase may take before it counts as stuck (far more than it needs)


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


class Shard:
    """One replay server in a thread, filled with 64 transitions whose reward names the shard."""

    def __init__(self, index: int, request_port: int = 0):
        self.index = index
        for attempt in range(50):  # the old listener may take a moment to go after a restart
            try:
                self._cm = replay_server_in_thread(max_message_bytes=1 << 20, request_port=request_port)
                self.server = self._cm.__enter__()
                break
            except zmq.ZMQError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        feeder = ReplayClient(obs_shape=(4,), obs_dtype=np.float32, insert_endpoint=self.server.insert_endpoint)
        feeder.insert(make_batch(64)._replace(reward=np.full(64, index, np.float32)), timeout=10)
        feeder.close(linger_s=5)
        wait_until(lambda: self.server.table.size == 64)

    @property
    def request_endpoint(self) -> str:
        return self.server.request_endpoint

    def stop(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None


def wait_until(predicate, hang_guard_s: float = 30.0) -> None:
    deadline = time.monotonic() + hang_guard_s
    while not predicate():
        assert time.monotonic() < deadline, "hang guard: condition never reached"
        time.sleep(0.01)


def next_batches(prefetcher: Prefetcher, until, what: str) -> list:
    """Batches until `until(batch)` holds; fails after BUDGET batches."""
    seen = []
    for _ in range(BUDGET):
        batch = prefetcher.get()
        seen.append(batch)
        if until(batch):
            return seen
    pytest.fail(f"{what}: not within {BUDGET} batches")


def check_shard_tag(batch) -> int:
    assert np.all(batch["reward"] == batch["shard"]), "a batch must be tagged with the shard it came from"
    return batch["shard"]


@pytest.fixture
def shards():
    made = [Shard(0), Shard(1)]
    yield made
    for shard in made:
        shard.stop()


@pytest.fixture
def clients(shards):
    made = [ReplayClient(obs_shape=(4,), obs_dtype=np.float32, request_endpoint=s.request_endpoint, timeout=10)
            for s in shards]
    yield made
    for client in made:
        client.close()


@contextlib.contextmanager
def prefetching(clients, **kwargs):
    prefetcher = Prefetcher(clients, batch_size=8, seed=0, **kwargs).start()
    try:
        yield prefetcher
    finally:
        prefetcher.close()


@pytest.mark.timeout(300)
def test_a_lost_shard_is_left_out_and_rejoins_after_its_restart(shards, clients):
    with prefetching(clients, batches_per_request=2, in_flight=4, timeout_s=60, retry_s=0.5) as prefetcher:
        counts = np.zeros(2, int)

        def both_seen(batch):
            counts[check_shard_tag(batch)] += 1
            return counts.min() >= 20
        next_batches(prefetcher, both_seen, "batches from both shards")

        # priorities go back to the shard their batch came from
        batch = next_batches(prefetcher, lambda b: b["shard"] == 1, "a batch from shard 1")[-1]
        before = [s.server.counts["priority_updates"] for s in shards]
        prefetcher.send_priorities(batch["keys"], np.full(len(batch["keys"]), 50.0, np.float32), shard=1)
        wait_until(lambda: shards[1].server.counts["priority_updates"] > before[1])
        assert shards[0].server.counts["priority_updates"] == before[0]
        assert shards[1].server.table.counts["priorities_applied"] >= len(batch["keys"])

        # shard 1 dies: once it is left out, every batch comes from shard 0
        port = port_of(shards[1].request_endpoint)
        shards[1].stop()
        next_batches(prefetcher, lambda b: not prefetcher.shards.up[1], "shard 1 left out")
        queued = prefetcher.capacity  # batches that may still have been queued before it died
        after = [prefetcher.get() for _ in range(queued + 200)]
        assert all(check_shard_tag(b) == 0 for b in after[queued:])
        prefetcher.send_priorities(after[0]["keys"], np.ones(8, np.float32), shard=1)  # dropped, not blocking
        next_batches(prefetcher, lambda b: prefetcher.shards.counts[1]["priorities_dropped"] >= 8,
                     "a priority update for the lost shard dropped")
        next_batches(prefetcher, lambda b: prefetcher.shards.counts[1]["probes"] >= 2, "shard 1 probed")
        report = prefetcher.shards.report()
        assert report["shard.1.timeouts"] >= 1 and not report["shard.1.up"] and report["shard.0.up"]

        # it restarts on the same port (an empty table refilled, as from a snapshot) and rejoins
        shards[1] = Shard(1, request_port=port)
        next_batches(prefetcher, lambda b: check_shard_tag(b) == 1, "a batch from the restarted shard 1")
        assert prefetcher.shards.up[1]


@pytest.mark.timeout(120)
def test_only_when_no_shard_answers_does_get_time_out(shards, clients):
    with prefetching(clients, batches_per_request=1, in_flight=2, timeout_s=1.0, retry_s=0.3) as prefetcher:
        prefetcher.get()
        for shard in shards:
            shard.stop()
        with pytest.raises(QfleetTimeout, match="any of the 2 replay shards"):
            for _ in range(BUDGET):  # what was queued before they died, then the timeout
                prefetcher.get()


@pytest.mark.timeout(300)
def test_the_learner_trains_on_two_shards_and_returns_priorities_to_each(shards, clients):
    from qfleet.common.config import LearnerConfig
    from qfleet.common.envs import describe_env
    from qfleet.common.netspec import NetSpec
    from qfleet.learner.learner import Learner
    from qfleet.learner.publisher import WeightPublisher

    env = describe_env("CartPole-v1")
    spec = NetSpec("mlp", env.obs_shape, env.num_actions, (16,))
    cfg = LearnerConfig(batch_size=8, batches_per_request=1, prefetch=2, eval_every_s=3600, eval_episodes=1)
    publisher = WeightPublisher(spec=spec)
    learner = Learner(cfg=cfg, spec=spec, env=env, solved_threshold=None, replay=clients[0], publisher=publisher,
                      device="cpu", max_updates=200, extra_shards=clients[1:])
    try:
        summary = learner.run(lambda: False)
    finally:
        publisher.close()
    assert summary["updates"] == 200
    updated = [s.server.table.counts["priorities_applied"] + s.server.table.counts["priorities_stale"]
               for s in shards]
    batches = [int(learner.prefetcher.shards.counts[i]["batches"]) for i in range(2)]
    assert min(updated) > 0 and min(batches) > 0
    # every collected update's priorities went to the shard its batch came from
    assert all(u <= 8 * b for u, b in zip(updated, batches)) and sum(updated) <= 8 * 200
