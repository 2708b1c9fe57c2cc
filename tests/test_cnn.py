"""The CNN Q-network: parameter shapes known without torch, forward shapes and input
scaling, the CPU policy used by actors and the evaluator, and learning on a fixed batch."""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from qfleet.common.config import LearnerConfig
from qfleet.common.netspec import NetSpec, conv_output_shape, param_shapes
from qfleet.common.networks import TorchQPolicy, build_qnetwork, params_to_numpy
from qfleet.common.policy import make_policy
from qfleet.learner.torch_dqn import TorchDQN
from tests.conftest import python_env


@pytest.mark.parametrize("obs_shape,hidden,dueling", [((4, 84, 84), (512,), False), ((2, 36, 50), (64, 32), True),
                                                      ((1, 64, 64), (16,), False)])
def test_param_shapes_match_the_torch_module(obs_shape, hidden, dueling):
    spec = NetSpec("cnn", obs_shape, 3, hidden, dueling)
    net = build_qnetwork(spec)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == param_shapes(spec)
    assert list(net.state_dict()) == list(param_shapes(spec))  # the same order, too
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_classic_torso_geometry():
    assert conv_output_shape(NetSpec("cnn", (4, 84, 84), 2)) == (64, 7, 7)  # 3136 features into the dense layer
    assert param_shapes(NetSpec("cnn", (4, 84, 84), 2, (512,)))["torso.0.weight"] == (512, 3136)
    with pytest.raises(ValueError, match="32x32 are too small for the nature torso"):
        conv_output_shape(NetSpec("cnn", (4, 32, 32), 2))


def test_forward_shapes_and_uint8_scaling():
    torch.manual_seed(0)
    spec = NetSpec("cnn", (4, 84, 84), 2, (512,))
    net = build_qnetwork(spec)
    frames = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    q = net(frames)
    assert q.shape == (5, 2) and q.dtype == torch.float32
    torch.testing.assert_close(net(frames.float()), q)  # uint8 frames and 0..255 floats agree
    assert not torch.allclose(net(frames // 2), q)


def test_torch_policy_matches_the_network_and_loads_published_weights():
    spec = NetSpec("cnn", (4, 84, 84), 2, (64,), True)
    net = build_qnetwork(spec)
    policy = make_policy(spec)
    assert isinstance(policy, TorchQPolicy) and not policy.loaded
    policy.load(params_to_numpy(net))
    assert policy.loaded
    obs = np.random.default_rng(0).integers(0, 256, (7, 4, 84, 84), dtype=np.uint8)
    q = policy(obs)
    assert isinstance(q, np.ndarray) and q.shape == (7, 2)
    np.testing.assert_allclose(q, net(torch.from_numpy(obs)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_mlp_actors_never_import_torch():
    code = ("import sys; import qfleet.actors.actor, qfleet.learner.evaluation; from qfleet.common.netspec import NetSpec; "
            "from qfleet.common.policy import make_policy; from qfleet.common.envs import make_vec_env; "
            "make_policy(NetSpec('mlp', (4,), 2)); "
            "make_vec_env('CartPole-v1', 2).close(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=python_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def frame_batch(rng, n, obs_shape):
    return {"obs": rng.integers(0, 256, (n, *obs_shape), dtype=np.uint8),
            "next_obs": rng.integers(0, 256, (n, *obs_shape), dtype=np.uint8),
            "action": rng.integers(0, 2, n).astype(np.int32), "reward": rng.standard_normal(n).astype(np.float32),
            "discount": np.zeros(n, np.float32), "weight": np.ones(n, np.float32)}


def test_cnn_learner_fits_a_fixed_batch_and_round_trips_its_state():
    torch.set_num_threads(1)
    spec = NetSpec("cnn", (2, 36, 36), 2, (32,))
    cfg = dataclasses.replace(LearnerConfig(), lr=1e-3, batch_size=16)
    update = TorchDQN(cfg, spec, torch.device("cpu"), seed=0)
    batch = frame_batch(np.random.default_rng(0), 16, spec.obs_shape)  # discount 0: Q(s, a) -> r
    first, _ = update.step(batch)
    for _ in range(150):
        last, _ = update.step(batch)
    assert last.mean() < 0.2 * first.mean()
    restored = TorchDQN(cfg, spec, torch.device("cpu"), seed=1)
    restored.load(update.state())
    for key, value in update.state().items():
        np.testing.assert_array_equal(restored.state()[key], value, err_msg=key)
    np.testing.assert_allclose(restored.step(batch)[0], update.step(batch)[0], rtol=1e-6)
