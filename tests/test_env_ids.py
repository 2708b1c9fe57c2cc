"""Environment ids and keyword arguments: ALE/ and MinAtar/ ids register their package's
games (or name the extra to install, in one line), and run.env_kwargs reaches gym.make in
every process of a run, its checkpoint and `qfleet eval`."""
import json
import subprocess
import sys

import numpy as np
import pytest

from qfleet.common.config_loader import load_config
from qfleet.common.envs import describe_env, describe_run_env, make_vec_env
from qfleet.common.errors import ConfigError, EnvironmentSpecError, MissingExtraError
from qfleet.common.extras import available
from qfleet.learner.checkpoint import load_checkpoint, load_policy
from qfleet.learner.evaluation import evaluate
from tests.conftest import python_env

CORRIDOR = "tests.user_envs:Corridor"


def test_env_kwargs_reach_gym_make_and_every_vector_copy():
    cfg = load_config(None, [f"run.env={CORRIDOR}", "run.env_kwargs={length: 4}"])
    spec = describe_run_env(cfg)
    assert spec.obs_shape == (4,) and spec.kwargs == {"length": 4}
    envs = make_vec_env(spec, 3)  # an EnvSpec brings its keyword arguments along
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (3, 4)
    finally:
        envs.close()
    assert describe_env(CORRIDOR).obs_shape == (6,)  # the class's own default without them
    result = evaluate(lambda o: np.tile([0.0, 1.0], (len(o), 1)), spec, episodes=2, seed=0)
    assert result.lengths.tolist() == [3, 3] and result.mean == pytest.approx(1.0 - 0.2)


def test_bad_env_kwargs_are_refused_naming_them():
    with pytest.raises(ConfigError, match="run.env_kwargs = 7 must be a mapping"):
        load_config(None, ["run.env_kwargs=7"])
    with pytest.raises(ConfigError, match="run.env_kwargs.nested"):
        load_config(None, ["run.env_kwargs={nested: {a: 1}}"])
    with pytest.raises(EnvironmentSpecError, match=r"with run.env_kwargs \{'widht': 3\}"):
        describe_env(CORRIDOR, env_kwargs={"widht": 3})


def test_a_missing_game_extra_names_its_pip_command(monkeypatch):
    for module, env, extra in (("ale_py", "ALE/Pong-v5", "atari"), ("minatar", "MinAtar/Breakout-v1", "minatar")):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
        import gymnasium as gym
        for key in [k for k in gym.registry if k.startswith(env.split("/")[0] + "/")]:
            monkeypatch.delitem(gym.registry, key)
        with pytest.raises(MissingExtraError, match=rf"pip install 'qfleet\[{extra}\]'"):
            describe_env(env)


