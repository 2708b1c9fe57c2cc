"""The `qfleet` command line: help lists the subcommands, bad flags give clear errors."""
import subprocess

import pytest

from deploy.cli import COMMANDS
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


def test_unknown_flag_is_a_clear_error(qfleet_cmd):
    out = run(qfleet_cmd, "replay-server", "--no-such-flag")
    assert out.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in out.stderr


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
