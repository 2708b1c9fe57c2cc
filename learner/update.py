"""The update role: what the learner loop asks of a DQN implementation.

    update.submit(batch)                 # start one update on a sampled batch (numpy arrays)
    while update.in_flight >= update.depth:
        td, loss = update.collect()      # |TD error| and loss of the oldest submitted update
    update.snapshot_params()             # ask for a copy of the online weights ...
    params = update.take_params()        # ... and take it once it is there (None until then)
    update.step(batch) -> (td, loss)     # submit + collect, for tests and benchmarks

plus `updates` (a counter), `params()`, `state()` and `load(state)` (backend-neutral
checkpoint keys). The CPU implementations (`NumpyDQN`, `TorchDQN`) finish an update inside
`submit` (depth 1) through `SyncUpdate`. The CUDA one (`DeviceDQN`) keeps `depth` updates
queued on the GPU, so the host packs and uploads the next batch while the GPU computes,
and copies weights back without waiting for the updates queued behind them.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


class SyncUpdate:
    """submit/collect and weight snapshots for implementations with a synchronous `step`."""

    depth = 1
    _result: Optional[tuple[np.ndarray, float]] = None
    _snapshot: Optional[dict] = None

    @property
    def in_flight(self) -> int:
        return int(self._result is not None)

    def submit(self, arrays: dict[str, np.ndarray]) -> None:
        if self._result is not None:
            raise RuntimeError("collect() the previous update before submitting another")
        self._result = self.step(arrays)

    def collect(self) -> tuple[np.ndarray, float]:
        if self._result is None:
            raise RuntimeError("no update in flight")
        result, self._result = self._result, None
        return result

    def snapshot_params(self) -> bool:
        """Start copying the online weights; False if a copy is still pending."""
        self._snapshot = self.params()
        return True

    def take_params(self) -> Optional[dict[str, np.ndarray]]:
        """The weights of the last snapshot once they are on the host (once), else None."""
        params, self._snapshot = self._snapshot, None
        return params
