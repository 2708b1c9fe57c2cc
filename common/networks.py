"""Torch Q-networks: MLP (optionally dueling) for vector observations.

Parameter names and shapes match `common.netspec.param_shapes`, which is how processes
without torch validate a weights message.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.netspec import NetSpec


class MLPQNetwork(nn.Module):
    def __init__(self, spec: NetSpec):
        super().__init__()
        layers: list[nn.Module] = []
        width = int(np.prod(spec.obs_shape))
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.torso = nn.Sequential(*layers)
        self.dueling = spec.dueling
        if spec.dueling:
            self.value = nn.Linear(width, 1)
            self.advantage = nn.Linear(width, spec.num_actions)
        else:
            self.head = nn.Linear(width, spec.num_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.torso(obs.flatten(1))
        if not self.dueling:
            return self.head(x)
        adv = self.advantage(x)
        return self.value(x) + adv - adv.mean(dim=1, keepdim=True)


def build_qnetwork(spec: NetSpec) -> nn.Module:
    if spec.kind == "mlp":
        return MLPQNetwork(spec)
    raise ValueError(f"unknown network kind '{spec.kind}'")


def torch_param_shapes(spec: NetSpec) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_qnetwork(spec).state_dict().items()}


def params_to_numpy(net: nn.Module) -> dict[str, np.ndarray]:
    """float32 numpy copies of the parameters (for publishing or evaluation)."""
    return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in net.state_dict().items()}
