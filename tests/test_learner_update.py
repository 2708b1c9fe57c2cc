"""The DQN update: the Double-DQN target on a tiny case, numpy and torch backends agreeing,
the numpy MLP forward matching torch's, and the checkpoint format."""
import dataclasses

import numpy as np
import pytest
import torch

from qfleet.common.config import LearnerConfig
from qfleet.common.errors import CheckpointError
from qfleet.common.netspec import NetSpec, NumpyQNet, param_shapes
from qfleet.common.networks import build_qnetwork
from qfleet.learner.checkpoint import load_checkpoint, save_checkpoint
from qfleet.learner.numpy_dqn import NumpyDQN
from qfleet.learner.torch_dqn import TorchDQN, double_dqn_target


class Table(torch.nn.Module):
    """A 'network' that looks up fixed Q-values by observation id."""

    def __init__(self, q):
        super().__init__()
        self.q = torch.tensor(q, dtype=torch.float32)

    def forward(self, obs):
        return self.q[obs.long().squeeze(1)]


def test_double_dqn_target_tiny_case():
    online = Table([[1.0, 5.0], [3.0, 2.0]])   # online argmax: state 0 -> a1, state 1 -> a0
    target = Table([[10.0, 20.0], [30.0, 40.0]])
    reward = torch.tensor([1.0, 2.0, 3.0])
    discount = torch.tensor([0.5, 0.9, 0.0])
    next_obs = torch.tensor([[0.0], [1.0], [1.0]])
    out = double_dqn_target(online, target, reward, discount, next_obs)
    # target net evaluates the online net's choice (20 and 30), not its own max (20 and 40)
    torch.testing.assert_close(out, torch.tensor([1 + 0.5 * 20, 2 + 0.9 * 30, 3.0]))


def batches(n, num_actions=3, seed=1):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        b = 32
        yield {"obs": rng.standard_normal((b, 4)).astype(np.float32) * 3,
               "action": rng.integers(0, num_actions, b).astype(np.int32),
               "reward": rng.standard_normal(b).astype(np.float32) * 5,
               "next_obs": rng.standard_normal((b, 4)).astype(np.float32),
               "discount": np.where(rng.random(b) < 0.2, 0, 0.97).astype(np.float32),
               "weight": rng.uniform(0.1, 1, b).astype(np.float32)}


OPTIMIZERS = {"adam": {"optimizer": "adam"}, "rmsprop": {"optimizer": "rmsprop", "lr": 1e-3},
              "rmsprop-uncentred": {"optimizer": "rmsprop", "lr": 1e-3, "rmsprop_centered": False}}
OPTIMIZER_KEYS = {"adam": {"adam_m", "adam_v", "adam_step"},
                  "rmsprop": {"rmsprop_sq", "rmsprop_mean", "rmsprop_step"},
                  "rmsprop-uncentred": {"rmsprop_sq", "rmsprop_step"}}


@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("target_update", ["polyak", "hard"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_numpy_and_torch_backends_agree(dueling, target_update, optimizer):
    torch.set_num_threads(1)
    cfg = dataclasses.replace(LearnerConfig(), **{"hidden": (16, 8), "dueling": dueling, "grad_clip": 0.5, "lr": 1e-2,
                                                  "target_update": target_update, "target_period": 2,
                                                  **OPTIMIZERS[optimizer]})
    spec = NetSpec("mlp", (4,), 3, (16, 8), dueling)
    fast, ref = NumpyDQN(cfg, spec, 0), TorchDQN(cfg, spec, torch.device("cpu"))
    ref.load(fast.state())
    resumed = TorchDQN(cfg, spec, torch.device("cpu"), seed=1)
    for i, batch in enumerate(batches(6)):
        if i == 3:  # the numpy learner's optimizer state, mid-run, carries over to torch
            resumed.load(fast.state())
        td_fast, loss_fast = fast.step(batch)
        td_ref, loss_ref = ref.step(batch)
        assert loss_fast == pytest.approx(loss_ref, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(td_fast, td_ref, rtol=1e-5, atol=1e-5)
        if i >= 3:
            np.testing.assert_allclose(resumed.step(batch)[0], td_ref, rtol=1e-5, atol=1e-5)
    fast_state, ref_state = fast.state(), ref.state()
    assert fast_state.keys() == ref_state.keys() == resumed.state().keys()
    assert {k.split("/")[0] for k in fast_state} == {"online", "target", "updates"} | OPTIMIZER_KEYS[optimizer]
    for k in fast_state:
        np.testing.assert_allclose(fast_state[k], ref_state[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_numpy_forward_matches_torch():
    spec = NetSpec("mlp", (4,), 2, (32, 32), True)
    net = build_qnetwork(spec)
    params = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in params.items()} == param_shapes(spec)
    fast = NumpyQNet(spec)
    fast.load(params)
    obs = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    np.testing.assert_allclose(fast(obs), net(torch.from_numpy(obs)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_learning_reduces_td_error_on_a_fixed_batch():
    cfg = dataclasses.replace(LearnerConfig(), hidden=(32,), lr=1e-2)
    update = NumpyDQN(cfg, NetSpec("mlp", (4,), 3, (32,)), 0)
    batch = next(batches(1))
    batch["discount"][:] = 0.0  # a pure regression problem: Q(s, a) -> r
    first, _ = update.step(batch)
    for _ in range(300):
        last, _ = update.step(batch)
    assert last.mean() < 0.2 * first.mean()


def test_checkpoint_round_trip_and_errors(tmp_path):
    update = NumpyDQN(LearnerConfig(), NetSpec("mlp", (4,), 2), 0)
    for batch in batches(3, num_actions=2):
        update.step(batch)
    path = save_checkpoint(tmp_path / "checkpoint.npz", update.state(), {"updates": 3, "env_id": "CartPole-v1"})
    arrays, meta = load_checkpoint(tmp_path)  # a run directory works too
    assert meta["updates"] == 3 and meta["env_id"] == "CartPole-v1"
    restored = NumpyDQN(LearnerConfig(), NetSpec("mlp", (4,), 2), 1)
    restored.load(arrays)
    for k, v in update.state().items():
        np.testing.assert_array_equal(restored.state()[k], v)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.npz")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a qfleet checkpoint"):
        load_checkpoint(other)


def test_a_failed_checkpoint_write_keeps_the_previous_file_and_no_temporary(tmp_path):
    class Unwritable:
        def __array__(self, dtype=None, copy=None):
            raise OSError("No space left on device")

    path = save_checkpoint(tmp_path / "checkpoint.npz", {"x": np.arange(3)}, {"updates": 1})
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"x": np.arange(3), "y": Unwritable()}, {"updates": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]
    arrays, meta = load_checkpoint(path)
    assert meta["updates"] == 1 and arrays["x"].tolist() == [0, 1, 2]
