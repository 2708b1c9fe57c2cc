"""The core install runs the default job: with torch, Ray, matplotlib and TensorBoard made
unimportable (a sitecustomize on PYTHONPATH that refuses them, in every process of the run),
`qfleet train` still trains CartPole on the numpy learner, and what needs an extra names
the pip command that installs it."""
import json
import subprocess
import textwrap

import pytest

from tests.conftest import python_env

pytestmark = pytest.mark.slow
BLOCKED = ("torch", "ray", "matplotlib", "tensorboard")


def env_without_extras(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import importlib.abc, sys

        class RefuseExtras(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (refused by the test)", name=name)
                return None

        sys.meta_path.insert(0, RefuseExtras())
    """))
    env = python_env()
    env["PYTHONPATH"] = str(site)  # only the refusing hook: qfleet itself comes from the installed package
    return env


def test_default_run_needs_no_extra(qfleet_cmd, tmp_path):
    env = env_without_extras(tmp_path)
    check = subprocess.run([qfleet_cmd[0], "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "refused by the test" in check.stderr

    out = subprocess.run(qfleet_cmd + ["train", "--set", "run.max_updates=300", "--set", "run.stop_when_solved=false",
                                       "--run-dir", str(tmp_path), "--name", "core"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "core"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["updates"] >= 300 and summary["reason"] == "update budget reached", summary
    assert "no plot:" in out.stdout and "pip install 'qfleet[plots]'" in out.stdout
    assert not list(run.glob("events.out.tfevents.*"))
    assert (run / "metrics.jsonl").read_text().count("learner/updates") > 0


def test_missing_extra_is_named_with_its_pip_command(qfleet_cmd, tmp_path):
    env = env_without_extras(tmp_path)
    for argv, extra in ((["train", "--obs", "pixels"], "torch"), (["train", "--backend", "ray"], "ray"),
                        (["plot", str(tmp_path)], "plots")):
        out = subprocess.run(qfleet_cmd + argv + ["--run-dir", str(tmp_path)] * (argv[0] == "train"),
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (argv, out.stdout[-2000:], out.stderr[-2000:])
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pip install 'qfleet[{extra}]'" in lines[0], (argv, out.stderr)
