"""The Atari preset (common/atari.py) and the learning signal (actors/training_signal.py):
ALE ids get (4, 84, 84) uint8 stacks from ale-py's native vector env and the Nature CNN;
the learner's rewards are clipped and a lost life ends its n-step return, while episodes,
evaluation and reported scores keep the game's raw rewards over all lives."""
from pathlib import Path

import numpy as np
import pytest

from qfleet.actors.nstep import NStepAdder
from qfleet.actors.training_signal import TrainingSignal
from qfleet.common import atari
from qfleet.common.config_loader import load_config
from qfleet.common.envs import EnvSpec, describe_env, make_vec_env
from qfleet.common.errors import EnvironmentSpecError
from qfleet.common.extras import available
from qfleet.deploy.plan import make_plan
from qfleet.learner.evaluation import evaluate

needs_ale = pytest.mark.skipif(not available("ale_py"), reason="the atari extra is not installed")


def test_the_signal_clips_rewards_and_ends_returns_at_a_lost_life():
    signal = TrainingSignal(clip_rewards=True, life_loss_terminal=True)
    valid, no = np.ones(3, bool), np.zeros(3, bool)
    reward, term = signal(np.array([7.0, -3.0, 0.0]), no, valid, {"lives": np.array([3, 3, 3])})
    assert reward.tolist() == [1.0, -1.0, 0.0] and not term.any()
    # env 0 loses a life; env 1's episode ends (terminated, not a life loss); env 2's step is a reset step
    _, term = signal(np.zeros(3), np.array([False, True, False]), np.array([True, True, False]),
                     {"lives": np.array([2, 2, 5])})
    assert term.tolist() == [True, True, False] and signal.lives_lost == 1
    _, term = signal(np.zeros(3), no, valid, {"lives": np.array([2, 5, 5])})  # a new episode's lives are more
    assert not term.any()


def test_plain_environments_learn_from_their_own_rewards():
    spec = EnvSpec("CartPole-v1", (4,), np.dtype(np.float32), 2, 475.0, 500)
    signal = TrainingSignal.for_env(spec)
    reward, term = signal(np.array([5.0, 0.5]), np.array([False, True]), np.ones(2, bool), {"lives": np.array([1, 0])})
    assert reward.tolist() == [5.0, 0.5] and term.tolist() == [False, True]


def test_a_lost_life_gives_no_bootstrap_and_the_episode_goes_on():
    """Through the n-step adder: the step that lost the life has discount 0, the next
    step starts a new n-step window from the same episode (no reset step in between)."""
    adder = NStepAdder(num_envs=1, n=3, gamma=0.9, obs_shape=(1,))
    signal = TrainingSignal(clip_rewards=True, life_loss_terminal=True)
    out = []
    for t, lives in enumerate([3, 3, 2, 2, 2, 2]):
        obs, nxt = np.array([[t]], np.float32), np.array([[t + 1]], np.float32)
        r, term = signal(np.array([10.0]), np.zeros(1, bool), np.ones(1, bool), {"lives": np.array([lives])})
        got = adder.add(obs, np.zeros(1, np.int32), r, nxt, term, np.zeros(1, bool), np.ones(1, bool))
        out += list(zip(got["obs"][:, 0], got["reward"], got["discount"]))
    assert out[:3] == [(0.0, pytest.approx(1 + 0.9 + 0.81), 0.0), (1.0, pytest.approx(1.9), 0.0),
                       (2.0, pytest.approx(1.0), 0.0)]  # the life was lost on step 2: no bootstrap
    assert out[3] == (3.0, pytest.approx(2.71), pytest.approx(0.729))  # then ordinary 3-step returns


def test_game_names_and_preset_settings():
    assert atari.game_of("ALE/Pong-v5") == "pong" and atari.game_of("ALE/SpaceInvaders-v5") == "space_invaders"
    kw = atari.preset_kwargs({"repeat_action_probability": 0.0})
    assert kw["repeat_action_probability"] == 0.0 and kw["frameskip"] == 4 and kw["reward_clipping"] is False
    assert atari.obs_shape({}) == (4, 84, 84)
    with pytest.raises(ValueError, match="not settings of the Atari preset"):
        atari.preset_kwargs({"render_mode": "rgb_array"})


@needs_ale
def test_ale_ids_get_the_preset_and_the_nature_cnn():
    spec = describe_env("ALE/Pong-v5")
    assert (spec.obs_shape, spec.obs_dtype, spec.num_actions, spec.preset) == ((4, 84, 84), np.uint8, 6, "atari")
    plan = make_plan(load_config(None, ["run.env=ALE/Pong-v5", "replay.capacity=1000",
                                        "replay.min_size_to_sample=500"]))
    assert (plan.net.kind, plan.net.torso, plan.net.obs_shape) == ("cnn", "nature", (4, 84, 84))
    assert describe_env("ALE/Pong-v5", preset="none").obs_shape == (210, 160, 3)  # gymnasium's env, as it is
    with pytest.raises(EnvironmentSpecError, match="unknown environment 'ALE/NoSuchGame-v5'"):
        describe_env("ALE/NoSuchGame-v5")
    with pytest.raises(EnvironmentSpecError, match="not settings of the Atari preset"):
        describe_env("ALE/Pong-v5", env_kwargs={"obs_type": "rgb"})
    envs = make_vec_env(spec, 2)
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8 and obs.any()
    finally:
        envs.close()


