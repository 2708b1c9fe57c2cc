"""The learner's optimizer (learner.optimizer) for each backend, and the backend-neutral
names its state has in checkpoints.

The numpy, torch and CUDA learners keep the same optimizer state under the same keys, so a
checkpoint written by one resumes in another:

    adam     adam_m/<param>, adam_v/<param>, adam_step
    rmsprop  rmsprop_sq/<param>, rmsprop_mean/<param> (centred only), rmsprop_step

A checkpoint's metadata names its optimizer (`optimizer`; none means adam, the only one
before), and a resume with another optimizer is refused (learner.check_compatible).
torch is imported only inside the torch constructor: the numpy learner never loads it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from qfleet.common.config import LearnerConfig
from qfleet.learner.adam import Adam
from qfleet.learner.rmsprop import RMSprop

# torch's state key for each slot -> the checkpoint prefix
_SLOTS = {"adam": {"exp_avg": "adam_m", "exp_avg_sq": "adam_v"},
          "rmsprop": {"square_avg": "rmsprop_sq", "grad_avg": "rmsprop_mean"}}
# torch's state key -> the attribute holding that slot in the numpy optimizers
_NUMPY_ATTRS = {"exp_avg": "m", "exp_avg_sq": "v", "square_avg": "square_avg", "grad_avg": "grad_avg"}


def slot_names(cfg: LearnerConfig) -> dict[str, str]:
    """{torch state key: checkpoint prefix} of each per-parameter slot of cfg's optimizer."""
    slots = dict(_SLOTS[cfg.optimizer])
    if cfg.optimizer == "rmsprop" and not cfg.rmsprop_centered:
        del slots["grad_avg"]
    return slots


def step_key(cfg: LearnerConfig) -> str:
    """The checkpoint key of the optimizer's step count."""
    return f"{cfg.optimizer}_step"


def checkpoint_optimizer(meta: dict) -> str:
    """The optimizer a checkpoint was trained with (checkpoints older than the setting: adam)."""
    return str(meta.get("optimizer") or "adam")


def make_numpy_optimizer(flat: np.ndarray, cfg: LearnerConfig) -> Adam | RMSprop:
    """The numpy optimizer over one flat parameter buffer."""
    if cfg.optimizer == "adam":
        return Adam([flat], lr=cfg.lr, eps=cfg.adam_eps)
    return RMSprop([flat], lr=cfg.lr, alpha=cfg.rmsprop_alpha, eps=cfg.rmsprop_eps, centered=cfg.rmsprop_centered)


def numpy_slots(optimizer: Adam | RMSprop, cfg: LearnerConfig) -> dict[str, np.ndarray]:
    """{checkpoint prefix: flat state buffer} of a numpy optimizer from make_numpy_optimizer."""
    return {prefix: getattr(optimizer, _NUMPY_ATTRS[key])[0] for key, prefix in slot_names(cfg).items()}


def make_torch_optimizer(params: Sequence, cfg: LearnerConfig, *, capturable: bool = False):
    """torch's optimizer for cfg. Adam is fused (one kernel for all parameters: the per-tensor
    loop was 15% of a CPU update of the 2013 torso); RMSprop has no fused kernel in torch and
    runs as foreach ops. `capturable` keeps the step count on the device, for CUDA graphs."""
    import torch

    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, fused=True, capturable=capturable)
    return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.rmsprop_alpha, eps=cfg.rmsprop_eps,
                               centered=cfg.rmsprop_centered, foreach=True, capturable=capturable)
