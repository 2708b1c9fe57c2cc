"""One training run, as `qfleet train` and `qfleet.train()` both start it: plan and check
the config, create (or reopen, to resume) the run directory, run the system on the
configured backend until a stop reason, and write the summary."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from qfleet.common.config import QfleetConfig
from qfleet.common.config_loader import save_config
from qfleet.common.errors import ConfigError
from qfleet.deploy.components import shard_dir
from qfleet.deploy.plan import RunPlan, make_plan
from qfleet.deploy.processes import StopFlag
from qfleet.deploy.run_dir import make_run_dir, write_summary


class RunResult(NamedTuple):
    code: int        # the exit code `qfleet train` returns: 0, 1 (failed) or 130 (interrupted)
    reason: str      # why it stopped ("solved", "update budget reached", "interrupted", ...)
    summary: dict    # what summary.json holds
    run_dir: Path


def run_training(cfg: QfleetConfig, *, resume: Optional[Path] = None, say: Callable[[str], None] = print,
                 stop: Optional[StopFlag] = None) -> RunResult:
    """Train with `cfg` (as the user set it; sizes are derived by make_plan); `resume` is the
    directory of an earlier run to continue. ConfigError/CheckpointError before anything starts."""
    stop = stop or StopFlag()
    plan = make_plan(cfg)
    resume_state = None
    if resume is not None and cfg.run.backend == "ray":
        raise ConfigError("--resume works in local mode; on the Ray backend a run starts afresh")
    if resume is not None:
        run_dir = Path(resume)
        resume_state = check_resume(run_dir, cfg, plan, say)
    else:
        run_dir = make_run_dir(cfg.run.run_dir, cfg.run.name, cfg.run.env)
    save_config(cfg, run_dir / "config.yaml")  # what the user set; the plan is derived again on --resume
    say_plan(cfg, plan, run_dir, resumed=resume_state, say=say)
    if cfg.run.backend == "ray":
        from qfleet.deploy.ray.backend import RayLauncher

        launcher = RayLauncher(cfg, plan, run_dir, stop, say=say)
    else:
        from qfleet.deploy.local.launcher import LocalLauncher

        launcher = LocalLauncher(cfg, plan, run_dir, stop, say=say, resume_state=resume_state)
    try:
        code, reason = launcher.run()
        summary = launcher.summary(reason)
    finally:
        launcher.close()
    write_summary(run_dir, summary)
    return RunResult(code, reason, summary, run_dir)


def check_resume(run_dir: Path, cfg: QfleetConfig, plan: RunPlan,
                 say: Callable[[str], None] = print) -> dict:
    """The checkpoint's run state, after checking the checkpoint and the newest replay
    snapshot fit this run (CheckpointError naming what differs)."""
    from qfleet.learner.checkpoint import load_checkpoint
    from qfleet.learner.learner import check_compatible

    _, meta = load_checkpoint(run_dir / "checkpoint.npz")
    check_compatible(meta, plan.net, plan.env.env_id, cfg.learner.optimizer)
    check_replay_snapshots(run_dir, cfg, plan, say)
    state = dict(meta.get("run_state") or {"env_steps": 0, "episodes": 0})
    # A learner that stopped on its update budget wrote its last checkpoint before the final
    # counts reached it (up to a status tick old); the previous session's summary has them.
    try:
        ended = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        ended = {}
    for key, ended_key in (("env_steps", "env_steps"), ("episodes", "episodes"), ("elapsed_s", "run_elapsed_s"),
                           ("evaluations", "evaluations")):
        if isinstance(ended.get(ended_key), (int, float)) and not isinstance(ended.get(ended_key), bool):
            state[key] = max(state.get(key, 0), ended[ended_key])
    state["best_eval"] = best_of(state.get("best_eval"), ended.get("best_eval"))
    return state


def best_of(*records) -> Optional[dict]:
    """The evaluation record with the highest eval_mean, ignoring what is not one."""
    records = [r for r in records if isinstance(r, dict) and isinstance(r.get("eval_mean"), (int, float))]
    return max(records, key=lambda r: r["eval_mean"], default=None)


def check_replay_snapshots(run_dir: Path, cfg: QfleetConfig, plan: RunPlan,
                           say: Callable[[str], None] = print) -> None:
    """Each shard's newest snapshot fits this run (CheckpointError naming what differs).
    Snapshots written by another shard count are then redistributed over this run's shards
    (replay_server/reshard.py; the old files are kept) and the user is told. Actors are
    reassigned to shards by index on every start, so the actor count may change too."""
    from qfleet.replay_server.reshard import Ratio, reshard
    from qfleet.replay_server.snapshot import SnapshotStore, check_newest

    replay = run_dir / "replay"
    shard_dirs = [int(d.name.split("-", 1)[1]) for d in replay.glob("shard-*")
                  if d.name.split("-", 1)[1].isdigit() and SnapshotStore(d).paths()]
    written = max(shard_dirs) + 1 if shard_dirs else (1 if SnapshotStore(replay).paths() else 0)
    for i in range(written or plan.shards):
        check_newest(run_dir / shard_dir(i, written or plan.shards), plan.env.obs_shape, plan.env.obs_dtype,
                     cfg.replay.capacity, frames=plan.frames)
    if written and written != plan.shards:
        ratio = Ratio(cfg.replay.samples_per_insert, cfg.replay.min_size_to_sample, plan.error_buffer)
        done = reshard(replay, written, plan.shards, cfg.replay.capacity, ratio)
        dropped = f", the oldest {done.dropped:,} did not fit and were left out" if done.dropped else ""
        say(f"qfleet: replay snapshots of {written} shard(s) redistributed over {plan.shards}: "
            f"{done.transitions:,} transitions{dropped}; the previous snapshots are kept in {done.kept_in}")


def say_plan(cfg: QfleetConfig, plan: RunPlan, run_dir: Path, *, resumed: Optional[dict], say) -> None:
    """The run's plan in a few lines; `resumed` is the checkpoint's run state when resuming."""
    env = plan.env
    shards = f"; {plan.shards} replay shards" if plan.shards > 1 else ""
    solved = ("no solved threshold (it runs until a budget)" if plan.solved_threshold is None
              else f"solved at {scoring(cfg.learner.eval_epsilon)} mean >= {plan.solved_threshold}")
    at = ("" if resumed is None else
          f" at {float(resumed.get('elapsed_s', 0)):.0f} s, {int(resumed.get('env_steps', 0)):,} env steps")
    say(f"qfleet: {'resuming' if resumed is not None else 'training'} {env.env_id}{at} with {plan.actors} actor(s) x "
        f"{cfg.actor.envs_per_actor} envs{shards}; {solved}; run directory {run_dir}")
    if env.preset == "atari":
        say(f"qfleet: Atari preset (common/atari.py): stacks of {env.obs_shape[0]} {env.obs_shape[1]}x"
            f"{env.obs_shape[2]} grey frames; replay stores {plan.transition_bytes:,} bytes per transition, "
            f"{plan.transition_bytes * cfg.replay.capacity / 2**20:,.0f} MiB at capacity {cfg.replay.capacity:,}")
    if env.pixels is not None:
        per_item = plan.transition_bytes
        say(f"qfleet: observing pixels: stacks of {env.pixels.frame_stack} {env.pixels.size}x{env.pixels.size} "
            f"grey frames (uint8); replay stores {per_item:,} bytes per transition, "
            f"{per_item * cfg.replay.capacity / 2**20:,.0f} MiB at capacity {cfg.replay.capacity:,} "
            f"(deploy/configs/cartpole-pixels.yaml holds settings made for pixels)")


def scoring(epsilon) -> str:
    """How an evaluation chose its actions, for messages: 'greedy' or 'epsilon-greedy (0.1)'."""
    return f"epsilon-greedy ({epsilon:g})" if epsilon else "greedy"


def final_message(s: dict) -> str:
    best = s.get("best_eval")
    ev = "no evaluation finished" if not best else (
        f"best {scoring(best.get('eval_epsilon'))} mean {best['eval_mean']:.1f} +- {best['eval_std']:.1f} over "
        f"{best['eval_episodes']} "
        f"episodes (min {best['eval_min']:.0f}, max {best['eval_max']:.0f}, weights v{best['eval_version']})")
    # A resumed run's times count its earlier sessions too (solved_after_s, metrics);
    # elapsed_s is this session's.
    earlier = s.get("run_elapsed_s", s["elapsed_s"]) - s["elapsed_s"]
    of_run = " of training (earlier sessions included)" if earlier > 0.5 else ""
    if s["solved"] and s["reason"] == "solved":
        head = f"solved {s['env']} in {s['solved_after_s']:.1f} s{of_run}"
    else:  # with run.stop_when_solved=false a solved run still ends on a budget: say both
        head = f"stopped ({s['reason']}) after {s['elapsed_s']:.1f} s"
        if earlier > 0.5:
            head += f" ({s['run_elapsed_s']:.1f} s with the earlier sessions)"
        if s["solved"]:
            head += f", having solved {s['env']} at {s['solved_after_s']:.1f} s{of_run}"
    logs = "logs/" if s.get("backend") != "ray" else "component logs on their nodes under /tmp/qfleet/"
    events = "TensorBoard events, " if any(Path(s["run_dir"]).glob("events.out.tfevents.*")) else ""
    return (f"qfleet: {head}: {ev}\n"
            f"qfleet: {s['env_steps']:,} env steps, {s['updates']:,} updates, {s['episodes']:,} episodes, "
            f"{s['actor_restarts']} actor restart(s)\n"
            f"qfleet: run directory {s['run_dir']} (config.yaml, metrics.jsonl, {events}episodes.csv, "
            f"checkpoint.npz; {logs})")
