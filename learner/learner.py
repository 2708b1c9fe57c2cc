"""The learner loop: prefetched batches -> Double DQN updates -> priorities, versioned
weights, background greedy evaluation, reports, and periodic and final checkpoints.

Updates go through the update role of `learner.update`: on the CPU each finishes inside
`submit`; on CUDA up to `depth` are queued on the GPU, so the priorities of a batch are
sent one update later and published weights are taken when their copy has arrived.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from qfleet.common.config import LearnerConfig
from qfleet.common.envs import EnvSpec
from qfleet.common.errors import CheckpointError, EvaluationError
from qfleet.common.netspec import NetSpec
from qfleet.common.telemetry import Telemetry
from qfleet.learner.backend import make_update, resolve_backend
from qfleet.learner.checkpoint import save_checkpoint, spec_differences, spec_from_meta
from qfleet.learner.evaluation import BackgroundEvaluator, EvalResult
from qfleet.learner.optimizers import checkpoint_optimizer
from qfleet.learner.prefetch import Prefetcher
from qfleet.learner.publisher import WeightPublisher
from qfleet.replay_server.client import ReplayClient

log = logging.getLogger("qfleet.learner")

REPORT_EVERY_S = 0.5


def check_compatible(meta: dict, spec: NetSpec, env_id: str, optimizer: str) -> None:
    """CheckpointError naming every difference between a checkpoint and this run."""
    diffs = spec_differences(spec_from_meta(meta.get("net_spec")), spec)
    if meta.get("env_id") != env_id:
        diffs.append(f"env: checkpoint {meta.get('env_id')!r}, this run {env_id!r}")
    saved = checkpoint_optimizer(meta)
    if saved != optimizer:  # its state would not carry over
        diffs.append(f"optimizer: checkpoint {saved!r}, this run {optimizer!r} "
                     f"(resume with --set learner.optimizer={saved})")
    if diffs:
        raise CheckpointError("the checkpoint does not fit this run's network, environment or optimizer: "
                              + "; ".join(diffs))


class Learner:
    def __init__(self, *, cfg: LearnerConfig, spec: NetSpec, env: EnvSpec, solved_threshold: Optional[float],
                 replay: ReplayClient, publisher: WeightPublisher, device: str, seed: int = 0,
                 telemetry: Optional[Telemetry] = None, checkpoint_path: Optional[Path] = None,
                 max_updates: int = 0, meta: Optional[dict] = None,
                 run_state: Callable[[], dict] = dict, on_checkpoint: Callable[[Path], None] = lambda path: None,
                 extra_shards: Sequence[ReplayClient] = ()):
        """`replay` is the client of the replay server, or of shard 0 when there are several;
        `extra_shards` are the clients of shards 1..S-1, in shard order (see learner.shards)."""
        self.cfg, self.spec, self.env_id = cfg, spec, env.env_id
        self.pixels = env.pixels  # how the policy sees the environment, kept in checkpoints
        self.env_kwargs, self.env_preset = env.kwargs, env.preset  # and how it is made
        self.solved_threshold = solved_threshold
        self.device = device
        self.update = make_update(cfg, spec, device, seed)
        self.backend = resolve_backend(cfg, spec, device)
        self.publisher = publisher
        self.prefetcher = Prefetcher([replay, *extra_shards], batch_size=cfg.batch_size,
                                     batches_per_request=cfg.batches_per_request, in_flight=cfg.prefetch,
                                     timeout_s=cfg.sample_timeout_s, retry_s=cfg.sample_retry_s, seed=seed)
        self.evaluator = BackgroundEvaluator(spec=spec, env=env, episodes=cfg.eval_episodes, seed=seed + 1,
                                             epsilon=cfg.eval_epsilon)
        self.telemetry = telemetry or Telemetry(None, "learner")
        self.checkpoint_path = checkpoint_path
        self.max_updates = max_updates
        self.meta = dict(meta or {})
        self.run_state = run_state  # the launcher's counters (env steps, exploration), kept in checkpoints
        self.on_checkpoint = on_checkpoint  # e.g. ship the file to the launcher when it runs elsewhere
        self.version = 0
        self.best: Optional[EvalResult] = None
        self.best_params: Optional[dict] = None
        self.solved = False
        self.eval_failures = 0  # evaluations skipped because they failed (reported, not fatal)
        self._last_loss = float("nan")
        self._keys_in_flight: deque = deque()  # sample keys of submitted, uncollected updates
        self._publish_due = False
        self._published: dict = {}

    # -- training ----------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool]) -> dict:
        """Train until `should_stop()` or the update budget; then checkpoint. Returns a summary."""
        cfg = self.cfg
        self._publish(self.update.params())
        self.prefetcher.start()
        started = time.monotonic()
        last_report = last_eval_submit = last_checkpoint = started
        try:
            while not should_stop():
                if self.max_updates and self.update.updates >= self.max_updates:
                    break
                self.prefetcher.beta = self._beta()
                batch = self.prefetcher.get(should_stop)
                if batch is None:
                    break
                self.update.submit(batch)
                self._keys_in_flight.append((batch["shard"], batch["keys"]))
                while self.update.in_flight >= self.update.depth:
                    self._collect()
                if self.update.updates % cfg.publish_every == 0:
                    self._publish_due = True
                if self._publish_due and self.update.snapshot_params():
                    self._publish_due = False
                params = self.update.take_params()
                if params is not None:
                    self._publish(params)
                self.publisher.maybe_republish()
                now = time.monotonic()
                try:
                    if now - last_eval_submit >= cfg.eval_every_s and not self.evaluator.busy:
                        last_eval_submit = now
                        self.evaluator.submit(self._published, self.version)
                    self._take_eval(self.evaluator.poll())
                except EvaluationError as exc:  # reported, not fatal: that evaluation is skipped
                    self.eval_failures += 1
                    log.warning("evaluation skipped (%d so far), training goes on: %s", self.eval_failures, exc)
                if now - last_report >= REPORT_EVERY_S:
                    self._report(now - started)
                    last_report = now
                if cfg.checkpoint_every_s and now - last_checkpoint >= cfg.checkpoint_every_s:
                    self.save_checkpoint()
                    last_checkpoint = now
            while self.update.in_flight:
                self._collect()
        finally:
            self.prefetcher.close()
            self.evaluator.close()
        self._report(time.monotonic() - started)
        return self.finish()

    def _collect(self) -> None:
        """Take the oldest update's |TD errors| and send them as its batch's priorities."""
        td, self._last_loss = self.update.collect()
        shard, keys = self._keys_in_flight.popleft()
        self.prefetcher.send_priorities(keys, td + self.cfg.priority_eps, shard)

    def _publish(self, params: dict) -> None:
        if self._published:
            self.version += 1
        self._published = params
        self.publisher.publish(params, self.version)

    def _beta(self) -> float:
        frac = min(1.0, self.update.updates / self.cfg.beta_anneal_updates)
        return self.cfg.beta_start + frac * (self.cfg.beta_end - self.cfg.beta_start)

    def _take_eval(self, result: Optional[EvalResult]) -> None:
        if result is None:
            return
        if self.best is None or result.mean > self.best.mean:
            self.best, self.best_params = result, self.evaluator.result_params
        newly_solved = (self.solved_threshold is not None and result.mean >= self.solved_threshold
                        and not self.solved)
        if newly_solved:
            self.solved = True
            log.info("solved: evaluation mean %.1f over %d episodes, epsilon %g (version %d, %d updates)",
                     result.mean, len(result.returns), self.cfg.eval_epsilon, result.version, self.update.updates)
        self.telemetry.report({"event": "eval", "eval_mean": result.mean, "eval_std": result.std,
                               "eval_min": result.min, "eval_max": result.max, "eval_version": result.version,
                               "eval_episodes": len(result.returns), "eval_epsilon": self.cfg.eval_epsilon,
                               "solved": self.solved,
                               "updates": self.update.updates})
        if newly_solved:
            self.save_checkpoint()  # the solving weights are on disk at once, whatever happens next

    def _report(self, elapsed: float) -> None:
        lat = np.array(self.prefetcher.latencies) if self.prefetcher.latencies else np.zeros(1)
        shards = self.prefetcher.shards.report() if self.prefetcher.shards.count > 1 else {}
        self.telemetry.report({**shards,
            "updates": self.update.updates, "version": self.version,
            "loss": self._last_loss if math.isfinite(self._last_loss) else None,  # NaN before the first update
            "updates_per_s": self.update.updates / max(elapsed, 1e-9),
            "data_wait_fraction": self.prefetcher.wait_s / max(elapsed, 1e-9), "data_wait_s": self.prefetcher.wait_s,
            "sample_latency_p50_ms": float(np.percentile(lat, 50) * 1e3),
            "sample_latency_p99_ms": float(np.percentile(lat, 99) * 1e3),
            "rate_limited": self.prefetcher.rate_limited, "beta": self._beta(), "elapsed_s": elapsed,
            "eval_failures": self.eval_failures, "evaluator_restarts": self.evaluator.restarts,
        })

    # -- checkpoints ---------------------------------------------------------------------
    def summary(self) -> dict:
        return {"updates": self.update.updates, "version": self.version, "backend": self.backend,
                "device": self.device, "solved": self.solved, "eval_failures": self.eval_failures,
                "best_eval_mean": None if self.best is None else self.best.mean,
                "best_eval_version": None if self.best is None else self.best.version}

    def save_checkpoint(self) -> Optional[Path]:
        """Training state, the best-evaluated policy and the run's counters, atomically."""
        if self.checkpoint_path is None:
            return None
        arrays = dict(self.update.state())
        policy = self.best_params if self.best_params is not None else self.update.params()
        arrays.update({f"policy/{k}": v for k, v in policy.items()})
        best = None if self.best is None else {
            "mean": self.best.mean, "std": self.best.std, "min": self.best.min, "max": self.best.max,
            "episodes": len(self.best.returns), "version": self.best.version}
        meta = {**self.meta, **self.summary(), "net_spec": self.spec._asdict(), "env_id": self.env_id,
                "optimizer": self.cfg.optimizer,
                "pixels": None if self.pixels is None else dataclasses.asdict(self.pixels),
                "env_kwargs": self.env_kwargs, "env_preset": self.env_preset,
                "policy_eval": best, "evaluations": self.evaluator.evaluations, "run_state": self.run_state(),
                "saved_at": time.time()}
        path = save_checkpoint(self.checkpoint_path, arrays, meta)
        self.on_checkpoint(path)
        return path

    def restore(self, arrays: dict, meta: dict) -> None:
        """Continue from a checkpoint: weights, optimizer, counters, best policy, solved flag."""
        check_compatible(meta, self.spec, self.env_id, self.cfg.optimizer)
        self.update.load(arrays)
        self.version = int(meta.get("version", 0))
        self.solved = bool(meta.get("solved", False))
        self.evaluator.evaluations = int(meta.get("evaluations", 0))
        best = meta.get("policy_eval")
        if best:
            self.best = EvalResult(best["version"], best["mean"], best["std"], best["min"], best["max"],
                                   np.zeros(best["episodes"]), np.zeros(best["episodes"], np.int64))
            self.best_params = {k[len("policy/"):]: v for k, v in arrays.items() if k.startswith("policy/")}
        log.info("resumed from checkpoint: %d updates, weights version %d", self.update.updates, self.version)

    def finish(self) -> dict:
        path = self.save_checkpoint()
        if path is not None:
            log.info("checkpoint written to %s", path)
        return self.summary()