def test_the_cli_says_the_missing_extra_in_one_line(qfleet_cmd, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['ale_py'] = None\n")
    env = {**python_env(), "PYTHONPATH": str(site)}
    out = subprocess.run(qfleet_cmd + ["train", "--env", "ALE/Pong-v5", "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        "qfleet train: error: --env ALE/Pong-v5 (Atari games (ALE/...)) needs ale_py, which is not installed: "
        "pip install 'qfleet[atari]'"]


@pytest.mark.skipif(not available("ale_py"), reason="the atari extra is not installed")
def test_ale_ids_resolve_with_their_kwargs():
    """With run.preset none, gymnasium's own ALE env (the preset is tests/test_atari.py)."""
    spec = describe_env("ALE/Pong-v5", env_kwargs={"repeat_action_probability": 0.0}, preset="none")
    assert spec.obs_shape == (210, 160, 3) and spec.obs_dtype == np.uint8 and spec.num_actions == 6
    assert spec.kwargs == {"repeat_action_probability": 0.0}


@pytest.mark.skipif(not available("minatar"), reason="the minatar extra is not installed")
def test_minatar_ids_resolve_as_bool_grids():
    spec = describe_env("MinAtar/Breakout-v1")
    assert spec.obs_shape == (10, 10, 4) and spec.obs_dtype == np.bool_ and spec.num_actions == 3


@pytest.mark.slow
def test_a_run_with_env_kwargs_trains_and_its_checkpoint_plays_the_same_env(qfleet_cmd, tmp_path):
    """The actors, the replay server, the learner's evaluator and qfleet eval all make the
    corridor of length 4 (one of another length would be refused by the replay server for
    its observation shape). The run ends on its update budget (600 s is only a hang guard)."""
    out = subprocess.run(qfleet_cmd + ["train", "--env", CORRIDOR, "--set", "run.env_kwargs={length: 4}",
                                       "--actors", "2", "--max-seconds", "600", "--set", "run.max_updates=300",
                                       "--set", "run.stop_when_solved=false", "--set", "learner.eval_every_s=1",
                                       "--run-dir", str(tmp_path), "--name", "run"],
                         capture_output=True, text=True, env=python_env(), timeout=660)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reason"] == "update budget reached" and summary["replay"]["rejected"] == 0, summary
    assert summary["replay"]["obs_shape"] == "4"
    assert "length: 4" in (tmp_path / "run" / "config.yaml").read_text()
    assert load_policy(tmp_path / "run").env_kwargs == {"length": 4}
    played = subprocess.run(qfleet_cmd + ["eval", str(tmp_path / "run"), "--episodes", "2"], capture_output=True,
                            text=True, env=python_env(), timeout=120)
    assert played.returncode == 0 and "greedy return over 2 episode(s)" in played.stdout, played.stdout + played.stderr


@pytest.mark.slow
@pytest.mark.skipif(not available("minatar"), reason="the minatar extra is not installed")
def test_a_minatar_run_trains_evaluates_and_its_checkpoint_plays(qfleet_cmd, tmp_path):
    """MinAtar itself (tests/test_network_choice.py has the same path on a stand-in bool grid
    where minatar is not installed): the small CNN trains, the run ends on its first finished
    evaluation, and qfleet eval plays the checkpoint and records a GIF of the game's frames."""
    out = subprocess.run(qfleet_cmd + ["train", "--env", "MinAtar/Breakout-v1", "--actors", "1", "--max-seconds", "600",
                                       "--set", "run.max_evaluations=1", "--set", "learner.eval_every_s=1",
                                       "--set", "learner.eval_episodes=4", "--set", "replay.min_size_to_sample=500",
                                       "--run-dir", str(tmp_path), "--name", "run"],
                         capture_output=True, text=True, env=python_env(), timeout=660)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Every component ends by itself within the launcher's grace, the learner after its final checkpoint.
    assert "did not stop" not in out.stdout + out.stderr, out.stdout[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reason"] == "evaluation budget reached" and summary["updates"] > 0, summary
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert meta["updates"] == summary["updates"], "the checkpoint is the learner's last, written at the stop"
    saved = load_policy(tmp_path / "run")
    assert (saved.spec.kind, saved.spec.torso) == ("cnn", "minatar")
    gif = tmp_path / "b.gif"
    played = subprocess.run(qfleet_cmd + ["eval", str(tmp_path / "run"), "--episodes", "2", "--gif", str(gif),
                                          "--gif-episodes", "1"], capture_output=True, text=True, env=python_env(),
                            timeout=300)
    assert played.returncode == 0 and "greedy return over 2 episode(s)" in played.stdout, played.stdout + played.stderr
    assert "of 320x320" in played.stdout


@pytest.mark.slow
def test_a_baseline_plays_the_environment_its_env_kwargs_make(qfleet_cmd, tmp_path):
    """baseline.env_kwargs reaches the baseline's environment: on the corridor of length 4
    the best greedy return is 3 steps' worth (0.8); the default length 6 would give 0.6.
    The run ends on its episode budget (600 s is only a hang guard)."""
    out = subprocess.run(qfleet_cmd + ["baseline", "random-search", "--env", CORRIDOR,
                                       "--set", "baseline.env_kwargs={length: 4}", "--set", "baseline.max_episodes=400",
                                       "--max-seconds", "600", "--run-dir", str(tmp_path), "--no-plot"],
                         capture_output=True, text=True, env=python_env(), timeout=660)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [summary] = [json.loads(p.read_text()) for p in tmp_path.glob("*/summary.json")]
    assert summary["best_eval"]["eval_max"] == pytest.approx(0.8), summary["best_eval"]
