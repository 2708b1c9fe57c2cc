"""Environments: any discrete-action Box-observation env by id or import path; others are
refused before anything starts, with one line and exit code 2."""
import importlib.util
import multiprocessing as mp
import subprocess

import numpy as np
import pytest

from qfleet.common.envs import describe_env, make_vec_env
from qfleet.common.errors import EnvironmentSpecError
from qfleet.common.netspec import NetSpec, NumpyQNet, param_shapes
from tests.conftest import python_env

USER_ENV = "tests.user_envs:ReachTarget"


@pytest.mark.parametrize("env_id,threshold,steps,actions", [
    ("CartPole-v1", 475.0, 500, 2), ("CartPole-v0", 195.0, 200, 2), ("Acrobot-v1", -100.0, 500, 3),
    ("MountainCar-v0", -110.0, 200, 3),
    pytest.param("LunarLander-v3", 200.0, 1000, 4, marks=pytest.mark.skipif(
        importlib.util.find_spec("Box2D") is None, reason="the box2d extra is not installed")),
])
def test_threshold_and_limits_come_from_the_env_spec(env_id, threshold, steps, actions):
    spec = describe_env(env_id)
    assert (spec.reward_threshold, spec.max_episode_steps, spec.num_actions) == (threshold, steps, actions)


def test_user_env_by_import_path_takes_its_class_attributes():
    spec = describe_env(USER_ENV)
    assert spec.env_id == USER_ENV and spec.obs_shape == (2, 3) and spec.num_actions == 3
    assert spec.reward_threshold == 0.5 and spec.max_episode_steps == 30 and spec.render_fps == 10


def _make_in_child(queue):
    env = make_vec_env(USER_ENV, 2)  # a fresh interpreter: nothing registered yet
    obs, _ = env.reset(seed=0)
    queue.put(obs.shape)
    env.close()


def test_user_env_is_made_in_spawned_processes():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_make_in_child, args=(queue,))
    proc.start()
    shape = queue.get(timeout=60)
    proc.join(10)
    assert proc.exitcode == 0 and shape == (2, 2, 3)


def test_multi_dimensional_observations_are_flattened_by_the_q_network():
    spec = NetSpec("mlp", (2, 3), 3, (8,))
    assert param_shapes(spec)["torso.0.weight"] == (8, 6)
    env = make_vec_env(USER_ENV, 4)
    obs, _ = env.reset(seed=1)
    net = NumpyQNet(spec)
    net.load({k: np.ones(s, np.float32) for k, s in param_shapes(spec).items()})
    assert net(obs).shape == (4, 3)
    env.close()


@pytest.mark.parametrize("env,message", [
    ("Pendulum-v1", "'Pendulum-v1' has a Box action space; qfleet's DQN needs a Discrete one"),
    ("tests.user_envs:SteerContinuously", "has a Box action space; qfleet's DQN needs a Discrete one"),
    ("CartPol-v1", "unknown environment 'CartPol-v1'"),
    ("no_such_module:Env", "cannot import 'no_such_module'"),
    ("tests.user_envs:NoSuchClass", "module 'tests.user_envs' has no attribute 'NoSuchClass'"),
])
@pytest.mark.parametrize("command", ["train", "baseline reinforce"])
def test_unusable_env_is_refused_before_anything_starts(qfleet_cmd, tmp_path, env, message, command):
    out = subprocess.run(qfleet_cmd + command.split() + ["--env", env, "--run-dir", str(tmp_path / "runs")],
                         capture_output=True, text=True, env=python_env(), timeout=60)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # no run directory, no process


def test_describe_env_refuses_non_discrete_actions_in_process():
    with pytest.raises(EnvironmentSpecError, match="Discrete"):
        describe_env("MountainCarContinuous-v0")
