"""Moving sampled batches to the device: one packed buffer, one copy per batch.

A batch (the transition fields and the importance weight) is packed into one byte buffer,
each field at a 64-byte aligned offset. On the host that buffer lives in pinned (page-
locked) memory, so the copy to the GPU is a single asynchronous DMA that does not block
the Python thread; on the device, typed views of one static buffer are the inputs of the
captured update, so every batch lands at the same addresses. Two host buffers alternate:
the next batch is packed into one while the copy out of the other may still be running
(an event per buffer says when it may be overwritten).

On the CPU the same code runs without pinning, events or asynchrony (tests use that).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from qfleet.common.messages import transition_layout

ALIGN = 64
TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32,
                np.dtype(np.int32): torch.int32}


class Field(NamedTuple):
    name: str
    dtype: np.dtype
    shape: tuple   # per batch, including the batch dimension
    offset: int    # bytes from the start of the buffer

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def batch_layout(*, batch_size: int, obs_shape: tuple, obs_dtype) -> tuple[list[Field], int]:
    """The fields of one training batch and the total size of the packed buffer."""
    layout = {**transition_layout(obs_shape, obs_dtype), "weight": (np.dtype(np.float32), ())}
    fields, offset = [], 0
    for name, (dtype, shape) in layout.items():
        field = Field(name, np.dtype(dtype), (batch_size, *shape), offset)
        fields.append(field)
        offset += -(-field.nbytes // ALIGN) * ALIGN
    return fields, offset


class Staging:
    """Host -> device transfer of fixed-size batches into static device tensors (`tensors`)."""

    def __init__(self, *, batch_size: int, obs_shape: tuple, obs_dtype, device: torch.device, buffers: int = 2):
        self.fields, nbytes = batch_layout(batch_size=batch_size, obs_shape=tuple(obs_shape), obs_dtype=obs_dtype)
        self.batch_size = batch_size
        cuda = device.type == "cuda"
        self._host = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=cuda) for _ in range(buffers)]
        self._host_views = [{f.name: h.numpy()[f.offset:f.offset + f.nbytes].view(f.dtype).reshape(f.shape)
                             for f in self.fields} for h in self._host]
        self._events: list[Optional[torch.cuda.Event]] = [torch.cuda.Event() if cuda else None for _ in self._host]
        self._device_buffer = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        self.tensors = {f.name: self._device_buffer[f.offset:f.offset + f.nbytes].view(TORCH_DTYPES[f.dtype])
                        .view(f.shape) for f in self.fields}
        self._next = 0
        self.nbytes = nbytes

    def upload(self, arrays: dict[str, np.ndarray]) -> None:
        """Pack `arrays` into the next host buffer and copy it to the device tensors (queued
        on the current stream, so it lands before any work queued after it)."""
        n = len(arrays["action"])
        if n != self.batch_size:
            raise ValueError(f"this learner was built for batches of {self.batch_size}, got {n}")
        i, self._next = self._next, (self._next + 1) % len(self._host)
        event = self._events[i]
        if event is not None:
            event.synchronize()  # the copy that last read this buffer has finished
        for name, view in self._host_views[i].items():
            np.copyto(view, arrays[name], casting="same_kind")
        self._device_buffer.copy_(self._host[i], non_blocking=event is not None)
        if event is not None:
            event.record()
