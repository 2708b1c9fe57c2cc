"""The Double DQN update in torch: the CPU learner for CNNs (any torso of
`common.netspec`), and the update body that the CUDA learner (`learner.device_dqn`)
captures in a CUDA graph.

Same interface and checkpoint keys as `learner.numpy_dqn.NumpyDQN`: `step` takes the
sampled numpy arrays and returns (|TD error|, loss) as numpy, `state`/`load` use
backend-neutral names (online/..., target/..., and the optimizer's: learner.optimizers).
`_update` is one whole update on device tensors with no host synchronisation (forward,
Double DQN target, Huber loss, backward, clipping, optimizer, Polyak), which is what makes it
capturable; counting updates and the periodic hard target copy happen around it.
"""
from __future__ import annotations

import contextlib
import copy
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from qfleet.common.config import LearnerConfig
from qfleet.common.netspec import NetSpec
from qfleet.common.networks import build_qnetwork, params_to_numpy
from qfleet.learner.optimizers import make_torch_optimizer, slot_names, step_key
from qfleet.learner.update import SyncUpdate


class Batch(NamedTuple):
    """One training batch as tensors on the learner's device."""

    obs: torch.Tensor        # (B, *obs_shape) float32, or uint8 (frames, bool grids)
    action: torch.Tensor     # (B,) integer
    reward: torch.Tensor     # (B,) n-step return
    next_obs: torch.Tensor   # (B, *obs_shape)
    discount: torch.Tensor   # (B,) gamma^n, or 0 at termination
    weight: torch.Tensor     # (B,) importance-sampling weights


def double_dqn_target(online: torch.nn.Module, target: torch.nn.Module, reward: torch.Tensor,
                      discount: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """reward + discount * Q_target(next_obs, argmax_a Q_online(next_obs, a))."""
    with torch.no_grad():
        best = online(next_obs).argmax(dim=1, keepdim=True)
        next_q = target(next_obs).gather(1, best).squeeze(1).float()
        return reward + discount * next_q


def to_batch(arrays: dict[str, np.ndarray], device: torch.device) -> Batch:
    """Tensors from sampled numpy arrays (copied: received arrays are read-only views).
    uint8 frames and bool grids travel as uint8 (a quarter of float32's bytes to the
    device): the network casts and scales them itself."""
    def t(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.array(x, copy=True)).to(device=device, dtype=dtype, non_blocking=True)
    obs_dtype = torch.uint8 if arrays["obs"].dtype in (np.uint8, np.bool_) else torch.float32
    return Batch(t(arrays["obs"], obs_dtype), t(arrays["action"], torch.int64),
                 t(arrays["reward"], torch.float32), t(arrays["next_obs"], obs_dtype),
                 t(arrays["discount"], torch.float32), t(arrays["weight"], torch.float32))


class TorchDQN(SyncUpdate):
    def __init__(self, cfg: LearnerConfig, spec: NetSpec, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        self.cfg, self.spec, self.device = cfg, spec, device
        self.online = build_qnetwork(spec).to(device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self._online_params = list(self.online.parameters())
        self._target_params = list(self.target.parameters())
        self.optimizer = self._make_optimizer()
        self.updates = 0

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return make_torch_optimizer(self._online_params, self.cfg)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # fp32 on the CPU; the CUDA learner may use bf16

    def step(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        td, loss = self.step_tensors(to_batch(arrays, self.device))
        return td.cpu().numpy(), loss

    def step_tensors(self, batch: Batch) -> tuple[torch.Tensor, float]:
        td, loss = self._update(batch)
        self._count_update()
        return td, float(loss)

    def _update(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One update without host synchronisation; returns (|TD error|, loss) as tensors."""
        with self._autocast():
            q_all = self.online(batch.obs)
            target = double_dqn_target(self.online, self.target, batch.reward, batch.discount, batch.next_obs)
        q = q_all.float().gather(1, batch.action.long().unsqueeze(1)).squeeze(1)
        loss = (batch.weight * F.huber_loss(q, target, reduction="none", delta=self.cfg.huber_delta)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self._online_params, self.cfg.grad_clip)
        self.optimizer.step()
        if self.cfg.target_update == "polyak":
            with torch.no_grad():
                torch._foreach_lerp_(self._target_params, self._online_params, self.cfg.tau)
        return (target - q).detach().abs(), loss.detach()

    def _count_update(self) -> None:
        """After each update: count it, and make the periodic hard target copy (in place, so
        a captured graph that reads the target parameters sees it)."""
        self.updates += 1
        if self.cfg.target_update == "hard" and self.updates % self.cfg.target_period == 0:
            with torch.no_grad():
                torch._foreach_copy_(self._target_params, self._online_params)

    def params(self) -> dict[str, np.ndarray]:
        return params_to_numpy(self.online)

    def state(self) -> dict[str, np.ndarray]:
        state = {f"online/{k}": v for k, v in params_to_numpy(self.online).items()}
        state.update({f"target/{k}": v for k, v in params_to_numpy(self.target).items()})
        names = dict(zip(range(len(list(self.online.parameters()))), dict(self.online.named_parameters())))
        opt = self.optimizer.state_dict()["state"]
        slots, step = slot_names(self.cfg), 0
        for index, name in names.items():
            s = opt.get(index)
            zeros = np.zeros(tuple(self.online.get_parameter(name).shape), np.float32)
            for key, prefix in slots.items():
                state[f"{prefix}/{name}"] = s[key].cpu().numpy() if s else zeros
            step = int(s["step"]) if s else 0
        state[step_key(self.cfg)] = np.int64(step)
        state["updates"] = np.int64(self.updates)
        return state

    def load(self, state: dict[str, np.ndarray]) -> None:
        for prefix, net in (("online", self.online), ("target", self.target)):
            net.load_state_dict({k: torch.from_numpy(np.asarray(state[f"{prefix}/{k}"]))
                                 for k in net.state_dict()})
        opt = self.optimizer.state_dict()
        step = int(state[step_key(self.cfg)])
        opt["state"] = {}  # a fresh optimizer when the checkpoint has taken no step yet
        if step:
            slots = slot_names(self.cfg)
            for index, (name, param) in enumerate(self.online.named_parameters()):
                opt["state"][index] = {"step": torch.tensor(float(step)), **{
                    key: torch.from_numpy(np.asarray(state[f"{prefix}/{name}"])).to(param.device)
                    for key, prefix in slots.items()}}
        self.optimizer.load_state_dict(opt)
        self.updates = int(state["updates"])
