"""The `qfleet` command line: help lists the subcommands, bad flags give clear errors."""
import subprocess
import sys

import pytest

from qfleet.deploy.cli import COMMANDS
from tests.conftest import python_env


def run(cmd, *args, timeout=60):
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=python_env(), timeout=timeout)


def test_help_lists_every_subcommand(qfleet_cmd):
    out = run(qfleet_cmd, "--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_subcommand_has_help(qfleet_cmd, name):
    out = run(qfleet_cmd, name, "--help")
    assert out.returncode == 0 and "usage: qfleet " + name in out.stdout


HEAVY = ("numba", "torch", "ray", "zmq", "matplotlib", "qfleet.replay_server.sum_tree")


# Runs the CLI as `python -m qfleet` does and prints every loaded module when it exits.
MODULES_AT_EXIT = ("import atexit, runpy, sys\n"
                   "atexit.register(lambda: print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr))\n"
                   "sys.argv = ['qfleet', *sys.argv[1:]]\n"
                   "runpy.run_module('qfleet', run_name='__main__', alter_sys=True)\n")


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["bench", "scaling", "--help"]])
def test_help_imports_nothing_heavy(args):
    out = run([sys.executable, "-c", MODULES_AT_EXIT], *args)
    assert out.returncode == 0 and "usage: qfleet" in out.stdout, out.stderr[-2000:]
    modules = set(out.stderr.split("MODULES", 1)[1].split())
    assert "qfleet.deploy.cli.train" in modules  # the parser was built: every subcommand module is loaded
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_unknown_flag_is_a_clear_error(qfleet_cmd):
    out = run(qfleet_cmd, "replay-server", "--no-such-flag")
    assert out.returncode == 2
    assert "qfleet replay-server: error: unrecognized arguments: --no-such-flag" in out.stderr
    out = run(qfleet_cmd, "bench", "solve", "--seedz", "3")
    assert out.returncode == 2 and "usage: qfleet bench solve" in out.stderr
    assert "qfleet bench solve: error: unrecognized arguments: --seedz 3" in out.stderr


def test_unknown_command_is_a_clear_error(qfleet_cmd):
    out = run(qfleet_cmd, "trian")
    assert out.returncode == 2 and "invalid choice: 'trian'" in out.stderr


def test_bad_config_value_is_one_line_not_a_traceback(qfleet_cmd):
    out = run(qfleet_cmd, "config", "--set", "learner.lr=-3")
    assert out.returncode == 2
    assert "learner.lr = -3.0 is not allowed; expected > 0 and <= 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_docs_show_every_field(qfleet_cmd):
    out = run(qfleet_cmd, "config", "--docs")
    assert out.returncode == 0
    assert "samples_per_insert" in out.stdout and "Target ratio of sampled to inserted" in out.stdout


@pytest.mark.parametrize("setup,args,message", [
    (None, ["plot", "{d}/missing"], "run directory {d}/missing does not exist"),
    ("empty_dir", ["plot", "{d}/run"], "{d}/run is not a run directory"),
    ("empty_files", ["plot", "{d}/run"], "{d}/run holds no episodes or metrics yet"),
    (None, ["eval", "{d}/missing"], "checkpoint {d}/missing does not exist"),
    ("garbage", ["eval", "{d}/run/checkpoint.npz"], "checkpoint {d}/run/checkpoint.npz is unreadable"),
    ("foreign", ["eval", "{d}/run"], "{d}/run/checkpoint.npz is not a qfleet checkpoint"),
    (None, ["eval", "{d}/run", "--epsilon", "1.5"], "--epsilon 1.5: a probability from 0 (greedy) to 1"),
])
def test_plot_and_eval_refuse_bad_inputs_in_one_line(qfleet_cmd, tmp_path, setup, args, message):
    import numpy as np

    run_dir = tmp_path / "run"
    if setup:
        run_dir.mkdir()
    if setup == "empty_files":
        (run_dir / "episodes.csv").write_text("elapsed_s,env_steps,actor,return,length\n")
        (run_dir / "metrics.jsonl").write_text("")
    elif setup == "garbage":
        (run_dir / "checkpoint.npz").write_bytes(b"not a zip file")
    elif setup == "foreign":
        np.savez(run_dir / "checkpoint.npz", x=np.zeros(3))
    out = run(qfleet_cmd, *[a.format(d=tmp_path) for a in args])
    assert out.returncode == 2, out.stderr
    assert message.format(d=tmp_path) in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
