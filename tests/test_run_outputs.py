"""What a user sees after real runs: documented metric names in metrics.jsonl and
TensorBoard, plot.png and `qfleet plot`, `qfleet eval` with a GIF, `train --gif`, a baseline
run directory, and short runs on Acrobot-v1 and on a user's own environment."""
import json
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from qfleet.common.metrics import EPISODE_RECORDS_PER_CALL, METRICS, read_jsonl
from qfleet.learner.checkpoint import load_policy
from qfleet.learner.evaluation import evaluate, greedy_policy
from tests.conftest import python_env
from tests.test_metrics import tensorboard_scalars
from tests.test_recording import gif_frames

pytestmark = pytest.mark.slow

# The names the metrics of a DQN run must include (see the README's table).
DQN_NAMES = {"train/episode_return", "train/return_mean100", "eval/return_mean", "eval/return_std", "eval/return_min",
             "eval/return_max", "learner/loss", "learner/updates_per_s", "learner/data_wait_fraction", "replay/size",
             "replay/samples_per_insert", "actors/env_steps_per_s", "actors/policy_lag_versions",
             "actors/policy_lag_ms_p50"}


CLI = [sys.executable, "-m", "qfleet"]  # what the qfleet_cmd fixture gives, for module-scoped fixtures
# Training runs end when solved or on an update budget; --max-seconds is only a hang guard.
HANG_GUARD_S = 600


def qfleet(qfleet_cmd, *args, timeout=HANG_GUARD_S + 60) -> subprocess.CompletedProcess:
    out = subprocess.run(qfleet_cmd + [str(a) for a in args], capture_output=True, text=True, env=python_env(),
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def dqn_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    # stops when solved (3,000 updates or so with seed 0), else at the update cap
    out = qfleet(CLI, "train", "--seed", 0, "--max-seconds", HANG_GUARD_S, "--set", "run.max_updates=8000",
                 "--run-dir", root, "--name", "dqn", "--gif", "--gif-episodes", 2, "--gif-width", 160)
    return root / "dqn", out.stdout


@pytest.fixture(scope="module")
def reinforce_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = qfleet(CLI, "baseline", "reinforce", "--seed", 0, "--max-episodes", 240, "--max-seconds", HANG_GUARD_S,
                 "--run-dir", root, "--name", "reinforce", "--set", "baseline.eval_every_episodes=80", "--set",
                 "baseline.stop_when_solved=false")
    return root / "reinforce", out.stdout


def numeric_series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list] = {}
    for r in records:
        for k, v in r.items():
            if k not in ("step", "time/elapsed_s") and isinstance(v, (int, float)):
                series.setdefault(k, []).append((r["step"], float(v)))
    return series


def test_train_writes_the_documented_metrics_to_json_lines_and_tensorboard(dqn_run):
    run, _ = dqn_run
    records = read_jsonl(run / "metrics.jsonl")
    names = {k for r in records for k in r}
    assert names <= set(METRICS), names - set(METRICS)
    series = numeric_series(records)
    assert DQN_NAMES <= set(series), DQN_NAMES - set(series)  # each with at least one number

    episodes = (run / "episodes.csv").read_text().splitlines()
    summary = json.loads((run / "summary.json").read_text())
    assert len(episodes) - 1 == summary["episodes"] > 0  # the CSV has every episode
    # metrics.jsonl: a record per episode, thinned to an evenly spaced subset when more
    # than EPISODE_RECORDS_PER_CALL finish between two status ticks; each is a CSV row
    csv_rows = {(int(r.split(",")[1]), float(r.split(",")[3])) for r in episodes[1:]}
    records = series["train/episode_return"]
    assert min(summary["episodes"], EPISODE_RECORDS_PER_CALL) <= len(records) <= summary["episodes"]
    assert {(s, v) for s, v in records} <= csv_rows
    steps = [s for s, _ in records]
    assert steps == sorted(steps) and steps[-1] <= summary["env_steps"]

    tb = tensorboard_scalars(run)
    assert set(tb) == set(series)
    for name, points in series.items():
        assert [s for s, _ in tb[name]] == [s for s, _ in points], name
        np.testing.assert_allclose([v for _, v in tb[name]], [v for _, v in points], rtol=1e-6, err_msg=name)


def test_train_draws_plot_png_and_records_the_agent(dqn_run):
    run, stdout = dqn_run
    with Image.open(run / "plot.png") as im:
        assert im.format == "PNG" and im.size == (1200, 900)
    frames, _, size = gif_frames(run / "agent.gif")
    assert frames > 2 and size[0] == 160
    assert f"gif: {run / 'agent.gif'}: 2 episode(s)" in stdout


def test_plot_compares_runs_in_a_png_of_the_requested_size(qfleet_cmd, dqn_run, reinforce_run, tmp_path):
    out = qfleet(qfleet_cmd, "plot", dqn_run[0], reinforce_run[0], "--out", tmp_path / "cmp.png", "--width", 900,
                 "--height", 700, "--x", "episodes")
    with Image.open(tmp_path / "cmp.png") as im:
        assert im.format == "PNG" and im.size == (900, 700)
    assert re.search(r"^dqn: [\d,]+ training episodes, \d+ evaluations", out.stdout, re.M)
    assert re.search(r"^reinforce: 240 training episodes, 3 evaluations", out.stdout, re.M)


