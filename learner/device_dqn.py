"""The CUDA learner: staged batches, the whole update replayed as a CUDA graph, results
and weights brought back without stalling the GPU.

A CartPole-sized update is ~50 small kernels (three forward passes, the Double DQN target,
the loss, backward, clipping, Adam, Polyak); launched one at a time from Python the GPU
mostly waits for the next launch. Here, per update:

1. the batch is packed into pinned host memory and copied to static device tensors with
   one asynchronous copy (`learner.staging`);
2. one `graph.replay()` runs the whole update (`TorchDQN._update`, captured once: the
   optimizer is `capturable` (Adam fused, RMSprop foreach), gradient clipping and Polyak
   are sync-free foreach ops). A hard target copy, when due, is one foreach copy between
   replays into the same memory;
3. |TD error| and the loss are copied into pinned memory with an event; `collect` waits
   for them one update later (depth 2), so the host packs and uploads batch t+1 while the
   GPU computes update t;
4. weights for publishing are copied on the device after the queued updates and brought to
   pinned host memory on a side stream (`WeightSnapshot`); the learner takes them when the
   copy has finished, without waiting for updates queued behind it.

CNNs run their forward and backward passes under bf16 autocast (weights, optimizer state, the
target and the loss stay float32); fp16 is not offered because its dynamic loss scaling
needs a host sync per step. `learner.cuda_graphs: false` runs the same steps eagerly.
"""
from __future__ import annotations

import contextlib
from collections import deque
from typing import Optional

import numpy as np
import torch

from qfleet.common.config import LearnerConfig
from qfleet.common.errors import ConfigError
from qfleet.common.netspec import NetSpec
from qfleet.learner.optimizers import make_torch_optimizer
from qfleet.learner.staging import Staging
from qfleet.learner.torch_dqn import Batch, TorchDQN

WARMUP_STEPS = 3  # eager steps on a side stream before capture (allocator, cuBLAS, optimizer state)


def resolve_precision(requested: str, spec: NetSpec) -> str:
    """'bf16' or 'fp32' on the current CUDA device for a learner.precision setting."""
    bf16_ok = torch.cuda.is_bf16_supported()
    if requested == "bf16" and not bf16_ok:
        raise ConfigError("learner.precision = 'bf16' but this GPU has no bf16 support; use 'auto' or 'fp32'")
    if requested == "auto":
        return "bf16" if spec.kind == "cnn" and bf16_ok else "fp32"
    return requested


class WeightSnapshot:
    """The online weights, copied to pinned host memory on a side stream."""

    def __init__(self, net: torch.nn.Module, device: torch.device):
        state = net.state_dict()  # detached tensors sharing the parameters' memory
        self._names, self._live = list(state), list(state.values())
        self._device_copy = [torch.empty_like(t) for t in self._live]
        self._host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in self._live]
        self._stream = torch.cuda.Stream(device)
        self._taken, self._arrived = torch.cuda.Event(), torch.cuda.Event()
        self.pending = False

    def start(self) -> bool:
        """Copy the weights as they are after the updates queued so far; False if the
        previous copy has not been taken yet."""
        if self.pending:
            return False
        torch._foreach_copy_(self._device_copy, self._live)  # on the compute stream, in order
        self._taken.record()
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(self._taken)
            for host, dev in zip(self._host, self._device_copy):
                host.copy_(dev, non_blocking=True)
            self._arrived.record(self._stream)
        self.pending = True
        return True

    def take(self) -> Optional[dict[str, np.ndarray]]:
        """The copied weights once they are on the host (once), else None; never waits."""
        if not self.pending or not self._arrived.query():
            return None
        self.pending = False
        return {name: host.numpy().astype(np.float32, copy=True) for name, host in zip(self._names, self._host)}


