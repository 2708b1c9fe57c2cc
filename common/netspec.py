"""Q-network shapes, shared by every part, and the numpy forward pass of the MLP.

`NetSpec` names an architecture; `param_shapes` gives the parameter names and shapes that
the torch module (`common.networks`) has, so a weights message can be validated exactly
by processes that never import torch. `mlp_q_values` is the one numpy MLP forward pass:
`NumpyQNet` (the actors' and the evaluator's policy) and the numpy learner both run it, so
actors need no torch (faster start-up, less memory), and its output matches torch's.
This module imports no other part of qfleet: `common.networks` (torch) builds on it, and
`common.policy` picks between the two.

The CNN is the DQN torso of Mnih et al. (2015): three convolutions (32 8x8 stride 4,
64 4x4 stride 2, 64 3x3 stride 1, ReLU after each, no normalisation) on stacked uint8
frames scaled to [0, 1], then the same dense layers and heads as the MLP.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np


CONV_LAYERS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))  # (out channels, kernel, stride)


class NetSpec(NamedTuple):
    kind: str             # "mlp" (vector observations) or "cnn" (stacked frames, (k, H, W) uint8)
    obs_shape: tuple
    num_actions: int
    hidden: tuple = (128, 128)  # dense layers (after the convolutions for a CNN)
    dueling: bool = False


def conv_output_shape(obs_shape: tuple) -> tuple[int, int, int]:
    """(channels, height, width) after the CNN torso; ValueError if frames are too small."""
    _, h, w = obs_shape
    for _, kernel, stride in CONV_LAYERS:
        h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    if h < 1 or w < 1:
        raise ValueError(f"frames of {obs_shape[1]}x{obs_shape[2]} are too small for the DQN torso (needs 36x36)")
    return CONV_LAYERS[-1][0], h, w


def param_shapes(spec: NetSpec) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape, in the order of the torch module's state_dict."""
    if spec.kind not in ("mlp", "cnn"):
        raise ValueError(f"unknown network kind '{spec.kind}'")
    shapes: dict[str, tuple[int, ...]] = {}
    width = int(np.prod(spec.obs_shape))
    if spec.kind == "cnn":
        channels = spec.obs_shape[0]
        for i, (out, kernel, _) in enumerate(CONV_LAYERS):
            shapes[f"conv.{2 * i}.weight"] = (out, channels, kernel, kernel)
            shapes[f"conv.{2 * i}.bias"] = (out,)
            channels = out
        width = int(np.prod(conv_output_shape(spec.obs_shape)))
    for i, h in enumerate(spec.hidden):
        shapes[f"torso.{2 * i}.weight"] = (h, width)
        shapes[f"torso.{2 * i}.bias"] = (h,)
        width = h
    if spec.dueling:
        shapes.update({"value.weight": (1, width), "value.bias": (1,),
                       "advantage.weight": (spec.num_actions, width), "advantage.bias": (spec.num_actions,)})
    else:
        shapes.update({"head.weight": (spec.num_actions, width), "head.bias": (spec.num_actions,)})
    return shapes


Layer = tuple[np.ndarray, np.ndarray]  # (weight laid out (in, out), bias)


def dense_layers(spec: NetSpec, params) -> tuple[list[Layer], list[Layer]]:
    """The MLP's hidden layers and its head(s) (value, advantage when dueling) from a
    {name: array} mapping, weights as transposed views: x @ weight + bias."""
    hidden = [(params[f"torso.{2 * i}.weight"].T, params[f"torso.{2 * i}.bias"]) for i in range(len(spec.hidden))]
    names = ("value", "advantage") if spec.dueling else ("head",)
    return hidden, [(params[f"{h}.weight"].T, params[f"{h}.bias"]) for h in names]


def mlp_q_values(x: np.ndarray, hidden: list[Layer], heads: list[Layer],
                 acts: Optional[list[np.ndarray]] = None) -> np.ndarray:
    """Q-values of flat float32 inputs (B, D): ReLU dense layers, then the head, or
    value + advantage - mean(advantage) with two heads (dueling). Each hidden activation
    is appended to `acts` if given (what a backward pass needs)."""
    for w, b in hidden:
        x = x @ w
        x += b
        np.maximum(x, 0.0, out=x)
        if acts is not None:
            acts.append(x)
    if len(heads) == 1:
        w, b = heads[0]
        return x @ w + b
    (wv, bv), (wa, ba) = heads
    adv = x @ wa + ba
    return (x @ wv + bv) + adv - adv.mean(axis=1, keepdims=True)


class NumpyQNet:
    """obs -> Q-values of the MLP Q-network, loaded from a {name: array} parameter dict."""

    def __init__(self, spec: NetSpec):
        if spec.kind != "mlp":
            raise ValueError("NumpyQNet runs MLPs only; CNN policies run in torch")
        self.spec = spec
        self._hidden: list[Layer] = []
        self._heads: list[Layer] = []

    def load(self, params: dict[str, np.ndarray]) -> None:
        # Contiguous float32 copies once per version: every forward is then plain x @ W + b.
        self._hidden, self._heads = ([(np.ascontiguousarray(w, np.float32), np.asarray(b, np.float32))
                                      for w, b in layers] for layers in dense_layers(self.spec, params))

    @property
    def loaded(self) -> bool:
        return bool(self._heads)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return mlp_q_values(obs.reshape(len(obs), -1).astype(np.float32, copy=False), self._hidden, self._heads)


def epsilon_greedy(q: np.ndarray, epsilons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-row epsilon-greedy actions (int32)."""
    actions = q.argmax(axis=1).astype(np.int32)
    explore = rng.random(len(q)) < epsilons
    if explore.any():
        actions[explore] = rng.integers(0, q.shape[1], int(explore.sum()), dtype=np.int32)
    return actions
