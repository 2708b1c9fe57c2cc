"""The actor's sent-counter file, which the launcher reads after a SIGKILL to count what a
killed actor lost (sent minus stored): it must already include a message when that message
is handed to ZeroMQ, or a kill between the two reads as more stored than sent."""
import numpy as np
import zmq

import qfleet
from qfleet.actors.actor import Actor
from qfleet.actors.weights import WeightSubscriber
from qfleet.common.errors import QfleetTimeout
from qfleet.deploy.plan import make_plan


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
