"""A short soak: the whole system for 40 s; after the warm-up, no process's memory or open
file count grows by more than 5% (the 10-minute version is `qfleet bench soak`)."""
import json
import subprocess

import pytest

from tests.conftest import python_env

pytestmark = [pytest.mark.slow, pytest.mark.long]


def test_short_soak_stays_bounded(qfleet_cmd, tmp_path):
    out = subprocess.run(qfleet_cmd + ["bench", "soak", "--minutes", "0.67", "--warmup", "12", "--window", "5",
                                       "--json", str(tmp_path / "soak.json")],
                         capture_output=True, text=True, env=python_env(), timeout=180)
    result = json.loads((tmp_path / "soak.json").read_text())
    assert {"launcher", "replay", "learner", "evaluator", "actor-0", "actor-1"} <= set(result["checks"]), result["checks"]
    assert out.returncode == 0 and result["ok"], out.stdout[-3000:]
    assert all(len(points) >= 25 for points in result["series"].values() if points[0]["t"] < 5)
