"""The learner loop: prefetched batches -> Double DQN updates -> priorities, versioned
weights, background greedy evaluation, reports, and a checkpoint at the end.

Updates go through the update role of `learner.update`: on the CPU each finishes inside
`submit`; on CUDA up to `depth` are queued on the GPU, so the priorities of a batch are
sent one update later and published weights are taken when their copy has arrived.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from common.config import LearnerConfig
from common.envs import EnvSpec
from common.netspec import NetSpec
from common.telemetry import Telemetry
from learner.backend import make_update, resolve_backend
from learner.checkpoint import save_checkpoint
from learner.evaluation import BackgroundEvaluator, EvalResult
from learner.prefetch import Prefetcher
from learner.publisher import WeightPublisher
from replay_server.client import ReplayClient

log = logging.getLogger("qfleet.learner")

REPORT_EVERY_S = 0.5


class Learner:
    def __init__(self, *, cfg: LearnerConfig, spec: NetSpec, env: EnvSpec, solved_threshold: Optional[float],
                 replay: ReplayClient, publisher: WeightPublisher, device: str, seed: int = 0,
                 telemetry: Optional[Telemetry] = None, checkpoint_path: Optional[Path] = None,
                 max_updates: int = 0, meta: Optional[dict] = None):
        self.cfg, self.spec, self.env_id = cfg, spec, env.env_id
        self.solved_threshold = solved_threshold
        self.device = device
        self.update = make_update(cfg, spec, device, seed)
        self.backend = resolve_backend(cfg, spec, device)
        self.publisher = publisher
        self.prefetcher = Prefetcher(replay, batch_size=cfg.batch_size, batches_per_request=cfg.batches_per_request,
                                     in_flight=cfg.prefetch, timeout_s=cfg.sample_timeout_s)
        self.evaluator = BackgroundEvaluator(spec=spec, env=env, episodes=cfg.eval_episodes, seed=seed + 1)
        self.telemetry = telemetry or Telemetry(None, "learner")
        self.checkpoint_path = checkpoint_path
        self.max_updates = max_updates
        self.meta = dict(meta or {})
        self.version = 0
        self.best: Optional[EvalResult] = None
        self.best_params: Optional[dict] = None
        self.solved_at: Optional[float] = None
        self.last_eval: Optional[EvalResult] = None
        self._last_loss = float("nan")
        self._keys_in_flight: deque = deque()  # sample keys of submitted, uncollected updates
        self._publish_due = False
        self._published: dict = {}

    def run(self, should_stop: Callable[[], bool]) -> dict:
        """Train until `should_stop()` or the update budget; then checkpoint. Returns a summary."""
        cfg = self.cfg
        self._publish(self.update.params())
        self.prefetcher.start()
        started = time.monotonic()
        last_report = last_eval_submit = started
        try:
            while not should_stop():
                if self.max_updates and self.update.updates >= self.max_updates:
                    break
                self.prefetcher.beta = self._beta()
                batch = self.prefetcher.get()
                self.update.submit(batch)
                self._keys_in_flight.append(batch["keys"])
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
                if now - last_eval_submit >= cfg.eval_every_s and not self.evaluator.busy:
                    self.evaluator.submit(self._published, self.version)
                    last_eval_submit = now
                self._take_eval(self.evaluator.poll())
                if now - last_report >= REPORT_EVERY_S:
                    self._report(now - started)
                    last_report = now
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
        self.prefetcher.send_priorities(self._keys_in_flight.popleft(), td + self.cfg.priority_eps)

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
        self.last_eval = result
        if self.best is None or result.mean > self.best.mean:
            self.best = result
            self.best_params = self.evaluator.result_params
        if self.solved_threshold is not None and result.mean >= self.solved_threshold and self.solved_at is None:
            self.solved_at = time.time()
            log.info("solved: greedy mean %.1f over %d episodes (version %d, %d updates)",
                     result.mean, len(result.returns), result.version, self.update.updates)
        self.telemetry.report({"event": "eval", "eval_mean": result.mean, "eval_std": result.std,
                               "eval_min": result.min, "eval_max": result.max, "eval_version": result.version,
                               "eval_episodes": len(result.returns), "solved": self.solved_at is not None,
                               "updates": self.update.updates})

    def _report(self, elapsed: float) -> None:
        lat = np.array(self.prefetcher.latencies) if self.prefetcher.latencies else np.zeros(1)
        self.telemetry.report({
            "updates": self.update.updates, "version": self.version, "loss": self._last_loss,
            "updates_per_s": self.update.updates / max(elapsed, 1e-9),
            "data_wait_fraction": self.prefetcher.wait_s / max(elapsed, 1e-9),
            "sample_latency_p50_ms": float(np.percentile(lat, 50) * 1e3),
            "sample_latency_p99_ms": float(np.percentile(lat, 99) * 1e3),
            "rate_limited": self.prefetcher.rate_limited, "beta": self._beta(), "elapsed_s": elapsed,
        })

    def finish(self) -> dict:
        """Write the checkpoint (training state + best evaluated policy); returns a summary."""
        summary = {"updates": self.update.updates, "version": self.version, "backend": self.backend,
                   "device": self.device, "solved": self.solved_at is not None,
                   "best_eval_mean": None if self.best is None else self.best.mean,
                   "best_eval_version": None if self.best is None else self.best.version}
        if self.checkpoint_path is not None:
            arrays = dict(self.update.state())
            policy = self.best_params if self.best_params is not None else self.update.params()
            arrays.update({f"policy/{k}": v for k, v in policy.items()})
            meta = {**self.meta, **summary, "net_spec": self.spec._asdict(), "env_id": self.env_id,
                    "policy_eval": None if self.best is None else
                    {"mean": self.best.mean, "std": self.best.std, "min": self.best.min, "max": self.best.max,
                     "episodes": len(self.best.returns), "version": self.best.version}}
            save_checkpoint(self.checkpoint_path, arrays, meta)
            log.info("checkpoint written to %s", self.checkpoint_path)
        return summary
