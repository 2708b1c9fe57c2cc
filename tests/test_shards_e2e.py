"""Replay shards and the weights relay in local mode: with replay.shards=2 and relay.enabled,
every actor's transitions arrive at its own shard (actor i at shard i % 2), a SIGKILLed
shard comes back from its own snapshot while training goes on, and the run ends on its
update budget; a resume with another shard count redistributes the replay contents over
the new shards; replay.external is one server."""
import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable

import pytest

from qfleet.common.config_loader import load_config
from qfleet.common.errors import ConfigError
from qfleet.deploy.plan import make_plan
from qfleet.deploy.replay_stats import merge
from tests.conftest import python_env
from tests.test_faults import HANG_GUARD_S, updates_so_far

UPDATES = 1_500  # the run's budget
KILL_AT = 300    # updates the run has reached when replay-1 is killed
ACTORS, SHARDS = 3, 2


def wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.2)


def run_to_end(cmd: list[str], act: Callable[[subprocess.Popen], None]) -> str:
    """Start `cmd`, do `act` to it while it runs, wait for it to end; its output, after
    asserting it ended well (killed, if the test failed on the way)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=python_env())
    try:
        act(proc)
        output, _ = proc.communicate(timeout=HANG_GUARD_S + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    return output


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    cmd = [sys.executable, "-m", "qfleet", "train", "--actors", str(ACTORS), "--max-seconds", str(HANG_GUARD_S),
           "--run-dir", str(root), "--name", "run", "--set", "run.stop_when_solved=false",
           "--set", f"run.max_updates={UPDATES}", "--set", f"replay.shards={SHARDS}", "--set", "relay.enabled=true",
           "--set", "replay.snapshot_every_s=1", "--set", "learner.checkpoint_every_s=1"]
    run, killed = root / "run", []

    def kill_shard(proc: subprocess.Popen) -> None:
        # Once shard 1 has a snapshot and training has gone on, kill it (no sleep: by the run's own count).
        wait_for(lambda: any((run / "replay" / "shard-1").glob("replay-*.npz")) and updates_so_far(run) >= KILL_AT,
                 proc, "a snapshot of shard 1 and training")
        killed.append(json.loads((run / "processes.json").read_text())["replay-1"])
        os.kill(killed[0], signal.SIGKILL)

    output = run_to_end(cmd, kill_shard)
    return json.loads((run / "summary.json").read_text()), output, killed[0], run


@pytest.mark.slow
def test_each_actor_at_its_shard_and_a_killed_shard_comes_back(sharded_run):
    summary, output, pid, run = sharded_run
    assert summary["reason"] == "update budget reached" and summary["updates"] >= UPDATES, output[-3000:]
    shards = summary["replay"]["shards"]
    assert set(shards) == {"0", "1"}
    for actor, sent in summary["sent_by_actor"].items():
        own, other = shards[str(int(actor) % SHARDS)], shards[str(1 - int(actor) % SHARDS)]
        assert f"stored_by_actor.{actor}" not in other, "an actor's transitions go to its own shard only"
        stored = own[f"stored_by_actor.{actor}"]
        if int(actor) % SHARDS == 0:
            assert stored == sent > 0, (actor, sent, own)  # the shard that was never killed has everything
        else:
            assert 0 < stored <= sent, (actor, sent, own)
        assert summary["replay"][f"stored_by_actor.{actor}"] == stored  # the sum over shards
    assert summary["replay"]["stored"] == sum(s["stored"] for s in shards.values())
    fault = next(f for f in summary["faults"] if f["name"] == "replay-1")
    assert fault["pid"] == pid and fault["exit_code"] == -9 and fault["recovered_after_s"] is not None
    assert "shard-1" in fault["restored_from"], fault
    assert shards["1"]["stored"] > fault["restored_stored"], "shard 1 stored again after its restart"
    assert "replay-1 is back after" in output
    assert summary["relays"]["0"]["forwarded"] > 0 and summary["relay_restarts"] == 0
    assert (run / "replay" / "shard-0").is_dir() and not list((run / "replay").glob("replay-*.npz"))


@pytest.mark.slow
def test_resume_with_another_shard_count_redistributes_the_replay(sharded_run):
    summary, _, _, run = sharded_run
    out = subprocess.run([sys.executable, "-m", "qfleet", "train", "--resume", str(run), "--actors", "4",
                          "--set", "replay.shards=3", "--set", f"run.max_updates={UPDATES + 300}"],
                         capture_output=True, text=True, env=python_env(), timeout=HANG_GUARD_S + 60)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    held = summary["replay"]["size"]
    assert f"replay snapshots of 2 shard(s) redistributed over 3: {held:,} transitions" in out.stdout, out.stdout
    restored = []
    for i in range(3):  # each new shard starts from its share of the old shards' contents
        # the last restore in the log (logs are appended; replay-1 also restored in the first run)
        line = (run / "logs" / f"replay-{i}.log").read_text().split("replay restored from")[-1].splitlines()[0]
        assert f"shard-{i}" in line, line
        restored.append(int(line.rsplit("(", 1)[1].split()[0]))
    assert sum(restored) == held and max(restored) - min(restored) <= 1, restored
    resumed = json.loads((run / "summary.json").read_text())
    assert set(resumed["replay"]["shards"]) == {"0", "1", "2"} and resumed["updates"] >= UPDATES + 300
    assert resumed["replay"]["shards"]["2"]["stored_by_actor.2"] > 0  # actor 2 now feeds shard 2
    assert len(list((run / "replay" / "resharded-2-to-3").rglob("replay-*.npz"))) >= 2  # the old files, kept


def test_external_replay_is_one_shard():
    cfg = load_config(None, ["replay.external=127.0.0.1:5555,5556", "replay.shards=2"])
    with pytest.raises(ConfigError, match="replay.external is one replay server"):
        make_plan(cfg)


def test_shard_stats_sum_as_one_table():
    one = {"size": 5, "stored": 10, "sampled": 40, "samples_per_insert": 4.0, "pid": 7, "obs_shape": "4"}
    assert merge({0: one}) == one  # one shard: its own figures, unchanged
    two = merge({0: one, 1: {**one, "stored": 30, "sampled": 30, "stored_by_actor.1": 30, "pid": 8}})
    assert two["stored"] == 40 and two["size"] == 10 and two["samples_per_insert"] == 70 / 40
    assert two["stored_by_actor.1"] == 30 and "pid" not in two and two["obs_shape"] == "4"
    assert two["shards"]["1"]["pid"] == 8
