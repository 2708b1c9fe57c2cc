"""`qfleet train --resume RUN_DIR`: the learner's counters, weights and optimizer state, the
replay contents and the run's counters continue, with a different number of actors."""
import json
import subprocess

import numpy as np
import pytest

from qfleet.learner.checkpoint import load_checkpoint
from tests.conftest import python_env

pytestmark = pytest.mark.slow
HANG_GUARD_S = 600  # the runs end on env-step budgets; this only stops a hung one
# Env-step budgets (all actors together; a resumed run counts on from the checkpoint). The
# launcher stops the actors first and hands their final counts to the learner's last
# checkpoint, so the checkpoint's counters equal the summary's. The rate limiter ties
# updates to inserts (4 samples per insert): the second run's 60,000 steps make hundreds
# of updates, several weights versions, on any machine.
FIRST_STEPS, SECOND_STEPS = 40_000, 100_000


def test_resume_continues_everything_with_more_actors(qfleet_cmd, tmp_path):
    base = qfleet_cmd + ["train", "--set", "run.stop_when_solved=false", "--max-seconds", str(HANG_GUARD_S)]
    first = subprocess.run(base + ["--actors", "2", "--run-dir", str(tmp_path), "--name", "run",
                                   "--set", f"run.max_env_steps={FIRST_STEPS}"],
                           capture_output=True, text=True, env=python_env(), timeout=HANG_GUARD_S + 60)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "stopped (env-step budget reached)" in first.stdout, first.stdout[-3000:]
    run = tmp_path / "run"
    s1 = json.loads((run / "summary.json").read_text())
    arrays1, meta1 = load_checkpoint(run)
    assert meta1["run_state"]["env_steps"] == s1["env_steps"]
    assert set(meta1["run_state"]["schedules"]) == {"0", "1"}

    assert meta1["updates"] > 0 and meta1["optimizer"] == "adam"
    metrics1 = (run / "metrics.jsonl").read_text()
    # another optimizer cannot take over the checkpoint's state: refused before anything starts
    checkpoint = (run / "checkpoint.npz").read_bytes()
    refused = subprocess.run(base + ["--resume", str(run), "--set", "learner.optimizer=rmsprop"],
                             capture_output=True, text=True, env=python_env(), timeout=HANG_GUARD_S)
    assert refused.returncode != 0
    assert "optimizer: checkpoint 'adam', this run 'rmsprop' (resume with --set learner.optimizer=adam)" \
        in refused.stderr, refused.stderr
    assert (run / "checkpoint.npz").read_bytes() == checkpoint
    assert (run / "metrics.jsonl").read_text() == metrics1
    second = subprocess.run(base + ["--resume", str(run), "--actors", "3",
                                    "--set", f"run.max_env_steps={SECOND_STEPS}"],
                            capture_output=True, text=True, env=python_env(), timeout=HANG_GUARD_S + 60)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "stopped (env-step budget reached)" in second.stdout, second.stdout[-3000:]
    assert f"resuming CartPole-v1 at {s1['run_elapsed_s']:.0f} s, {s1['env_steps']:,} env steps with 3 actor(s)" \
        in second.stdout
    s2 = json.loads((run / "summary.json").read_text())
    arrays2, meta2 = load_checkpoint(run)

    # learner: updates, optimizer steps and weights versions continue from the checkpoint
    assert meta2["updates"] > meta1["updates"] and int(arrays2["adam_step"]) > int(arrays1["adam_step"])
    assert meta2["version"] > meta1["version"]
    assert not np.array_equal(arrays2["online/head.weight"], arrays1["online/head.weight"])
    # run counters continue; three actors' exploration state is kept
    assert s2["env_steps"] > s1["env_steps"] and meta2["run_state"]["env_steps"] == s2["env_steps"]
    assert set(meta2["run_state"]["schedules"]) == {"0", "1", "2"}
    # replay: restored from the snapshot written at the end of the first run, then grew
    log = (run / "logs" / "replay.log").read_text()
    assert f"({s1['replay']['size']} transitions)" in log.split("replay restored from")[1].splitlines()[0]
    assert s2["replay"]["inserted"] > s1["replay"]["inserted"]
    assert s2["replay"]["stored_by_actor.2"] > 0
    # metrics are appended, not replaced, and the second session's time stamps go on from
    # the first's seconds (its session clock, elapsed_s, starts again from zero)
    metrics2 = (run / "metrics.jsonl").read_text()
    assert metrics2.startswith(metrics1) and len(metrics2) > len(metrics1)
    assert s2["run_elapsed_s"] == pytest.approx(s1["run_elapsed_s"] + s2["elapsed_s"], abs=0.5)
    assert meta2["run_state"]["elapsed_s"] <= s2["run_elapsed_s"]
    ticks = [json.loads(line)["time/elapsed_s"] for line in metrics2.splitlines() if '"actors/env_steps"' in line]
    assert ticks == sorted(ticks) and ticks[-1] > s1["run_elapsed_s"] > ticks[0]
    # evaluations: the summary counts both sessions' (one metrics record each), and the best
    # of the first session is not forgotten by the second
    evals = [json.loads(line) for line in metrics2.splitlines() if '"eval/return_mean"' in line]
    assert s2["evaluations"] == len(evals) >= meta2["run_state"]["evaluations"] > 0
    assert s2["best_eval"]["eval_mean"] == max(e["eval/return_mean"] for e in evals)
