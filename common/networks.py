"""Torch Q-networks: an MLP for vector observations, a convolutional torso (the Nature DQN
torso or the MinAtar paper's small one, `common.netspec`) for frames, and a CPU policy
wrapper for processes that act with a CNN.

Parameter names and shapes match `common.netspec.param_shapes`, which is how processes
without torch validate a weights message.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from qfleet.common.netspec import NetSpec, conv_layers, conv_output_shape, frame_shape


class QNetwork(nn.Module):
    """[conv torso (CNN only)] -> dense ReLU layers -> Q head (or dueling value + advantage).

    A CNN takes observations as the environment gives them (uint8 frames, bool grids or
    floats; CHW or HWC as spec.layout says), casts them to float, multiplies them by
    spec.input_scale (uint8 /255, bool and floats as they are) and moves HWC channels to the
    front itself, so batches travel and are stored compact and in the environment's layout.
    An MLP flattens its input and casts it to float (raw values, no scaling)."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.kind = spec.kind
        width = int(np.prod(spec.obs_shape))
        if spec.kind == "cnn":
            layers: list[nn.Module] = []
            channels = frame_shape(spec.obs_shape, spec.layout)[0]
            for out, kernel, stride in conv_layers(spec):
                layers += [nn.Conv2d(channels, out, kernel, stride), nn.ReLU()]
                channels = out
            self.conv = nn.Sequential(*layers)
            self.hwc = spec.layout == "hwc"
            self.input_scale = float(spec.input_scale)
            width = int(np.prod(conv_output_shape(spec)))
        elif spec.kind != "mlp":
            raise ValueError(f"unknown network kind '{spec.kind}'")
        dense: list[nn.Module] = []
        for h in spec.hidden:
            dense += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.torso = nn.Sequential(*dense)
        self.dueling = spec.dueling
        if spec.dueling:
            self.value = nn.Linear(width, 1)
            self.advantage = nn.Linear(width, spec.num_actions)
        else:
            self.head = nn.Linear(width, spec.num_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.kind == "cnn":
            x = obs.float()
            if self.input_scale != 1.0:
                x = x * self.input_scale
            if self.hwc:
                x = x.permute(0, 3, 1, 2)  # a channels-last view, which conv2d takes as it is
            obs = self.conv(x)
        x = self.torso(obs.flatten(1).float())
        if not self.dueling:
            return self.head(x)
        adv = self.advantage(x)
        return self.value(x) + adv - adv.mean(dim=1, keepdim=True)


def build_qnetwork(spec: NetSpec) -> nn.Module:
    return QNetwork(spec)


def params_to_numpy(net: nn.Module) -> dict[str, np.ndarray]:
    """float32 numpy copies of the parameters (for publishing or evaluation)."""
    return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in net.state_dict().items()}


class TorchQPolicy:
    """obs -> Q-values (numpy in, numpy out) with a torch network on the CPU; the actors'
    and the evaluator's forward pass for CNNs. Same interface as `NumpyQNet`."""

    def __init__(self, spec: NetSpec):
        self.spec = spec
        self.net = build_qnetwork(spec).requires_grad_(False).eval()
        self._loaded = False

    def load(self, params: dict[str, np.ndarray]) -> None:
        self.net.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in params.items()})
        self._loaded = True

    @property
    def loaded(self) -> bool:
        return self._loaded

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.from_numpy(np.ascontiguousarray(obs))).numpy()
