"""End to end on CPU: `qfleet train --obs pixels` with a budget of one greedy evaluation
runs the whole system on stacked frames, stores them as uint8, writes the run's standard
files, and leaves a CNN checkpoint whose policy plays on pixels."""
import csv
import json
import subprocess

import numpy as np
import pytest

from qfleet.common.config import PixelConfig
from qfleet.common.netspec import NetSpec
from qfleet.learner.checkpoint import load_checkpoint
from qfleet.learner.evaluation import evaluate, greedy_policy
from qfleet.replay_server.frames import stored_bytes
from tests.conftest import python_env

pytestmark = pytest.mark.slow
HANG_GUARD_S = 600  # far above what one evaluation needs; the run ends on its evaluation budget


def test_pixel_training_runs_end_to_end_on_cpu(qfleet_cmd, tmp_path):
    # The run ends when its first greedy evaluation has finished. The learner submits an
    # evaluation only inside its update loop, after an update (learner/learner.py), so a
    # finished evaluation means at least one update happened, however slow the machine.
    cmd = qfleet_cmd + ["train", "--obs", "pixels", "--actors", "1", "--envs-per-actor", "8", "--seed", "0",
                        "--max-seconds", str(HANG_GUARD_S), "--set", "run.max_evaluations=1",
                        "--run-dir", str(tmp_path), "--name", "run",
                        "--set", "learner.batch_size=32", "--set", "replay.capacity=4000",
                        "--set", "replay.min_size_to_sample=300", "--set", "replay.max_insert_batch=512",
                        "--set", "learner.prefetch=2", "--set", "learner.batches_per_request=1",
                        "--set", "learner.eval_every_s=3", "--set", "learner.eval_episodes=4",
                        "--set", "learner.cnn_hidden=[64]", "--set", "learner.publish_every=5"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=python_env(), timeout=HANG_GUARD_S + 60)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "stopped (evaluation budget reached)" in out.stdout, out.stdout[-3000:]
    # Stored a frame at a time (replay.frames): 4,000 transitions in a ring of 8,256 frames.
    per_transition = stored_bytes(4000, (4, 84, 84)) / 4000
    assert f"replay stores {-(-stored_bytes(4000, (4, 84, 84)) // 4000):,} bytes per transition" in out.stdout
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    replay = summary["replay"]
    assert replay["obs_dtype"] == "uint8" and replay["bytes_per_transition"] == pytest.approx(per_transition)
    assert replay["rejected"] == 0 and replay["stored"] >= 300  # min_size_to_sample: the learner sampled
    assert replay["frames_missing"] == 0, "every frame a transition needs arrived"
    assert summary["reason"] == "evaluation budget reached", summary["reason"]
    assert summary["updates"] > 0 and summary["evaluations"] >= 1, summary

    assert "obs: pixels" in (run / "config.yaml").read_text()
    ticks = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(t.get("learner/updates") for t in ticks)
    assert any("eval/return_mean" in t and t["eval/return_mean"] is not None for t in ticks)
    with open(run / "episodes.csv") as f:
        episodes = list(csv.DictReader(f))
    assert episodes and all(float(e["return"]) >= 1 for e in episodes)

    arrays, meta = load_checkpoint(run / "checkpoint.npz")
    assert meta["net_spec"]["kind"] == "cnn" and meta["net_spec"]["obs_shape"] == [4, 84, 84]
    assert arrays["policy/conv.0.weight"].shape == (32, 4, 8, 8)
    spec = NetSpec("cnn", (4, 84, 84), 2, tuple(meta["net_spec"]["hidden"]), meta["net_spec"]["dueling"])
    policy = greedy_policy(spec, {k[len("policy/"):]: v for k, v in arrays.items() if k.startswith("policy/")})
    result = evaluate(policy, "CartPole-v1", episodes=3, seed=7, pixels=PixelConfig())
    assert len(result.returns) == 3 and np.all(result.returns >= 1)

    # `qfleet eval` knows from the checkpoint that this policy plays on stacked frames.
    gif = tmp_path / "agent.gif"
    out = subprocess.run(qfleet_cmd + ["eval", str(run), "--episodes", "2", "--gif", str(gif), "--gif-episodes", "1",
                                       "--gif-max-frames", "20"], capture_output=True, text=True, env=python_env(),
                         timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "greedy return over 2 episode(s)" in out.stdout and gif.stat().st_size > 0
