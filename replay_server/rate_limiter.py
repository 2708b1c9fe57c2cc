"""Reverb-style rate limiter: minimum size to sample, and a samples-per-insert ratio.

Counts are in transitions (an insert of 128 counts 128; a sample of a batch of 256
counts 256). With `diff = inserts * spi - samples` and `offset = spi * min_size`:

* an insert of n is allowed while the table is below `min_size` (whatever n: a batch that
  overshoots min_size must not deadlock an empty table), or if
  `diff + n * spi <= offset + error_buffer`;
* a sample of m is allowed once the table holds `min_size`, if `diff - m >= offset -
  error_buffer`.

So the learner can run ahead of the actors by at most `error_buffer` samples and fall
behind by at most as much. `samples_per_insert = 0` turns the ratio off: inserts are never
blocked and only the minimum size gates sampling.
"""
from __future__ import annotations

from qfleet.common.errors import ConfigError


class RateLimiter:
    def __init__(self, *, min_size_to_sample: int, samples_per_insert: float, error_buffer: float,
                 max_insert_batch: int, max_sample_batch: int):
        if min_size_to_sample < 1:
            raise ConfigError(f"min_size_to_sample = {min_size_to_sample} must be >= 1")
        if samples_per_insert < 0:
            raise ConfigError(f"samples_per_insert = {samples_per_insert} must be >= 0 (0 disables the ratio)")
        if max_insert_batch < 1 or max_sample_batch < 1:
            raise ConfigError("max_insert_batch and max_sample_batch must be >= 1")
        needed = self.min_error_buffer(samples_per_insert, max_insert_batch, max_sample_batch)
        if samples_per_insert > 0 and error_buffer < needed:
            raise ConfigError(
                f"error_buffer = {error_buffer} is too small for samples_per_insert = {samples_per_insert} with "
                f"inserts of up to {max_insert_batch} and samples of up to {max_sample_batch} transitions: "
                f"there would be states where the next insert would overshoot the ratio and the next sample "
                f"would undershoot it, so actors and learner would wait on each other forever (deadlock). "
                f"Use error_buffer >= {needed:g}.")
        self.min_size_to_sample = min_size_to_sample
        self.samples_per_insert = samples_per_insert
        self.error_buffer = error_buffer
        offset = samples_per_insert * min_size_to_sample
        self._min_diff, self._max_diff = offset - error_buffer, offset + error_buffer
        self.inserts = 0
        self.samples = 0

    @staticmethod
    def min_error_buffer(samples_per_insert: float, max_insert_batch: int, max_sample_batch: int) -> float:
        """Smallest error buffer with no deadlock: 2 * eb >= max_insert * spi + max_sample."""
        return (max_insert_batch * samples_per_insert + max_sample_batch) / 2.0

    @property
    def enabled(self) -> bool:
        return self.samples_per_insert > 0

    def can_insert(self, n: int, size: int) -> bool:
        if not self.enabled or size < self.min_size_to_sample:
            return True
        return (self.inserts + n) * self.samples_per_insert - self.samples <= self._max_diff

    def can_sample(self, m: int, size: int) -> bool:
        if size < self.min_size_to_sample:
            return False
        if not self.enabled:
            return True
        return self.inserts * self.samples_per_insert - self.samples - m >= self._min_diff

    def record_insert(self, n: int) -> None:
        self.inserts += n

    def record_sample(self, m: int) -> None:
        self.samples += m

    def state(self) -> dict:
        return {"inserts": self.inserts, "samples": self.samples}

    def load(self, state: dict) -> None:
        self.inserts, self.samples = int(state["inserts"]), int(state["samples"])
