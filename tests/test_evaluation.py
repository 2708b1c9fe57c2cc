"""A failed greedy evaluation is reported, not fatal: the learner logs and counts it, keeps
updating, and evaluates again (in a new evaluator process when the old one died)."""
from __future__ import annotations

import logging
import os

import gymnasium as gym
import numpy as np
import pytest
import zmq

from qfleet.common import messages as m
from qfleet.common.codec import decode
from qfleet.common.config import LearnerConfig
from qfleet.common.envs import describe_env
from qfleet.common.netspec import NetSpec
from qfleet.common.telemetry import Telemetry
from qfleet.learner.learner import Learner
from qfleet.learner.publisher import WeightPublisher
from qfleet.replay_server.client import ReplayClient
from tests.conftest import OBS_SHAPE, make_batch, replay_server_in_thread

GOOD_STEPS = 3  # steps each evaluation environment takes before it fails


class FailsInStep(gym.Env):
    """A user's environment with a bug: `step` raises after a few calls."""

    max_episode_steps = 50

    def __init__(self, render_mode=None):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, OBS_SHAPE, np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return np.zeros(OBS_SHAPE, np.float32), {}

    def step(self, action):
        self.steps += 1
        if self.steps > GOOD_STEPS:
            self.fail()
        return np.zeros(OBS_SHAPE, np.float32), 0.0, False, False, {}

    def fail(self):
        raise RuntimeError("the environment broke")


class KillsItsProcess(FailsInStep):
    """An environment that takes its process down (a segfault in native code, say)."""

    def fail(self):
        os._exit(17)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("env_name,died", [("FailsInStep", False), ("KillsItsProcess", True)])
def test_the_learner_keeps_updating_when_evaluations_fail(env_name, died, caplog):
    env = describe_env(f"tests.test_evaluation:{env_name}")
    spec = NetSpec("mlp", env.obs_shape, env.num_actions, (16,))
    cfg = LearnerConfig(batch_size=16, batches_per_request=1, prefetch=2, eval_every_s=0.01, eval_episodes=2)
    pull = zmq.Context.instance().socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    with replay_server_in_thread(max_message_bytes=1 << 20) as srv:
        replay = ReplayClient(obs_shape=env.obs_shape, obs_dtype=env.obs_dtype, insert_endpoint=srv.insert_endpoint,
                              request_endpoint=srv.request_endpoint, timeout=30)
        replay.insert(make_batch(64))
        publisher = WeightPublisher(spec=spec)
        learner = Learner(cfg=cfg, spec=spec, env=env, solved_threshold=None, replay=replay, publisher=publisher,
                          device="cpu", telemetry=Telemetry(f"tcp://127.0.0.1:{port}", "learner"))
        first_failure_at: list[int] = []

        def should_stop() -> bool:  # two failed evaluations, and updates went on after the first
            if learner.eval_failures and not first_failure_at:
                first_failure_at.append(learner.update.updates)
            return learner.eval_failures >= 2 and learner.update.updates >= first_failure_at[0] + 20

        with caplog.at_level(logging.WARNING, logger="qfleet.learner"):
            summary = learner.run(should_stop)
        learner.telemetry.close()
        publisher.close()
        replay.close()
    assert summary["eval_failures"] >= 2 and summary["updates"] >= first_failure_at[0] + 20
    assert (learner.evaluator.restarts >= 1) == died
    reason = "the evaluator process died (exit code 17)" if died else "RuntimeError: the environment broke"
    assert reason in caplog.text and "evaluation skipped" in caplog.text
    final = {"eval_failures": summary["eval_failures"], "evaluator_restarts": learner.evaluator.restarts}
    reports = []  # counters only grow: a report with the run's final counts shows they were reported
    while not reports or {k: reports[-1].values.get(k) for k in final} != final:
        assert pull.poll(30_000), f"no report with the final counts {final} (hang guard)"
        reports.append(m.unpack(m.Report, decode(pull.recv_multipart(), {m.REPORT: m.REPORT_SCHEMA})))
    pull.close(0)


def test_epsilon_greedy_evaluation_takes_random_actions_at_that_rate():
    from qfleet.learner.evaluation import evaluate

    class AlwaysLeft:  # Q-values that make action 0 (push left) greedy
        def __call__(self, obs):
            return np.tile([1.0, 0.0], (len(obs), 1))

    greedy = evaluate(AlwaysLeft(), "CartPole-v1", 8, seed=3)
    assert evaluate(AlwaysLeft(), "CartPole-v1", 8, seed=3, epsilon=0.0).returns.tolist() == greedy.returns.tolist()
    noisy = evaluate(AlwaysLeft(), "CartPole-v1", 64, seed=3, epsilon=1.0)
    again = evaluate(AlwaysLeft(), "CartPole-v1", 64, seed=3, epsilon=1.0)
    assert noisy.returns.tolist() == again.returns.tolist()  # the draws come from the seed
    # pushing left always topples the pole in ~9 steps; uniformly random actions last ~22
    assert greedy.mean < 12 and noisy.mean > 16
    with pytest.raises(ValueError, match="epsilon 1.5 is not a probability"):
        evaluate(AlwaysLeft(), "CartPole-v1", 1, seed=0, epsilon=1.5)


@pytest.mark.timeout(120)
def test_the_background_evaluator_plays_epsilon_greedy_as_learner_eval_epsilon_says():
    """learner.eval_epsilon reaches the evaluator process: the same returns as `evaluate`
    with that epsilon and seed, and not those of the greedy policy."""
    from qfleet.learner.evaluation import BackgroundEvaluator, evaluate, greedy_policy

    spec = NetSpec("mlp", (4,), 2, (8,))
    params = {"torso.0.weight": np.zeros((8, 4), np.float32), "torso.0.bias": np.zeros(8, np.float32),
              "head.weight": np.zeros((2, 8), np.float32), "head.bias": np.array([1.0, 0.0], np.float32)}
    env = describe_env("CartPole-v1")
    results = {}
    for epsilon in (0.0, 1.0):
        evaluator = BackgroundEvaluator(spec=spec, env=env, episodes=32, seed=5, epsilon=epsilon)
        try:
            assert evaluator.submit(params, version=1)
            while (result := evaluator.poll(timeout=0.5)) is None:
                pass
        finally:
            evaluator.close()
        direct = evaluate(greedy_policy(spec, params), env, 32, seed=5, epsilon=epsilon)
        assert result.returns.tolist() == direct.returns.tolist()
        results[epsilon] = result.mean
    # always pushing left topples the pole in ~9 steps; uniformly random actions last ~22
    assert results[0.0] < 12 and results[1.0] > 16
    assert LearnerConfig().eval_epsilon == 0.0  # greedy unless asked
