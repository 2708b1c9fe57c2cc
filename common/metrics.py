"""Run metrics on disk: JSON lines, TensorBoard events and episodes.csv, with one set of names.

`MetricsWriter` is the only place that writes a run's metrics. Every record goes to
`metrics.jsonl` (one JSON object per line) and, with the same names as tags, to TensorBoard
event files in the run directory (`tensorboard --logdir runs` shows every run). The step
axis is env steps (all actors together) and the wall time is the record's time, so the
JSON lines and TensorBoard agree. Names are namespaced by where they come from; `METRICS`
lists every name with its meaning (the README's table is checked against it).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Optional

import numpy as np

from qfleet.common.errors import MissingExtraError
from qfleet.common.extras import require

log = logging.getLogger("qfleet")

EPISODES_HEADER = "elapsed_s,env_steps,actor,return,length"
LAGS_HEADER = "elapsed_s,actor,unit,lag"
# Per call of MetricsWriter.episodes (once per status tick): at most this many episodes get a
# `train/episode_return` record (evenly spaced when more finished). A TensorBoard record
# costs ~70 us; early CartPole episodes finish at thousands per second, which would starve
# the launcher. episodes.csv always gets every episode.
EPISODE_RECORDS_PER_CALL = 250

# name -> meaning. `step` and `time/elapsed_s` are the axes of every record.
METRICS = {
    "step": "env steps (all actors) when the record was written: the TensorBoard step axis",
    "time/elapsed_s": "seconds of training since the run started (a resumed run goes on from its earlier sessions' seconds)",
    "train/episode_return": "return of one finished training episode (one record per episode, up to 250 per status tick; `episodes.csv` has them all)",
    "train/episode_length": "length of that episode in env steps",
    "train/episodes": "training episodes finished so far",
    "train/return_mean100": "mean return of the last 100 training episodes",
    "eval/return_mean": "evaluation (greedy unless learner.eval_epsilon > 0): mean return over its episodes",
    "eval/return_std": "evaluation: standard deviation of the returns",
    "eval/return_min": "evaluation: worst episode",
    "eval/return_max": "evaluation: best episode",
    "eval/episodes": "episodes in that evaluation",
    "eval/epsilon": "exploration of the evaluation policy (learner.eval_epsilon; 0 is greedy)",
    "eval/version": "weights version (DQN) or update count (baselines) that was evaluated",
    "eval/updates": "learner updates when the evaluated weights were taken",
    "eval/solved": "1 once an evaluation reached the solved threshold, else 0",
    "actors/env_steps": "env steps taken by all actors",
    "actors/env_steps_per_s": "env steps per second since the previous record",
    "actors/transitions_sent": "n-step transitions the actors handed to the replay server",
    "actors/policy_lag_versions": "mean over actors of how many weights versions they are behind",
    "actors/policy_lag_ms_p50": "median ms from a weights publication to its first use by an actor",
    "learner/updates": "gradient updates so far",
    "learner/updates_per_s": "updates per second since the previous record",
    "learner/loss": "loss of the latest update (DQN: Huber TD loss; REINFORCE: policy-gradient loss)",
    "learner/version": "latest published weights version",
    "learner/data_wait_fraction": "fraction of the learner's time spent waiting for sampled batches",
    "learner/data_wait_s": "seconds the learner has spent waiting for sampled batches",
    "learner/sample_latency_p50_ms": "median ms from a sample request to its reply (last 2048 requests)",
    "learner/sample_latency_p99_ms": "99th percentile of the same",
    "replay/size": "transitions held by the replay server",
    "replay/stored": "transitions ever inserted",
    "replay/sampled": "transitions ever sampled",
    "replay/samples_per_insert": "achieved ratio of sampled to inserted transitions",
    "replay/rejected": "insert messages the replay server rejected",
    "search/candidates": "random search: linear policies tried so far",
    "search/best_return": "random search: mean return of the best policy's own episodes",
}


class Episode(NamedTuple):
    elapsed_s: float
    env_steps: int   # env steps (all actors) when the episode was reported
    actor: int
    ret: float
    length: int


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "a", buffering=1)

    def write(self, record: dict) -> None:
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class TensorBoardEvents:
    """Scalars as TensorBoard event files, via the `tensorboard` package's own writer
    (imported here, lazily: ~0.2 s, and no torch or TensorFlow)."""

    def __init__(self, logdir: str | Path, flush_secs: float = 2.0):
        require("tensorboard", "writing TensorBoard event files")
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._writer = EventFileWriter(str(logdir), flush_secs=flush_secs)

    def scalars(self, values: dict, step: int, wall_time: float) -> None:
        tags = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()
                if isinstance(v, (int, float)) and math.isfinite(v)]
        if tags:
            self._writer.add_event(self._event(wall_time=wall_time, step=int(step),
                                               summary=self._summary(value=tags)))

    def close(self) -> None:
        self._writer.close()


class MetricsWriter:
    """Fans each record out to metrics.jsonl and TensorBoard, and episodes to episodes.csv.

        writer = MetricsWriter(run_dir=run_dir)
        writer.episodes([Episode(elapsed_s, env_steps, actor, ret, length), ...])
        writer.write({"learner/loss": 0.3, ...}, step=env_steps, elapsed_s=elapsed)
        writer.close()
    """

    def __init__(self, *, run_dir: str | Path, tensorboard: bool = True, started_wall: Optional[float] = None,
                 resumed_at_s: float = 0.0):
        self.run_dir = Path(run_dir)
        # The wall-clock time of elapsed_s 0: a resumed run's records go on from the seconds
        # of its earlier sessions (resumed_at_s), while TensorBoard wants the real time.
        self.started_wall = (time.time() if started_wall is None else started_wall) - resumed_at_s
        self._jsonl = JsonlWriter(self.run_dir / "metrics.jsonl")
        self._tensorboard = tensorboard
        self._tb: Optional[TensorBoardEvents] = None  # opened at the first record: the launcher starts sooner
        self._csv = open(self.run_dir / "episodes.csv", "a")
        if self._csv.tell() == 0:
            self._csv.write(EPISODES_HEADER + "\n")
        self._lags = open(self.run_dir / "policy_lag.csv", "a", buffering=1)
        if self._lags.tell() == 0:
            self._lags.write(LAGS_HEADER + "\n")

    def write(self, values: dict, *, step: int, elapsed_s: float) -> None:
        """One record: `values` (namespaced names; None for 'not known yet') at `step` env steps."""
        self._jsonl.write({"step": int(step), "time/elapsed_s": round(elapsed_s, 3), **values})
        if self._tensorboard and self._tb is None:
            try:
                self._tb = TensorBoardEvents(self.run_dir)
            except MissingExtraError as exc:  # metrics.jsonl has every record; say once what is missing
                log.warning("qfleet: no TensorBoard events: %s", exc)
                self._tensorboard = False
        if self._tb is not None:
            self._tb.scalars({k: v for k, v in values.items() if v is not None and not isinstance(v, str)},
                             step, self.started_wall + elapsed_s)

    def episodes(self, rows: Iterable[Episode]) -> None:
        """Finished training episodes: a row of episodes.csv each, and a `train/episode_return`
        record each up to EPISODE_RECORDS_PER_CALL (an evenly spaced subset beyond)."""
        rows = list(rows)
        if not rows:
            return
        self._csv.write("".join(f"{e.elapsed_s:.3f},{e.env_steps},{e.actor},{e.ret:g},{e.length}\n" for e in rows))
        self._csv.flush()
        if len(rows) > EPISODE_RECORDS_PER_CALL:
            rows = [rows[i] for i in np.linspace(0, len(rows) - 1, EPISODE_RECORDS_PER_CALL).round().astype(int)]
        for e in rows:
            self.write({"train/episode_return": e.ret, "train/episode_length": e.length},
                       step=e.env_steps, elapsed_s=e.elapsed_s)

    def lags(self, rows: Iterable[tuple[float, int, str, float]]) -> None:
        """Policy-lag samples to policy_lag.csv: (elapsed_s, actor, 'ms' or 'versions', lag)."""
        for elapsed, actor, unit, lag in rows:
            self._lags.write(f"{elapsed:.3f},{actor},{unit},{lag:.3f}\n")

    def close(self) -> None:
        self._jsonl.close()
        self._csv.close()
        self._lags.close()
        if self._tb is not None:
            self._tb.close()
