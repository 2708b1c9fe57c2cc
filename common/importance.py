"""Importance-sampling weights of prioritized replay, shared by the replay table (one
shard's view) and the learner's sharded sampler (the global view), so both normalise alike.

    w_i = (N * P(i)) ** -beta, divided by the largest w within each batch

P(i) is the probability with which row i was drawn and N the number of transitions it was
drawn from. The batch-max normalisation makes the factor N and any factor common to the
whole batch cancel: for a batch drawn from one shard, the global weights (P = p_i / P_total,
N = N_total) equal the shard's own (P = p_i / P_shard, N = N_shard) up to rounding, and are
bit for bit the same when there is one shard.
"""
from __future__ import annotations

import numpy as np


def importance_weights(probability: np.ndarray, size: int, beta: float, batch_size: int) -> np.ndarray:
    """float32 weights for `len(probability)` rows, made of consecutive batches of `batch_size`."""
    w = np.power(size * np.asarray(probability, np.float64), -beta).reshape(-1, batch_size)
    return (w / w.max(axis=1, keepdims=True)).reshape(-1).astype(np.float32)
