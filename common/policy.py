"""The policy a process acts or evaluates with: obs -> Q-values for a network spec.

MLPs run in numpy (`common.netspec.NumpyQNet`), so actors on vector observations never
import torch; CNNs (image observations: frame stacks, MinAtar grids, any spec of kind
'cnn') run in torch on the CPU (`common.networks`), imported only when one is asked for:
torch is an optional dependency, and numpy has no convolutions worth running. Which kind
a run gets is decided once, by `common.netspec.choose_net`; this only follows the spec.
"""
from __future__ import annotations

from qfleet.common.netspec import NetSpec, NumpyQNet


def make_policy(spec: NetSpec):
    """obs -> Q-values, loaded with `load(params)`, with a `loaded` flag."""
    if spec.kind == "mlp":
        return NumpyQNet(spec)
    from qfleet.common.networks import TorchQPolicy  # torch: only for CNNs

    return TorchQPolicy(spec)
