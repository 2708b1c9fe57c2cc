"""Q-network shapes, shared by every part, the rule that picks a CNN or an MLP for an
observation space, and the numpy forward pass of the MLP.

`NetSpec` names an architecture; `param_shapes` gives the parameter names and shapes that
the torch module (`common.networks`) has, so a weights message can be validated exactly
by processes that never import torch. `mlp_q_values` is the one numpy MLP forward pass:
`NumpyQNet` (the actors' and the evaluator's policy) and the numpy learner both run it, so
actors need no torch (faster start-up, less memory), and its output matches torch's.
This module imports no other part of qfleet: `common.networks` (torch) builds on it, and
`common.policy` picks between the two.

Three convolutional torsos, each followed by dense layers and the same heads as the MLP:

- 'nature', the DQN torso of Mnih et al. (2015): 32 8x8 stride 4, 64 4x4 stride 2,
  64 3x3 stride 1, ReLU after each, no normalisation, then 512 dense units. Made for 84x84
  Atari frames; it needs frames of at least 36x36.
- 'nips2013', the first DQN's torso (Mnih et al., 2013, "Playing Atari with Deep
  Reinforcement Learning"): 16 8x8 stride 4, 32 4x4 stride 2, ReLU, then 256 dense units.
  A third of the Nature torso's arithmetic per frame (3.0 against 9.3 million
  multiply-adds on 84x84x4): what a CPU learner can afford. Never chosen by 'auto'.
- 'minatar', the torso of the MinAtar paper (Young & Tian, 2019): one 3x3 stride-1
  convolution with 16 channels, ReLU, then 128 dense units. Made for MinAtar's 10x10 grids,
  where the Nature torso's 8x8 stride-4 first layer would leave almost nothing.

`choose_net` is the one place that decides which network an observation space gets.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

PIXEL_SCALE = 1.0 / 255.0  # uint8 frames -> [0, 1]
TORSOS = {  # name -> conv layers as (out channels, kernel, stride)
    "nature": ((32, 8, 4), (64, 4, 2), (64, 3, 1)),
    "nips2013": ((16, 8, 4), (32, 4, 2)),
    "minatar": ((16, 3, 1),),
}
TORSO_HIDDEN = {"nature": (512,), "nips2013": (256,), "minatar": (128,)}  # each paper's dense layer
TORSO_CHOICES = ("auto", *TORSOS)  # learner.torso: 'auto' sizes the torso to the frames (`torso_for`)
NATURE_MIN_SIDE = 36   # smallest frame side the Nature torso accepts (8/4 -> 4/2 -> 3/1)
MIN_SIDE = {"nature": NATURE_MIN_SIDE, "nips2013": 20, "minatar": 3}  # 8/4 -> 4/2 for nips2013
IMAGE_MIN_SIDE = 3     # smallest frame side any torso accepts (MinAtar's 3x3 convolution)
IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.bool_))
NETWORKS = ("auto", "mlp", "cnn")


class NetSpec(NamedTuple):
    kind: str             # "mlp" (flattened observations) or "cnn" (a conv torso on 3-D frames)
    obs_shape: tuple      # as the environment gives it (for a CNN: CHW or HWC, see `layout`)
    num_actions: int
    hidden: tuple = (128, 128)  # dense layers (after the convolutions for a CNN)
    dueling: bool = False
    torso: str = "nature"       # CNN only: a key of TORSOS
    layout: str = "chw"         # CNN only: "chw" or "hwc", where obs_shape's channel axis is
    input_scale: float = PIXEL_SCALE  # CNN only: observations are cast to float and multiplied by it

    def describe(self) -> str:
        """One line for messages: what the network is and what it takes."""
        if self.kind == "cnn":
            body = f"{self.torso} CNN on {self.layout.upper()} {tuple(self.obs_shape)}"
        else:
            body = f"MLP on {tuple(self.obs_shape)}"
        return f"{body} -> {tuple(self.hidden)} -> {self.num_actions} actions" + (" (dueling)" if self.dueling else "")


def channel_layout(shape: tuple) -> Optional[str]:
    """Where the channel axis of a 3-D observation is, by shape alone: 'chw', 'hwc' or None.

    The channel axis is an end axis no longer than either of the other two (channels are
    few, frames are wide): (4, 84, 84) Atari frame stacks are CHW, (10, 10, 4) MinAtar grids
    and (210, 160, 3) RGB screens are HWC. When both end axes qualify, as in MinAtar
    Seaquest's (10, 10, 10), it is HWC: gymnasium's convention for image spaces (ALE's RGB
    observations and MinAtar are HWC; CHW stacks come from frame stacking, whose stack axis
    is short). None when neither end axis qualifies, or when the frames (the other two axes)
    are smaller than IMAGE_MIN_SIDE on a side.
    """
    if len(shape) != 3:
        return None
    first, middle, last = (int(s) for s in shape)
    layout = "hwc" if last <= min(first, middle) else "chw" if first <= min(middle, last) else None
    if layout is None:
        return None
    _, h, w = frame_shape(shape, layout)
    return layout if min(h, w) >= IMAGE_MIN_SIDE else None


def image_layout(shape: tuple, dtype) -> Optional[str]:
    """'chw' or 'hwc' if an observation space of this shape and dtype is an image, else None.

    An image is a 3-D Box of uint8 (frames, 0..255) or bool (MinAtar's object channels)
    whose channel axis `channel_layout` finds. Float observations are never images under
    'auto', whatever their shape: floats are what vector tasks emit, so a (4, 84, 84) float32
    Box gets an MLP unless learner.network = 'cnn' says otherwise.
    """
    if np.dtype(dtype) not in IMAGE_DTYPES:
        return None
    return channel_layout(tuple(shape))


def frame_shape(shape: tuple, layout: str) -> tuple[int, int, int]:
    """(channels, height, width) of a 3-D observation shape in `layout`."""
    if layout == "hwc":
        h, w, c = shape
    elif layout == "chw":
        c, h, w = shape
    else:
        raise ValueError(f"unknown frame layout '{layout}' (expected 'chw' or 'hwc')")
    return int(c), int(h), int(w)


def torso_for(height: int, width: int) -> str:
    """The Nature torso for frames it fits (at least 36x36, e.g. 84x84 Atari), else MinAtar's."""
    return "nature" if min(height, width) >= NATURE_MIN_SIDE else "minatar"


def input_scale_for(dtype) -> float:
    """What a CNN multiplies its input by: uint8 frames /255, bool 0/1 and floats as they are."""
    return PIXEL_SCALE if np.dtype(dtype) == np.uint8 else 1.0


def choose_net(*, obs_shape: tuple, obs_dtype, num_actions: int, network: str = "auto", torso: str = "auto",
               hidden: tuple = (128, 128), cnn_hidden: tuple = (), dueling: bool = False) -> NetSpec:
    """The network an observation space gets; ValueError naming the shape if `network` =
    'cnn' is asked of observations that have no channel axis.

    network: 'auto' gives images (`image_layout`) a CNN and everything else an MLP; 'mlp'
    flattens any observation (an MLP sees raw values, uint8 frames are not scaled); 'cnn'
    uses the shape rule of `channel_layout` for any dtype (floats are taken as already
    scaled). torso 'auto' follows the frame size (`torso_for`), a TORSOS key forces that
    torso (ValueError when the frames are smaller than it takes, or when the observations
    get an MLP); cnn_hidden empty means
    that torso's own dense layer (512, 256 or 128), hidden are the MLP's layers.
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network '{network}' (expected one of {', '.join(NETWORKS)})")
    if torso not in TORSO_CHOICES:
        raise ValueError(f"unknown CNN torso '{torso}' (expected one of {', '.join(TORSO_CHOICES)})")
    shape = tuple(int(s) for s in obs_shape)
    layout = {"auto": image_layout(shape, obs_dtype), "cnn": channel_layout(shape)}.get(network)
    if network == "cnn" and layout is None:
        raise ValueError(f"a CNN needs 3-D observations with a channel axis at one end and frames of at least "
                         f"{IMAGE_MIN_SIDE}x{IMAGE_MIN_SIDE} (CHW or HWC); these are {shape} "
                         f"{np.dtype(obs_dtype).name}")
    if layout is None:
        if torso != "auto":  # a torso the network would never use is a mistake worth naming
            raise ValueError(f"the {torso} torso is a CNN's, and these observations ({shape} "
                             f"{np.dtype(obs_dtype).name}) get an MLP; leave learner.torso at 'auto'"
                             + ("" if network == "mlp" else ", or set learner.network = 'cnn' for frames"))
        return NetSpec("mlp", shape, num_actions, tuple(hidden), dueling)
    _, h, w = frame_shape(shape, layout)
    torso = torso_for(h, w) if torso == "auto" else torso
    if min(h, w) < MIN_SIDE[torso]:
        raise ValueError(f"frames of {h}x{w} are too small for the {torso} torso "
                         f"(needs {MIN_SIDE[torso]}x{MIN_SIDE[torso]})")
    return NetSpec("cnn", shape, num_actions, tuple(cnn_hidden) or TORSO_HIDDEN[torso], dueling, torso=torso,
                   layout=layout, input_scale=input_scale_for(obs_dtype))


def conv_layers(spec: NetSpec) -> tuple[tuple[int, int, int], ...]:
    """The (out channels, kernel, stride) of each convolution of a CNN spec."""
    if spec.torso not in TORSOS:
        raise ValueError(f"unknown CNN torso '{spec.torso}' (expected one of {', '.join(TORSOS)})")
    return TORSOS[spec.torso]


def conv_output_shape(spec: NetSpec) -> tuple[int, int, int]:
    """(channels, height, width) after the CNN torso; ValueError if frames are too small."""
    _, height, width = frame_shape(spec.obs_shape, spec.layout)
    h, w = height, width
    for _, kernel, stride in conv_layers(spec):
        h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    if h < 1 or w < 1:
        need = MIN_SIDE[spec.torso]
        raise ValueError(f"frames of {height}x{width} are too small for the {spec.torso} torso "
                         f"(needs {need}x{need})")
    return conv_layers(spec)[-1][0], h, w


def param_shapes(spec: NetSpec) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape, in the order of the torch module's state_dict."""
    if spec.kind not in ("mlp", "cnn"):
        raise ValueError(f"unknown network kind '{spec.kind}'")
    shapes: dict[str, tuple[int, ...]] = {}
    width = int(np.prod(spec.obs_shape))
    if spec.kind == "cnn":
        channels = frame_shape(spec.obs_shape, spec.layout)[0]
        for i, (out, kernel, _) in enumerate(conv_layers(spec)):
            shapes[f"conv.{2 * i}.weight"] = (out, channels, kernel, kernel)
            shapes[f"conv.{2 * i}.bias"] = (out,)
            channels = out
        width = int(np.prod(conv_output_shape(spec)))
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
