"""Which Q-network an observation space gets (`common.netspec.choose_net`, through the
run plan and learner.network), what the torch module does with each layout and dtype, and
checkpoints of these networks: saved, refused when they do not fit, played by `qfleet eval`."""
from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from qfleet.common.config import LearnerConfig, QfleetConfig, RunConfig
from qfleet.common.envs import EnvSpec
from qfleet.common.errors import CheckpointError, ConfigError
from qfleet.common.netspec import NetSpec, NumpyQNet, choose_net, param_shapes
from qfleet.common.networks import TorchQPolicy, build_qnetwork
from qfleet.common.policy import make_policy
from qfleet.deploy import plan
from qfleet.learner.backend import resolve_backend
from qfleet.learner.checkpoint import load_policy, save_checkpoint, spec_from_meta
from qfleet.learner.learner import check_compatible
from qfleet.learner.torch_dqn import TorchDQN

ATARI = ((4, 84, 84), np.uint8)
MINATAR = ((10, 10, 4), np.bool_)
MINATAR_6 = ((10, 10, 6), np.bool_)
CARTPOLE = ((4,), np.float32)
FLOAT_FRAMES = ((4, 84, 84), np.float32)
RGB = ((210, 160, 3), np.uint8)

# (shape, dtype) -> (kind, torso, layout, input scale, hidden) under learner.network = 'auto'
AUTO = [
    (ATARI, ("cnn", "nature", "chw", 1 / 255, (512,))),
    (MINATAR, ("cnn", "minatar", "hwc", 1.0, (128,))),
    (MINATAR_6, ("cnn", "minatar", "hwc", 1.0, (128,))),
    (((10, 10, 10), np.bool_), ("cnn", "minatar", "hwc", 1.0, (128,))),  # Seaquest: both ends fit, HWC wins
    (RGB, ("cnn", "nature", "hwc", 1 / 255, (512,))),
    (CARTPOLE, ("mlp", None, None, None, (128, 128))),
    (FLOAT_FRAMES, ("mlp", None, None, None, (128, 128))),  # floats are never images under auto
    (((2, 2, 1), np.uint8), ("mlp", None, None, None, (128, 128))),  # frames under 3x3
    (((84, 84), np.uint8), ("mlp", None, None, None, (128, 128))),  # 2-D: no channel axis
]
SPECS = [choose_net(obs_shape=shape, obs_dtype=dtype, num_actions=6) for (shape, dtype), _ in AUTO] + [
    choose_net(obs_shape=FLOAT_FRAMES[0], obs_dtype=np.float32, num_actions=3, network="cnn", dueling=True),
    choose_net(obs_shape=MINATAR[0], obs_dtype=np.bool_, num_actions=3, network="mlp"),
    choose_net(obs_shape=ATARI[0], obs_dtype=np.uint8, num_actions=6, torso="nips2013")]


