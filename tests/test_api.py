"""The Python API: `qfleet.load_config`, `qfleet.train` (in this process, as a notebook
would call it) and `qfleet.evaluate`, budgeted by updates."""
import json
import signal
import subprocess
import sys

import pytest

import qfleet

pytestmark = pytest.mark.slow


def test_import_is_light():
    out = subprocess.run([sys.executable, "-c", "import qfleet, sys; print(sorted(m for m in ('torch', 'numba', "
                          "'zmq', 'ray', 'matplotlib', 'gymnasium') if m in sys.modules))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_config_takes_files_dicts_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  lr: 0.001\n")
    assert qfleet.load_config(path).learner.lr == 0.001
    cfg = qfleet.load_config({"learner": {"lr": 0.002}, "run": {"actors": 3}}, ["run.actors=4"])
    assert (cfg.learner.lr, cfg.run.actors) == (0.002, 4)
    assert qfleet.load_config(cfg, ["learner.lr=0.003"]).learner.lr == 0.003
    with pytest.raises(qfleet.QfleetError, match="unknown field 'learner.lrr'"):
        qfleet.load_config({"learner": {"lrr": 1}})


def test_train_resume_and_evaluate(tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    lines = []
    config = {"run": {"max_updates": 150, "stop_when_solved": False, "run_dir": str(tmp_path), "name": "api",
                      "max_seconds": 600}}
    summary = qfleet.train(config, plot=False, say=lines.append)
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's Ctrl-C handling is back
    assert summary["reason"] == "update budget reached" and summary["updates"] >= 150, summary
    run_dir = summary["run_dir"]
    assert json.loads((tmp_path / "api" / "summary.json").read_text())["updates"] == summary["updates"]
    assert any(line.startswith("[") and "updates" in line for line in lines)  # status lines went to `say`

    result = qfleet.evaluate(run_dir, episodes=5, seed=3)
    assert len(result.returns) == 5 and result.min >= 1

    resumed = qfleet.train(resume=run_dir, overrides=["run.max_updates=300"], plot=False, say=lines.append)
    assert resumed["updates"] >= 300 and resumed["env_steps"] > summary["env_steps"], resumed
    with pytest.raises(qfleet.QfleetError, match="continues a run with its own config.yaml"):
        qfleet.train({"run": {}}, resume=run_dir)
