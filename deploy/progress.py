"""What the launcher knows about a run: the reports of every component, folded into the
numbers of the live status line, the metrics file and the final summary."""
from __future__ import annotations

import time
from collections import deque
from typing import Optional

import numpy as np

from qfleet.common import messages as m
from qfleet.common.metrics import Episode
from qfleet.deploy import replay_stats
from qfleet.deploy.components import part_name


class Progress:
    def __init__(self, num_actors: int, resumed: Optional[dict] = None, shards: int = 1):
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.actors: dict[int, dict] = {}
        self.learner: dict = {}
        self.replay: dict = {}
        self.evals: deque = deque(maxlen=1000)   # newest evaluations (all are in metrics.jsonl)
        self.evaluations = 0   # this session's: run.max_evaluations counts them
        self.returns100: deque = deque(maxlen=100)
        self.new_episodes: list[Episode] = []
        self.new_lags: list[tuple[float, int, str, float]] = []       # (elapsed, actor, "ms"|"versions", value)
        self._version_probes: deque = deque(maxlen=100_000)           # (elapsed, actor, its version)
        self._learner_versions: deque = deque(maxlen=4)               # (elapsed, learner version)
        self.lags_ms: deque = deque(maxlen=10_000)  # newest publish -> first use delays
        self.solved_after_s: Optional[float] = None
        self.solved_wall: Optional[float] = None
        self.ready: dict[str, dict] = {}
        self.errors: list[str] = []
        self.learner_summary: dict = {}
        self.replay_final = False  # replay stats are the servers' own final counts
        self.shards = shards
        self.replay_shards: dict[int, dict] = {}  # shard -> its newest stats
        self.replay_finals: set = set()           # shards whose final count has arrived
        self.relays: dict[int, dict] = {}         # relay -> its newest counters
        self.num_actors = num_actors
        self._rates: dict[str, tuple[float, float]] = {}
        # Counters of actor processes that died (their successors count from zero), and of
        # the run this one resumes.
        self.retired_sent: dict[int, int] = {}
        self.retired_steps = 0
        self.resumed = dict(resumed or {})
        self.episodes = int(self.resumed.get("episodes", 0))
        self.before_s = float(self.resumed.get("elapsed_s", 0.0))  # training seconds of earlier sessions
        # A resumed run's best evaluation and count go on from its earlier sessions, as the
        # learner's best policy does (learner.restore).
        self.best_eval: Optional[dict] = self.resumed.get("best_eval")
        self.evaluations_before = int(self.resumed.get("evaluations", 0))
        self.schedules: dict[int, dict] = {}

    @property
    def elapsed(self) -> float:
        """Seconds of this session: what run.max_seconds budgets and the rates divide by."""
        return time.monotonic() - self.started

    @property
    def run_evaluations(self) -> int:
        """Evaluations of the whole run, earlier sessions of a resumed run included."""
        return self.evaluations_before + self.evaluations

    @property
    def run_s(self) -> float:
        """Seconds of the whole run, earlier sessions of a resumed run included: the time
        stamp of every record (metrics, episodes, lags, evaluations), so that the segments
        of a resumed run follow each other on a time axis instead of overlapping."""
        return self.before_s + self.elapsed

    def take(self, report: m.Report) -> None:
        v = report.values
        event = v.get("event")
        steps_before = self.env_steps()
        name = part_name(report.role, report.index, self.shards)
        if event == "ready":
            self.ready[name] = v
        elif event == "error":
            self.errors.append(f"{name}: {v.get('message')}")
        elif event == "eval":
            record = {**v, "elapsed_s": self.run_s}
            self.evals.append(record)
            self.evaluations += 1
            if self.best_eval is None or record["eval_mean"] > self.best_eval["eval_mean"]:
                self.best_eval = record
            if v.get("solved") and self.solved_after_s is None:
                self.solved_after_s, self.solved_wall = self.run_s, time.time()
        elif event == "finished" and report.role == "learner":
            self.learner_summary = dict(v)
        elif event == "finished" and report.role == "replay":
            self.replay_finals.add(report.index)
            self.take_replay({report.index: {k: x for k, x in v.items() if k != "event"}})
            self.replay_final = len(self.replay_finals) >= self.shards
        elif report.role == "relay" and event in (None, "finished"):
            self.relays[report.index] = {k: x for k, x in v.items() if k != "event"}
        elif report.role == "actor":
            self.actors[report.index] = dict(v)
            self.schedules[report.index] = {"env_steps": v.get("schedule_env_steps", 0),
                                            "episodes": v.get("schedule_episodes", 0)}
        elif report.role == "learner":
            self.learner = dict(v)
        if report.episode_returns is not None and len(report.episode_returns):
            # The episodes ended between this actor's previous report and this one: spread
            # their step stamps over the steps that reports added meanwhile.
            now, n = self.run_s, len(report.episode_returns)
            stamps = np.linspace(steps_before, self.env_steps(), n + 1)[1:].round().astype(int).tolist()
            for ret, length, step in zip(report.episode_returns.tolist(), report.episode_lengths.tolist(), stamps):
                self.returns100.append(ret)
                self.new_episodes.append(Episode(now, step, report.index, ret, length))
            self.episodes += len(report.episode_returns)
        if report.lag_ms is not None and len(report.lag_ms):
            self.lags_ms.extend(report.lag_ms.tolist())
            now = self.run_s
            self.new_lags += [(now, report.index, "ms", x) for x in report.lag_ms.tolist()]
        if report.role == "actor" and event is None and v.get("weights_version", -1) >= 0:
            self._version_probes.append((self.run_s, report.index, v["weights_version"]))
        if report.role == "learner" and event is None and "version" in v:
            self._learner_versions.append((self.run_s, v["version"]))
            self._resolve_version_lags()

    def take_replay(self, stats: dict[int, dict]) -> None:
        """Newer stats of some shards; self.replay is their sum (one shard's own when S = 1)."""
        self.replay_shards.update(stats)
        self.replay = replay_stats.merge(self.replay_shards)

    def retire_actor(self, index: int, sent_exact: Optional[int] = None) -> None:
        """An actor process died: keep its counts (its successor reports from zero).
        `sent_exact` is its own final count, when it could be read; else its last report."""
        last = self.actors.pop(index, {})
        self.retired_steps += last.get("env_steps", 0)
        sent = last.get("transitions_sent", 0) if sent_exact is None else sent_exact
        self.retired_sent[index] = self.retired_sent.get(index, 0) + sent

    def schedule_for(self, index: int) -> Optional[dict]:
        """Exploration state for (a successor of) actor `index`: its own last report, the
        resumed run's state for that index, or the resumed run's average per actor."""
        if index in self.schedules:
            return self.schedules[index]
        saved = self.resumed.get("schedules", {})
        if str(index) in saved:
            return saved[str(index)]
        if self.resumed:
            n = max(1, self.num_actors)
            return {"env_steps": int(self.resumed.get("env_steps", 0)) // n,
                    "episodes": int(self.resumed.get("episodes", 0)) // n}
        return None

    def run_state(self) -> dict:
        """What a checkpoint keeps of the run besides the learner: counters and exploration."""
        return {"env_steps": self.env_steps(), "episodes": self.episodes, "elapsed_s": round(self.run_s, 3),
                "best_eval": self.best_eval, "evaluations": self.run_evaluations,
                "schedules": {str(i): self.schedule_for(i) for i in range(self.num_actors)
                              if self.schedule_for(i) is not None}}

    # -- derived numbers ---------------------------------------------------------------
    def env_steps(self) -> int:
        return (int(self.resumed.get("env_steps", 0)) + self.retired_steps
                + sum(a.get("env_steps", 0) for a in self.actors.values()))

    def sent_by_actor(self) -> dict[int, int]:
        indices = set(self.actors) | set(self.retired_sent)
        return {i: self.retired_sent.get(i, 0) + self.actors.get(i, {}).get("transitions_sent", 0)
                for i in sorted(indices)}

    def sent(self) -> int:
        return sum(self.sent_by_actor().values())

    def rate(self, key: str, value: float) -> float:
        """Per-second rate of a counter since the previous call with the same key."""
        now = time.monotonic()
        last = self._rates.get(key)
        self._rates[key] = (now, value)
        if last is None or now <= last[0]:
            return 0.0
        return (value - last[1]) / (now - last[0])

    def policy_lag_versions(self) -> float:
        """Mean over actors of (learner version - version the actor acts with)."""
        latest = self.learner.get("version")
        versions = [a.get("weights_version", -1) for a in self.actors.values()]
        if latest is None or not versions:
            return float("nan")
        return float(np.mean([max(0, latest - v) for v in versions]))

    def snapshot(self) -> dict:
        """The metrics of one status tick, with namespaced names (common.metrics.METRICS)."""
        # None until the learner's first report: a resumed learner then reports its
        # checkpoint's count, which is no rate (it made a 10^4/s spike in the first tick)
        steps, updates = self.env_steps(), self.learner.get("updates")
        lags = np.array(list(self.lags_ms)[-1000:]) if self.lags_ms else None
        return {
            "actors/env_steps": steps,
            "actors/env_steps_per_s": self.rate("steps", steps),
            "actors/transitions_sent": self.sent(),
            "actors/policy_lag_versions": self.policy_lag_versions(),
            "actors/policy_lag_ms_p50": float(np.percentile(lags, 50)) if lags is not None else None,
            "learner/updates": updates or 0,
            "learner/updates_per_s": 0.0 if updates is None else self.rate("updates", updates),
            "learner/loss": self.learner.get("loss"),
            "learner/version": self.learner.get("version"),
            "learner/data_wait_fraction": self.learner.get("data_wait_fraction"),
            "learner/data_wait_s": self.learner.get("data_wait_s"),
            "learner/sample_latency_p50_ms": self.learner.get("sample_latency_p50_ms"),
            "learner/sample_latency_p99_ms": self.learner.get("sample_latency_p99_ms"),
            "replay/size": self.replay.get("size"),
            "replay/stored": self.replay.get("stored"),
            "replay/sampled": self.replay.get("sampled"),
            "replay/samples_per_insert": self.replay.get("samples_per_insert"),
            "replay/rejected": self.replay.get("rejected"),
            "train/episodes": self.episodes,
            "train/return_mean100": float(np.mean(self.returns100)) if self.returns100 else None,
        }

    @staticmethod
    def eval_metrics(values: dict) -> dict:
        """The metrics of one evaluation, from the learner's eval report."""
        return {"eval/return_mean": values["eval_mean"], "eval/return_std": values["eval_std"],
                "eval/return_min": values["eval_min"], "eval/return_max": values["eval_max"],
                "eval/episodes": values["eval_episodes"], "eval/epsilon": values.get("eval_epsilon", 0.0),
                "eval/version": values["eval_version"],
                "eval/updates": values["updates"], "eval/solved": int(bool(values["solved"]))}

    def status_line(self, tick: dict, elapsed_s: float) -> str:
        def num(x, fmt="{:,.0f}"):
            return "-" if x is None else fmt.format(x)
        lag_ms = tick["actors/policy_lag_ms_p50"]
        last = self.evals[-1] if self.evals else None
        ev = "-" if last is None else f"{last['eval_mean']:.1f} (v{last['eval_version']})"
        return (f"[{elapsed_s:6.1f}s] steps {num(tick['actors/env_steps'])} "
                f"({num(tick['actors/env_steps_per_s'])}/s) | updates {num(tick['learner/updates'])} "
                f"({num(tick['learner/updates_per_s'])}/s) | replay {num(tick['replay/size'])} "
                f"spi {num(tick['replay/samples_per_insert'], '{:.1f}')} | return100 "
                f"{num(tick['train/return_mean100'], '{:.1f}')} | eval {ev} | lag "
                f"{num(tick['actors/policy_lag_versions'], '{:.1f}')} v, {num(lag_ms, '{:.0f}')} ms")

    def take_episodes(self) -> list[Episode]:
        rows, self.new_episodes = self.new_episodes, []
        return rows

    def _resolve_version_lags(self) -> None:
        """Versions behind for each actor report between the last two learner reports, with
        the learner's version interpolated at the actor report's time (learner reports are
        0.5 s apart, a dozen versions at a few hundred updates/s)."""
        if len(self._learner_versions) < 2:
            return
        (t0, v0), (t1, v1) = self._learner_versions[-2], self._learner_versions[-1]
        while self._version_probes and self._version_probes[0][0] <= t1:
            t, actor, version = self._version_probes.popleft()
            if t < t0:
                continue
            learner = v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
            self.new_lags.append((t, actor, "versions", max(0.0, learner - version)))

    def take_lags(self) -> list[tuple[float, int, str, float]]:
        rows, self.new_lags = self.new_lags, []
        return rows
