"""Choosing the learner's device and update implementation.

torch is imported only when it is needed: on the CPU with an MLP, the numpy update is
faster and the learner process starts ~1.5 s sooner without it.
"""
from __future__ import annotations

import os
import shutil

from qfleet.common.config import LearnerConfig
from qfleet.common.errors import ConfigError
from qfleet.common.extras import available
from qfleet.common.netspec import NetSpec


def nvidia_gpu_present() -> bool:
    """A cheap check for an NVIDIA driver, so CPU-only machines never import torch for it."""
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def resolve_device(requested: str) -> str:
    """'cuda' or 'cpu' for a config value of auto, cpu or cuda."""
    if requested == "cpu" or (requested == "auto" and not (nvidia_gpu_present() and available("torch"))):
        return "cpu"  # auto without torch installed: the numpy learner (MLPs); make_plan refused CNNs already
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise ConfigError("learner.device = 'cuda' but torch finds no CUDA device; use 'auto' or 'cpu'")
    return "cpu"


def resolve_backend(cfg: LearnerConfig, spec: NetSpec, device: str) -> str:
    """'numpy' or 'torch' for the learner.backend setting: the numpy update is an MLP on the
    CPU only, so 'auto' gives every CNN (any torso) and every CUDA learner torch."""
    if cfg.backend == "numpy" and (device != "cpu" or spec.kind != "mlp"):
        raise ConfigError(f"learner.backend = 'numpy' runs MLPs on the CPU only, and this learner has "
                          f"{spec.describe()} on {device}; use 'auto' or 'torch'")
    if cfg.backend != "auto":
        return cfg.backend
    return "numpy" if device == "cpu" and spec.kind == "mlp" else "torch"


def make_update(cfg: LearnerConfig, spec: NetSpec, device: str, seed: int):
    """The update object (`learner.update` describes its interface): NumpyDQN for MLPs on
    the CPU, TorchDQN for CNNs on the CPU, DeviceDQN (CUDA graphs, pipelined) on CUDA."""
    if resolve_backend(cfg, spec, device) == "numpy":
        from qfleet.learner.numpy_dqn import NumpyDQN

        return NumpyDQN(cfg, spec, seed)
    import torch

    torch.set_num_threads(cfg.threads)
    if device == "cuda":
        from qfleet.learner.device_dqn import DeviceDQN

        return DeviceDQN(cfg, spec, torch.device(device), seed)
    from qfleet.learner.torch_dqn import TorchDQN

    return TorchDQN(cfg, spec, torch.device(device), seed)
