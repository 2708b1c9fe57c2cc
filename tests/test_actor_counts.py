"""The actor's sends, without sockets: its sent-counter file, which the launcher reads after
a SIGKILL to count what a killed actor lost (sent minus stored), must already include a
message when that message is handed to ZeroMQ, or a kill between the two reads as more
stored than sent; and with stacked frames, what it sends rebuilds the observed stacks."""
import numpy as np
import pytest
import zmq

import qfleet
from qfleet.actors.actor import Actor
from qfleet.actors.weights import WeightSubscriber
from qfleet.common.errors import QfleetTimeout
from qfleet.deploy.plan import make_plan
from tests.user_envs import FrameCounter


class RecordingReplay:
    """Stands in for the ReplayClient: takes every insert (after `refuse_first` timeouts)
    and notes what the actor's counter file said at each call."""

    def __init__(self, sent_file: str, refuse_first: int = 0):
        self.sent_file, self.refuse_left = sent_file, refuse_first
        self.file_at_call: list[int] = []
        self.stored = 0
        # Never connected: under backpressure the actor waits on it for send_timeout_s.
        self.insert_socket = zmq.Context.instance().socket(zmq.PUSH)

    def insert(self, msg, timeout=0):
        self.file_at_call.append(int(np.fromfile(self.sent_file, np.int64, count=1)[0]))
        if self.refuse_left:
            self.refuse_left -= 1
            raise QfleetTimeout("backpressure")
        self.stored += len(msg.action)


def make_actor(tmp_path, replay_factory, *settings):
    cfg = qfleet.load_config(overrides=["actor.envs_per_actor=4", "actor.flush_every_steps=2", *settings])
    plan = make_plan(cfg)
    path = str(tmp_path / "sent")
    replay = replay_factory(path)
    # max_insert_batch 3 splits each push into several messages, each counted on its own.
    actor = Actor(cfg=cfg.actor, index=0, num_actors=1, env=plan.env, net=plan.net, replay=replay,
                  weights=WeightSubscriber(spec=plan.net), max_insert_batch=3, sent_file=path)
    return actor, replay


def test_the_counter_file_counts_a_message_before_it_is_sent(tmp_path):
    actor, replay = make_actor(tmp_path, RecordingReplay)
    actor.run(lambda: False, max_env_steps=200)
    assert replay.stored > 0 and len(replay.file_at_call) > 2
    # At every send the file already counts that message: what was stored never exceeds it.
    stored_before = 0
    for at_call in replay.file_at_call:
        assert at_call > stored_before, "a message was sent before the counter file counted it"
        stored_before = at_call
    assert int(np.fromfile(tmp_path / "sent", np.int64, count=1)[0]) == actor.sent == replay.stored


def test_a_message_given_up_at_stop_is_not_counted(tmp_path):
    # The replay server never takes anything and the run is stopping: the file goes back to
    # what was really handed over (nothing), so the loss is not overstated either.
    actor, replay = make_actor(tmp_path, lambda path: RecordingReplay(path, refuse_first=10**9),
                               "actor.send_timeout_s=0.001")
    actor.run(lambda: bool(replay.file_at_call))  # stop once a send has been tried
    assert replay.file_at_call and max(replay.file_at_call) > 0, "the file counted the message being sent"
    assert actor.sent == 0 and int(np.fromfile(tmp_path / "sent", np.int64, count=1)[0]) == 0


class TableReplay(RecordingReplay):
    """Hands every message to a real frame table (as the replay server would)."""

    def __init__(self, sent_file: str, table):
        super().__init__(sent_file)
        self.table = table

    def insert(self, msg, timeout=0):
        super().insert(msg, timeout)
        self.table.insert_frames(msg)


def test_an_actor_sends_frames_that_rebuild_the_observed_stacks(tmp_path):
    """The actor's own frame path (replay.frames): every stored transition's stacks, rebuilt
    from single frames, show the steps of one episode they should: obs ends at step s,
    next obs at s + n or the episode's last step, and padding repeats the first frame."""
    from qfleet.replay_server.rate_limiter import RateLimiter
    from qfleet.replay_server.table import Table

    cfg = qfleet.load_config(overrides=["run.env=tests.user_envs:FrameCounter", "actor.envs_per_actor=3",
                                        "actor.flush_every_steps=2"])
    plan = make_plan(cfg)
    assert plan.frames, "uint8 stacks are sent a frame at a time"
    table = Table(capacity=10_000, obs_shape=plan.env.obs_shape, obs_dtype=np.uint8, num_actions=2, prioritized=False,
                  alpha=0.6, limiter=RateLimiter(min_size_to_sample=1, samples_per_insert=0, error_buffer=1,
                                                 max_insert_batch=4096, max_sample_batch=4096), frames=True)
    path = str(tmp_path / "sent")
    replay = TableReplay(path, table)
    actor = Actor(cfg=cfg.actor, index=0, num_actors=1, env=plan.env, net=plan.net, replay=replay,
                  weights=WeightSubscriber(spec=plan.net), max_insert_batch=7, sent_file=path, frames=True)
    actor.run(lambda: False, max_env_steps=900)
    got = table.storage.gather(np.arange(table.size))
    assert table.size == actor.sent > 500 and table.storage.frames_missing == 0
    n, gamma = cfg.actor.n_step, cfg.actor.gamma
    endings = 0
    for obs, nxt, reward, discount in zip(got["obs"], got["next_obs"], got["reward"], got["discount"]):
        episode, steps = obs[:, 0, 0], obs[:, 0, 1].astype(int)
        s = steps[-1]
        assert (episode == episode[0]).all() and (nxt[:, 0, 0] == episode[0]).all(), "one episode per stack"
        assert list(steps) == [max(0, s - 3 + i) for i in range(4)], steps
        ahead = int(nxt[-1, 0, 1]) - s
        assert 1 <= ahead <= n and list(nxt[:, 0, 1]) == [max(0, s + ahead - 3 + i) for i in range(4)]
        assert np.array_equal(obs[-1], FrameCounter.frame(int(episode[0]), int(s)))
        assert reward == pytest.approx(sum(gamma ** i for i in range(ahead)), rel=1e-6)
        if ahead < n:  # the episode ended within n steps: 0 if it terminated, gamma**m if truncated
            endings += 1
            assert discount == 0 or discount == pytest.approx(gamma ** ahead, rel=1e-6)
        else:
            assert discount == 0 or discount == pytest.approx(gamma ** n, rel=1e-6)
    assert endings > 50