@needs_ale
def test_evaluation_scores_are_the_games_raw_rewards():
    """Space Invaders scores 5-30 points an invader: the evaluation's return equals the raw
    sum of a reference loop with the same seed and actions, not the clipped sum."""
    spec = describe_env("ALE/SpaceInvaders-v5", env_kwargs={"repeat_action_probability": 0.0})
    fire = lambda obs: np.tile(np.eye(spec.num_actions)[1], (len(obs), 1))  # always FIRE
    result = evaluate(fire, spec, episodes=1, seed=3)

    ref = atari.make_atari_vec(spec.env_id, 1, spec.kwargs)
    raw = clipped = 0.0
    try:
        ref.reset(seed=3)
        while True:
            _, reward, terminated, truncated, _ = ref.step(np.array([1]))
            raw += float(reward[0])
            clipped += float(np.sign(reward[0]))
            if terminated[0] or truncated[0]:
                break
    finally:
        ref.close()
    assert result.mean == raw and raw > clipped > 0


CONFIGS = Path(__file__).resolve().parents[1] / "deploy" / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_the_committed_configs_load(name):
    """Every field of the shipped configs exists and is in range; where the game's extra is
    installed, its environment is the one the config is written for."""
    cfg = load_config(CONFIGS / name)
    module = {"ALE": "ale_py", "MinAtar": "minatar"}.get(cfg.run.env.split("/")[0])
    if module and available(module):
        spec = describe_env(cfg.run.env, env_kwargs=cfg.run.env_kwargs, preset=cfg.run.preset)
        assert spec.obs_dtype in (np.uint8, np.bool_) and len(spec.obs_shape) == 3


@needs_ale
@pytest.mark.slow
def test_a_pong_run_through_the_preset_trains_and_its_checkpoint_plays(qfleet_cmd, tmp_path):
    """The whole system on ALE/Pong-v5 with the preset: the actor's native vector env, the
    Nature CNN on (4, 84, 84) uint8 stacks sent and stored a frame at a time (lz4), a checkpoint that records the preset, qfleet
    eval playing it, and a GIF of the console's own colour frames."""
    import json
    import subprocess

    from qfleet.learner.checkpoint import load_policy
    from tests.conftest import python_env

    out = subprocess.run(qfleet_cmd + ["train", "--env", "ALE/Pong-v5", "--actors", "1", "--envs-per-actor", "8",
                                       "--max-seconds", "600", "--set", "run.max_updates=20",
                                       "--set", "run.stop_when_solved=false", "--set", "learner.batch_size=32",
                                       "--set", "replay.min_size_to_sample=200", "--set", "replay.capacity=2000",
                                       "--set", "replay.frame_codec=lz4",
                                       "--run-dir", str(tmp_path), "--name", "run"],
                         capture_output=True, text=True, env=python_env(), timeout=660)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Atari preset (common/atari.py): stacks of 4 84x84 grey frames" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reason"] == "update budget reached" and summary["replay"]["rejected"] == 0, summary
    # Frames went over the wire once each and are stored lz4-compressed: well under one raw
    # 84x84 frame (7,056 B) per stored transition even at this small capacity.
    replay = summary["replay"]
    assert replay["frames_missing"] == 0 and replay["stored"] >= 200
    assert replay["bytes_per_transition"] < 7_056, replay["bytes_per_transition"]
    saved = load_policy(tmp_path / "run")
    assert (saved.spec.torso, saved.spec.obs_shape, saved.env_preset) == ("nature", (4, 84, 84), "atari")
    played = subprocess.run(qfleet_cmd + ["eval", str(tmp_path / "run"), "--episodes", "1"], capture_output=True,
                            text=True, env=python_env(), timeout=300)
    assert played.returncode == 0 and "greedy return over 1 episode(s)" in played.stdout, played.stdout + played.stderr
    gif = subprocess.run(qfleet_cmd + ["eval", str(tmp_path / "run"), "--episodes", "1", "--gif", str(tmp_path / "p.gif"),
                                       "--gif-episodes", "1", "--gif-max-frames", "40"],
                         capture_output=True, text=True, env=python_env(), timeout=300)
    assert gif.returncode == 0 and "gif: " in gif.stdout and "40 frames of 160x210" in gif.stdout, gif.stdout + gif.stderr
    from PIL import Image
    with Image.open(tmp_path / "p.gif") as img:  # the console's colour frames, not the agent's grey 84x84
        assert img.size == (160, 210) and img.n_frames > 1 and img.convert("RGB").getcolors(1 << 16) is not None
        colours = {c for _, c in img.convert("RGB").getcolors(1 << 16)}
        assert any(len({r, g, b}) > 1 for r, g, b in colours), "a colour frame"


@needs_ale
def test_the_recording_twin_plays_exactly_the_policys_game():
    """qfleet eval --gif on the preset: a colour copy at 210x160 stepped in lockstep with
    the grey one the policy sees; same rewards and episode ends, the same screen."""
    from PIL import Image

    from qfleet.common.atari import RecordedAtariVec

    env = RecordedAtariVec("ALE/Pong-v5", 2, {})
    rng = np.random.default_rng(0)
    try:
        obs, _ = env.reset(seed=5)
        scored = 0.0
        for _ in range(1500):
            obs, reward, terminated, truncated, _ = env.step(rng.integers(0, 6, 2))
            scored += np.abs(reward).sum()
        screens = env.render()
    finally:
        env.close()
    assert scored > 0 and len(screens) == 2 and screens[0].shape == (210, 160, 3)
    grey = np.asarray(Image.fromarray(screens[0]).convert("L").resize((84, 84), Image.BILINEAR), float)
    assert np.corrcoef(grey.ravel(), obs[0, -1].ravel().astype(float))[0, 1] > 0.99