def observations(shape: tuple, dtype, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.bool_:
        return rng.random((n, *shape)) < 0.2
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return rng.random((n, *shape), dtype=np.float32)


@pytest.mark.parametrize("space,expected", AUTO, ids=lambda v: str(v[0]) if isinstance(v[0], tuple) else None)
def test_auto_gives_images_a_cnn_sized_to_the_frames_and_anything_else_an_mlp(space, expected):
    (shape, dtype), (kind, torso, layout, scale, hidden) = space, expected
    spec = choose_net(obs_shape=shape, obs_dtype=dtype, num_actions=6)
    assert (spec.kind, spec.hidden, spec.obs_shape) == (kind, hidden, shape)
    if kind == "cnn":
        assert (spec.torso, spec.layout) == (torso, layout)
        assert spec.input_scale == pytest.approx(scale)


def env_spec(shape: tuple, dtype, actions: int = 4) -> EnvSpec:
    return EnvSpec("Test-v0", shape, np.dtype(dtype), actions, None, None)


def config(**learner) -> QfleetConfig:
    return QfleetConfig(learner=dataclasses.replace(LearnerConfig(), **learner))


@pytest.mark.parametrize("space", [ATARI, MINATAR, CARTPOLE, FLOAT_FRAMES])
def test_learner_network_forces_either_kind(space):
    shape, dtype = space
    assert plan.net_spec(config(network="mlp"), env_spec(*space)).kind == "mlp"
    assert plan.net_spec(config(network="mlp", hidden=(32,)), env_spec(*space)).hidden == (32,)
    if space is CARTPOLE:
        with pytest.raises(ConfigError, match=r"learner.network = 'cnn' for Test-v0: .*these are \(4,\) float32"):
            plan.net_spec(config(network="cnn"), env_spec(*space))
        return
    forced = plan.net_spec(config(network="cnn", cnn_hidden=(64,)), env_spec(*space))
    assert forced.kind == "cnn" and forced.hidden == (64,)
    assert forced.input_scale == pytest.approx(1 / 255 if dtype == np.uint8 else 1.0)  # floats: as they are


def test_learner_torso_forces_a_torso_and_refuses_frames_too_small_for_it():
    atari = env_spec(*ATARI, 6)
    small = plan.net_spec(config(torso="nips2013"), atari)
    assert (small.torso, small.hidden) == ("nips2013", (256,))
    # Mnih et al. 2013: 16 8x8 stride 4 -> 20x20, 32 4x4 stride 2 -> 9x9, then 256 units
    assert param_shapes(small)["conv.0.weight"] == (16, 4, 8, 8)
    assert param_shapes(small)["conv.2.weight"] == (32, 16, 4, 4)
    assert param_shapes(small)["torso.0.weight"] == (256, 9 * 9 * 32)
    assert plan.net_spec(config(torso="nips2013", cnn_hidden=(128,)), atari).hidden == (128,)
    assert plan.net_spec(config(torso="minatar"), atari).torso == "minatar"  # any torso fits 84x84
    assert plan.net_spec(config(), atari).torso == "nature"                   # auto
    with pytest.raises(ConfigError, match=r"learner.torso = 'nips2013' for Test-v0: frames of 10x10 are too "
                                          r"small for the nips2013 torso \(needs 20x20\)"):
        plan.net_spec(config(torso="nips2013"), env_spec(*MINATAR))
    with pytest.raises(ConfigError, match="frames of 10x10 are too small for the nature torso"):
        plan.net_spec(config(torso="nature"), env_spec(*MINATAR))
    # a torso asked of observations that get an MLP would be ignored: refused instead
    with pytest.raises(ConfigError, match=r"learner.network = 'auto', learner.torso = 'nips2013' for Test-v0: the "
                                          r"nips2013 torso is a CNN's, and these observations \(\(4,\) float32\) "
                                          r"get an MLP; leave learner.torso at 'auto', or set learner.network = 'cnn'"):
        plan.net_spec(config(torso="nips2013"), env_spec(*CARTPOLE))
    with pytest.raises(ConfigError, match="learner.network = 'mlp', learner.torso = 'nature' for Test-v0: the "
                                          "nature torso is a CNN's"):
        plan.net_spec(config(network="mlp", torso="nature"), atari)
    with pytest.raises(ValueError, match="unknown CNN torso 'resnet'"):
        choose_net(obs_shape=ATARI[0], obs_dtype=np.uint8, num_actions=6, torso="resnet")


def test_the_cartpole_pixel_run_keeps_its_network_and_parameter_names():
    """What run.obs = pixels got before learner.network existed, field for field, so its
    checkpoints still resume and play."""
    cfg = QfleetConfig(run=RunConfig(obs="pixels"))
    before = NetSpec("cnn", (4, 84, 84), 2, (512,), False)
    spec = plan.net_spec(cfg, env_spec((4, 84, 84), np.uint8, 2))
    assert spec == before
    assert list(param_shapes(spec)) == ["conv.0.weight", "conv.0.bias", "conv.2.weight", "conv.2.bias",
                                        "conv.4.weight", "conv.4.bias", "torso.0.weight", "torso.0.bias",
                                        "head.weight", "head.bias"]
    old_meta = {"net_spec": {"kind": "cnn", "obs_shape": [4, 84, 84], "num_actions": 2, "hidden": [512],
                             "dueling": False}, "env_id": "CartPole-v1"}  # a checkpoint written before
    assert spec_from_meta(old_meta["net_spec"]) == spec
    check_compatible(old_meta, spec, "CartPole-v1", "adam")  # no optimizer named: adam, the only one then


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_param_shapes_are_the_torch_modules_and_a_batch_gives_one_row_of_q_values_each(spec):
    torch.manual_seed(0)
    net = build_qnetwork(spec)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == param_shapes(spec)
    assert list(net.state_dict()) == list(param_shapes(spec))
    dtype = {1 / 255: np.uint8}.get(spec.input_scale, np.bool_) if spec.kind == "cnn" else np.float32
    if spec.obs_shape == FLOAT_FRAMES[0]:
        dtype = np.float32
    obs = observations(spec.obs_shape, dtype, 5)
    q = net(torch.from_numpy(obs))
    assert q.shape == (5, spec.num_actions) and q.dtype == torch.float32 and torch.isfinite(q).all()
    policy = make_policy(spec)
    assert isinstance(policy, TorchQPolicy if spec.kind == "cnn" else NumpyQNet)
    policy.load({k: v.detach().numpy() for k, v in net.state_dict().items()})
    np.testing.assert_allclose(policy(obs), q.detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("space", [MINATAR, MINATAR_6, RGB])
def test_hwc_frames_are_permuted_and_scaled_by_the_module(space):
    """The module given HWC bool (or uint8) frames computes what its layers compute on the
    same data permuted to CHW and scaled to [0, 1] by hand."""
    shape, dtype = space
    spec = choose_net(obs_shape=shape, obs_dtype=dtype, num_actions=5)
    net = build_qnetwork(spec)
    obs = torch.from_numpy(observations(shape, dtype, 3))
    chw = obs.permute(0, 3, 1, 2).float() * (1 / 255 if dtype == np.uint8 else 1.0)
    by_hand = net.head(net.torso(net.conv(chw.contiguous()).flatten(1)))
    torch.testing.assert_close(net(obs), by_hand)
    twin = NetSpec("cnn", tuple(chw.shape[1:]), 5, spec.hidden, torso=spec.torso, layout="chw", input_scale=1.0)
    chw_net = build_qnetwork(twin)
    chw_net.load_state_dict(net.state_dict())  # the same parameters fit both layouts
    torch.testing.assert_close(chw_net(chw), net(obs))


def test_cnns_run_in_torch_on_the_learner_and_numpy_is_refused_by_name():
    minatar = choose_net(obs_shape=MINATAR[0], obs_dtype=np.bool_, num_actions=3)
    assert resolve_backend(LearnerConfig(), minatar, "cpu") == "torch"
    with pytest.raises(ConfigError, match="numpy' runs MLPs on the CPU only.*minatar CNN"):
        resolve_backend(LearnerConfig(backend="numpy"), minatar, "cpu")
    with pytest.raises(ConfigError, match=r"numpy' runs MLPs only.*minatar CNN on HWC \(10, 10, 4\)"):
        plan._check_extras(config(backend="numpy"), minatar)
    plan._check_extras(config(backend="numpy"), choose_net(obs_shape=(4,), obs_dtype=np.float32, num_actions=2))


class BoolGrid(gym.Env):
    """A MinAtar-shaped user environment: (10, 10, 4) bool HWC observations, a lit cell in
    channel 0 whose column says which of 3 actions pays; 12 steps an episode."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    max_episode_steps = 12

    def __init__(self, render_mode=None):
        self.observation_space = gym.spaces.Box(0, 1, MINATAR[0], np.bool_)
        self.action_space = gym.spaces.Discrete(3)
        self.render_mode = render_mode
        self._obs = np.zeros(MINATAR[0], np.bool_)

    def _draw(self) -> np.ndarray:
        self._obs[:] = False
        self._col = int(self.np_random.integers(0, 3))
        self._obs[int(self.np_random.integers(0, 10)), self._col, 0] = True
        self._obs[:, :, 1] = self.np_random.random((10, 10)) < 0.1  # distractors
        return self._obs.copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._draw(), {}

    def step(self, action):
        reward = float(int(action) == self._col)
        return self._draw(), reward, False, False, {}

    def render(self):
        return np.repeat(np.repeat(self._obs[:, :, :3].astype(np.uint8) * 255, 4, 0), 4, 1)


def grid_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    obs = observations(MINATAR[0], np.bool_, n, seed)
    return {"obs": obs, "next_obs": observations(MINATAR[0], np.bool_, n, seed + 1),
            "action": rng.integers(0, 3, n).astype(np.int32), "reward": rng.random(n).astype(np.float32),
            "discount": np.full(n, 0.97, np.float32), "weight": np.ones(n, np.float32)}


def test_a_minatar_checkpoint_round_trips_refuses_another_network_and_plays(tmp_path, capsys):
    from qfleet import evaluate
    from qfleet.deploy.cli import main

    torch.set_num_threads(1)
    env_id = "tests.test_network_choice:BoolGrid"
    cfg = QfleetConfig(run=RunConfig(env=env_id))
    spec = plan.make_plan(cfg).net
    assert (spec.kind, spec.torso, spec.layout, spec.obs_shape) == ("cnn", "minatar", "hwc", MINATAR[0])
    update = TorchDQN(dataclasses.replace(LearnerConfig(), batch_size=32), spec, torch.device("cpu"), seed=0)
    for i in range(3):
        update.step(grid_batch(32, i))
    arrays = {**update.state(), **{f"policy/{k}": v for k, v in update.params().items()}}
    meta = {"net_spec": spec._asdict(), "env_id": env_id, "pixels": None}  # what the learner records
    save_checkpoint(tmp_path / "checkpoint.npz", arrays, meta)

    saved = load_policy(tmp_path)
    assert saved.spec == spec and saved.env == env_id
    restored = TorchDQN(LearnerConfig(), saved.spec, torch.device("cpu"), seed=1)
    restored.load(arrays)
    obs = grid_batch(8, 9)["obs"]
    with torch.no_grad():
        expected = update.online(torch.from_numpy(obs)).numpy()
        torch.testing.assert_close(restored.online(torch.from_numpy(obs)).numpy(), expected)
    policy = make_policy(saved.spec)
    policy.load(saved.params)
    np.testing.assert_allclose(policy(obs), expected, rtol=1e-5, atol=1e-6)

    nature = spec._replace(torso="nature", obs_shape=(4, 84, 84), layout="chw")
    with pytest.raises(CheckpointError, match=r"obs_shape: checkpoint \[10, 10, 4\], this run \[4, 84, 84\]; "
                                              r"torso: checkpoint 'minatar', this run 'nature'; layout"):
        check_compatible(meta, nature, env_id, "adam")

    result = evaluate(tmp_path, episodes=4, seed=3)
    assert result.returns.shape == (4,) and result.lengths.tolist() == [12] * 4
    assert main(["eval", str(tmp_path), "--episodes", "4", "--seed", "3", "--gif", str(tmp_path / "a.gif"),
                 "--gif-episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "minatar CNN on HWC (10, 10, 4) -> (128,) -> 3 actions" in out
    assert f"mean {result.mean:.2f}" in out and (tmp_path / "a.gif").stat().st_size > 0


def test_a_checkpoint_is_not_played_on_observations_it_was_not_built_for(tmp_path):
    from qfleet.deploy.cli import main

    spec = choose_net(obs_shape=(10, 10, 6), obs_dtype=np.bool_, num_actions=3)  # not BoolGrid's (10, 10, 4)
    params = {f"policy/{k}": np.zeros(s, np.float32) for k, s in param_shapes(spec).items()}
    save_checkpoint(tmp_path / "checkpoint.npz", params,
                    {"net_spec": spec._asdict(), "env_id": "tests.test_network_choice:BoolGrid", "pixels": None})
    with pytest.raises(CheckpointError, match=r"takes observations of shape \(10, 10, 6\), but the environment "
                                              r"gives \(10, 10, 4\)"):
        from qfleet import evaluate

        evaluate(tmp_path, episodes=1)
    assert main(["eval", str(tmp_path), "--episodes", "1"]) == 2


def test_a_real_minatar_game_gets_the_small_cnn_and_its_checkpoint_plays(tmp_path):
    pytest.importorskip("minatar")
    from qfleet import evaluate
    from qfleet.common.envs import describe_env

    env = describe_env("MinAtar/Breakout-v1")
    spec = plan.net_spec(QfleetConfig(), env)
    assert (spec.kind, spec.torso, spec.layout, spec.input_scale) == ("cnn", "minatar", "hwc", 1.0)
    net = build_qnetwork(spec)
    params = {f"policy/{k}": v.detach().numpy() for k, v in net.state_dict().items()}
    save_checkpoint(tmp_path / "checkpoint.npz", params,
                    {"net_spec": spec._asdict(), "env_id": "MinAtar/Breakout-v1", "pixels": None})
    result = evaluate(tmp_path, episodes=2, seed=0)
    assert result.returns.shape == (2,) and (result.lengths > 0).all()


def test_the_learner_benchmark_has_the_atari_and_minatar_networks_at_any_batch_size():
    from qfleet.deploy.bench.learner import CASES, parse_cases, synthetic_batches

    assert parse_cases("minatar:32,minatar:256,atari,mlp") == [
        ("minatar_b32", "minatar", 32), ("minatar_b256", "minatar", 256), ("atari", "atari", 32), ("mlp", "mlp", 256)]
    with pytest.raises(ConfigError, match="NAME:BATCH"):
        parse_cases("minatar:0")
    assert CASES["minatar"].spec().torso == "minatar" and CASES["atari"].spec().torso == "nature"
    assert CASES["cnn"].spec() == NetSpec("cnn", (4, 84, 84), 2, (512,))  # the pixel figures stay comparable
    batch = synthetic_batches(CASES["minatar"].spec(), 8, count=1, obs_dtype=np.bool_)[0]
    assert batch["obs"].dtype == np.bool_ and batch["obs"].shape == (8, 10, 10, 4)


@pytest.mark.slow
def test_a_bool_hwc_environment_trains_end_to_end_with_the_small_cnn_and_its_checkpoint_plays(qfleet_cmd, tmp_path):
    """The whole system on MinAtar-shaped observations without minatar: actors act with the
    torch policy, the replay server stores bool grids, the learner trains the small CNN in
    torch, evaluates, and writes a checkpoint that `qfleet eval` plays. The run ends on its
    first finished evaluation (600 s is only a hang guard)."""
    import json
    import subprocess

    from tests.conftest import python_env

    cmd = qfleet_cmd + ["train", "--env", "tests.test_network_choice:BoolGrid", "--actors", "1", "--envs-per-actor",
                        "8", "--max-seconds", "600", "--run-dir", str(tmp_path), "--name", "run",
                        "--set", "run.max_evaluations=1", "--set", "learner.batch_size=32",
                        "--set", "replay.min_size_to_sample=200", "--set", "learner.prefetch=2",
                        "--set", "learner.batches_per_request=1", "--set", "learner.eval_every_s=1",
                        "--set", "learner.eval_episodes=4", "--set", "learner.publish_every=5"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=python_env(), timeout=660)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reason"] == "evaluation budget reached" and summary["updates"] > 0, summary
    assert summary["replay"]["obs_dtype"] == "bool" and summary["replay"]["rejected"] == 0
    saved = load_policy(tmp_path / "run")
    assert (saved.spec.kind, saved.spec.torso, saved.spec.layout) == ("cnn", "minatar", "hwc")
    assert saved.params["conv.0.weight"].shape == (16, 4, 3, 3)
    out = subprocess.run(qfleet_cmd + ["eval", str(tmp_path / "run"), "--episodes", "3"], capture_output=True,
                         text=True, env=python_env(), timeout=120)
    assert out.returncode == 0 and "greedy return over 3 episode(s)" in out.stdout, out.stdout + out.stderr
