"""Adam in numpy, updating parameter arrays in place: the numpy learner's and REINFORCE's.

The update is torch.optim.Adam's (bias-corrected, no weight decay, eps added after the
bias correction of the second moment), so the numpy and torch learners agree.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class Adam:
    """First and second moments per parameter array, and the step count (for checkpoints)."""

    def __init__(self, params: Sequence[np.ndarray], *, lr: float, eps: float,
                 betas: tuple[float, float] = (0.9, 0.999)):
        self.params = list(params)
        self.lr, self.eps, self.betas = lr, eps, betas
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.steps = 0

    def step(self, grads: Sequence[np.ndarray]) -> None:
        """One update of every parameter array with its gradient."""
        b1, b2 = self.betas
        self.steps += 1
        step_size = self.lr / (1 - b1 ** self.steps)
        root_correction = np.sqrt(1 - b2 ** self.steps)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            denom = np.sqrt(v)
            denom /= root_correction
            denom += self.eps
            p -= step_size * m / denom