class DeviceDQN(TorchDQN):
    """Double DQN on CUDA with staged inputs, CUDA-graph replay and pipelined results."""

    depth = 2  # updates queued on the GPU before `collect` must wait

    def __init__(self, cfg: LearnerConfig, spec: NetSpec, device: torch.device, seed: int = 0):
        if device.type != "cuda":
            raise ValueError("DeviceDQN runs on CUDA; on the CPU use NumpyDQN (MLP) or TorchDQN (CNN)")
        self.precision = resolve_precision(cfg.precision, spec)
        super().__init__(cfg, spec, device, seed)
        self._staging: Optional[Staging] = None  # built for the first batch's observation dtype
        self._batch: Optional[Batch] = None
        self._out = torch.zeros(cfg.batch_size + 1, device=device)  # |TD error| ..., loss
        self._out_host = [torch.empty(cfg.batch_size + 1, pin_memory=True) for _ in range(self.depth)]
        self._out_events = [torch.cuda.Event() for _ in range(self.depth)]
        self._slot = 0
        self._pending: deque[int] = deque()
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._weights = WeightSnapshot(self.online, device)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return make_torch_optimizer(self._online_params, self.cfg, capturable=True)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":  # the autocast weight cache must be off inside a captured graph
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    # -- the update role -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, arrays: dict[str, np.ndarray]) -> None:
        if len(self._pending) >= self.depth:
            raise RuntimeError(f"{self.depth} updates in flight: collect() one first")
        if self._staging is None:
            self._staging = self._make_staging(arrays["obs"].dtype)
            self._batch = Batch(**self._staging.tensors)
        self._staging.upload(arrays)
        if not self.cfg.cuda_graphs:
            self._body()
        else:
            if self._graph is None:
                self._graph = self._capture()
            self._graph.replay()
        self._count_update()
        slot, self._slot = self._slot, (self._slot + 1) % self.depth
        self._out_host[slot].copy_(self._out, non_blocking=True)
        self._out_events[slot].record()
        self._pending.append(slot)

    def collect(self) -> tuple[np.ndarray, float]:
        if not self._pending:
            raise RuntimeError("no update in flight")
        slot = self._pending.popleft()
        self._out_events[slot].synchronize()
        out = self._out_host[slot].numpy()
        return out[:-1].copy(), float(out[-1])

    def step(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        while self._pending:
            self.collect()
        self.submit(arrays)
        return self.collect()

    def snapshot_params(self) -> bool:
        return self._weights.start()

    def take_params(self) -> Optional[dict[str, np.ndarray]]:
        return self._weights.take()

    def load(self, state: dict[str, np.ndarray]) -> None:
        while self._pending:
            self.collect()
        super().load(state)
        self._graph = None  # the optimizer's state tensors were replaced: capture again

    def _make_staging(self, obs_dtype: np.dtype) -> Staging:
        """Static device inputs for observations of `obs_dtype`: uint8 frames and bool grids
        as uint8 (the network casts and scales them), anything else as float32. Taken from
        the data, not the spec, so a CNN forced onto float observations keeps its floats."""
        staged = np.uint8 if np.dtype(obs_dtype) in (np.dtype(np.uint8), np.dtype(np.bool_)) else np.float32
        return Staging(batch_size=self.cfg.batch_size, obs_shape=self.spec.obs_shape, obs_dtype=staged,
                       device=self.device)

    # -- graph capture ---------------------------------------------------------------------
    def _body(self) -> None:
        td, loss = self._update(self._batch)
        self._out[:-1].copy_(td)
        self._out[-1].copy_(loss)

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Capture `_body` on the static batch. The warm-up steps and the capture run real
        updates, so the training state is saved first and restored in place afterwards:
        the first replay is then exactly the first update."""
        saved = self._save_training_tensors()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated by the graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body()
        self._restore_training_tensors(saved)
        return graph

    def _save_training_tensors(self) -> dict:
        with torch.no_grad():
            return {"online": [p.clone() for p in self._online_params],
                    "target": [p.clone() for p in self._target_params],
                    "optimizer": {i: {k: v.clone() for k, v in self.optimizer.state[p].items()}
                                  for i, p in enumerate(self._online_params) if self.optimizer.state.get(p)}}

    def _restore_training_tensors(self, saved: dict) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self._online_params, saved["online"])
            torch._foreach_copy_(self._target_params, saved["target"])
            for i, p in enumerate(self._online_params):
                before = saved["optimizer"].get(i, {})
                for key, value in self.optimizer.state[p].items():  # created by the warm-up if new
                    if key in before:
                        value.copy_(before[key])
                    else:
                        value.zero_()
