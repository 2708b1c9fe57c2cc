"""RMSprop in numpy, updating parameter arrays in place: the numpy learner's, when
learner.optimizer is 'rmsprop'.

The update is torch.optim.RMSprop's without momentum or weight decay, so the numpy and
torch learners agree: a decaying mean of squared gradients (and, centred, of gradients),
and a step of lr * g / (sqrt(mean g^2 - (mean g)^2) + eps), eps added after the root.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class RMSprop:
    """The squared-gradient mean (and the gradient mean, centred) per parameter array,
    and the step count (for checkpoints)."""

    def __init__(self, params: Sequence[np.ndarray], *, lr: float, alpha: float, eps: float, centered: bool):
        self.params = list(params)
        self.lr, self.alpha, self.eps, self.centered = lr, alpha, eps, centered
        self.square_avg = [np.zeros_like(p) for p in self.params]
        self.grad_avg = [np.zeros_like(p) for p in self.params] if centered else []
        self.steps = 0

    def step(self, grads: Sequence[np.ndarray]) -> None:
        """One update of every parameter array with its gradient."""
        a = self.alpha
        self.steps += 1
        for i, (p, g, sq) in enumerate(zip(self.params, grads, self.square_avg)):
            sq *= a
            sq += (1 - a) * g * g
            if self.centered:
                mean = self.grad_avg[i]
                mean *= a
                mean += (1 - a) * g
                denom = np.sqrt(sq - mean * mean)
            else:
                denom = np.sqrt(sq)
            denom += self.eps
            p -= self.lr * g / denom
