"""Baselines from the seed tutorials, to compare DQN with: random search over linear
policies and REINFORCE. Each is a small single-process learner with one role:

    learner = RandomSearch(cfg=..., env=env_spec, seed=0)     # or Reinforce(...)
    while budget_left:
        played = learner.train_step()      # plays some episodes and learns from them
        ... played.returns, played.lengths ...
        evaluate(learner.greedy(), ...)    # obs -> action scores; the argmax is played
        learner.metrics()                  # namespaced numbers for the metrics files
        learner.updates                    # policy changes so far; gradient steps when
                                           # learner.gradient_updates (then reported as learner/updates)
    learner.close()

`runner.BaselineRun` is that loop; `qfleet baseline` runs it and writes the same files as `qfleet train`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Played(NamedTuple):
    """The training episodes of one train_step."""

    returns: np.ndarray
    lengths: np.ndarray