def test_eval_prints_greedy_statistics_and_records_every_frame(qfleet_cmd, dqn_run, tmp_path):
    run, _ = dqn_run
    out = qfleet(qfleet_cmd, "eval", run / "checkpoint.npz", "--episodes", 20, "--seed", 5, "--gif", tmp_path / "g.gif",
                 "--gif-episodes", 2, "--gif-max-frames", 5000, "--gif-width", 120)
    saved = load_policy(run)
    policy = greedy_policy(saved.spec, saved.params)
    expected = evaluate(policy, "CartPole-v1", 20, 5)
    assert (f"greedy return over 20 episode(s): mean {expected.mean:.2f}, std {expected.std:.2f}, "
            f"min {expected.min:g}, max {expected.max:g}") in out.stdout

    lengths = []  # the GIF's episodes, replayed independently: seeds 5 and 6
    for seed in (5, 6):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=seed)
        n, done = 0, False
        while not done:
            obs, _, terminated, truncated, _ = env.step(int(policy(obs[None]).argmax()))
            n, done = n + 1, terminated or truncated
        lengths.append(n)
    frames = sum(n + 1 for n in lengths)
    assert f"{frames} frames of 120x80, every frame, 20 ms each" in out.stdout
    shown, total_ms, size = gif_frames(tmp_path / "g.gif")
    assert size == (120, 80) and shown <= frames and total_ms == frames * 20


def test_eval_plays_the_last_weights_epsilon_greedy_on_request(qfleet_cmd, dqn_run):
    run, _ = dqn_run
    out = qfleet(qfleet_cmd, "eval", run, "--episodes", 20, "--seed", 5, "--weights", "last", "--epsilon", 0.3)
    saved = load_policy(run, "last")
    assert f"(the online network after {int(saved.meta['updates']):,} updates)" in out.stdout
    expected = evaluate(greedy_policy(saved.spec, saved.params), "CartPole-v1", 20, 5, epsilon=0.3)
    assert (f"epsilon-greedy (epsilon 0.3) return over 20 episode(s): mean {expected.mean:.2f}, "
            f"std {expected.std:.2f}") in out.stdout
    best = load_policy(run)  # "best" and "last" are different arrays of the same network
    assert best.params.keys() == saved.params.keys()
    assert any(not np.array_equal(best.params[k], saved.params[k]) for k in best.params)


def test_baseline_writes_the_same_run_directory(reinforce_run):
    run, stdout = reinforce_run
    records = read_jsonl(run / "metrics.jsonl")
    assert {k for r in records for k in r} <= set(METRICS)
    series = numeric_series(records)
    assert {"train/episode_return", "train/return_mean100", "eval/return_mean", "learner/loss",
            "learner/updates_per_s", "actors/env_steps_per_s"} <= set(series)
    assert len(series["train/episode_return"]) == 240 == len((run / "episodes.csv").read_text().splitlines()) - 1
    assert set(tensorboard_scalars(run)) == set(series)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algorithm"] == "reinforce" and summary["episodes"] == 240 and summary["evaluations"] == 3
    assert "reinforce:" in (run / "config.yaml").read_text() and (run / "plot.png").is_file()


def test_short_acrobot_run_works_end_to_end(qfleet_cmd, tmp_path):
    out = qfleet(qfleet_cmd, "train", "--env", "Acrobot-v1", "--max-seconds", HANG_GUARD_S,
                 "--set", "run.max_updates=500", "--run-dir", tmp_path, "--name", "a")
    assert "solved at greedy mean >= -100.0" in out.stdout
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["env"] == "Acrobot-v1" and summary["env_steps"] > 0 and summary["updates"] > 0
    assert (tmp_path / "a" / "checkpoint.npz").is_file(), \
        out.stdout[-2000:] + (tmp_path / "a" / "logs" / "learner.log").read_text()[-2000:]
    saved = load_policy(tmp_path / "a")
    assert saved.spec.obs_shape == (6,) and saved.spec.num_actions == 3 and saved.env == "Acrobot-v1"
    assert (tmp_path / "a" / "plot.png").is_file()


def test_user_env_by_import_path_trains_end_to_end(qfleet_cmd, tmp_path):
    env = "tests.user_envs:ReachTarget"  # (2, 3) observations, threshold 0.5 from the class
    out = qfleet(qfleet_cmd, "train", "--env", env, "--max-seconds", HANG_GUARD_S, "--set", "run.max_updates=500",
                 "--run-dir", tmp_path, "--name", "u", "--set", "actor.envs_per_actor=8")
    assert "solved at greedy mean >= 0.5" in out.stdout
    saved = load_policy(tmp_path / "u")
    assert saved.spec.obs_shape == (2, 3) and saved.env == env
    out = qfleet(qfleet_cmd, "eval", tmp_path / "u", "--episodes", 10, "--gif", tmp_path / "u.gif")
    assert "greedy return over 10 episode(s)" in out.stdout and gif_frames(tmp_path / "u.gif")[2] == (90, 20)


def test_budget_spent_before_the_first_update_stops_cleanly(qfleet_cmd, tmp_path):
    # The one test of the wall-clock budget itself: whatever the machine's speed, 1 s ends
    # the run (before or after its first update), cleanly.
    out = qfleet(qfleet_cmd, "train", "--max-seconds", 1, "--run-dir", tmp_path, "--name", "r", "--no-plot")
    assert "stopped (time budget reached)" in out.stdout and "error" not in out.stdout + out.stderr
    for log in (tmp_path / "r" / "logs").glob("*.log"):
        assert " ERROR " not in log.read_text(), log.read_text()[-2000:]
