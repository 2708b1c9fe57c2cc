"""The actor loop: vectorized environments, epsilon-greedy policy, n-step adder,
batched pushes with backpressure, weights applied between steps, progress reports.

The policy is numpy for MLPs (the actor never imports torch) and torch on the CPU for
CNNs; with pixel observations the environments are wrapped to give stacked frames."""
from __future__ import annotations

import os
import time
from typing import Callable, Iterator, Optional

import numpy as np
import zmq

from qfleet.actors.exploration import EpsilonSchedule
from qfleet.actors.frames import FrameEncoder, frame_messages
from qfleet.actors.nstep import NStepAdder
from qfleet.actors.training_signal import TrainingSignal
from qfleet.actors.weights import WeightSubscriber
from qfleet.common import messages as m
from qfleet.common.config import ActorConfig
from qfleet.common.envs import EnvSpec, make_vec_env
from qfleet.common.errors import QfleetTimeout
from qfleet.common.netspec import NetSpec, epsilon_greedy
from qfleet.common.policy import make_policy
from qfleet.common.telemetry import Telemetry
from qfleet.replay_server.client import ReplayClient

FINAL_FLUSH_S = 1.0  # at stop, how long pending transitions may wait for the replay server


class Actor:
    def __init__(self, *, cfg: ActorConfig, index: int, num_actors: int, env: EnvSpec, net: NetSpec,
                 replay: ReplayClient, weights: WeightSubscriber, max_insert_batch: int, seed: int = 0,
                 telemetry: Optional[Telemetry] = None, sent_file: Optional[str] = None, frames: bool = False):
        self.cfg, self.index = cfg, index
        self.env_spec, self.replay, self.weights = env, replay, weights
        self.max_insert_batch = max_insert_batch
        self.seed = seed
        self.telemetry = telemetry or Telemetry(None, "actor", index)
        self.policy = make_policy(net)
        self.schedule = EpsilonSchedule(cfg, index, num_actors)
        # With frames (replay.frames), observations travel as frame numbers: the adder
        # carries those, the encoder queues each new frame once (actors/frames.py).
        self.encoder = FrameEncoder(cfg.envs_per_actor, env.obs_shape) if frames else None
        self.stream = int.from_bytes(os.urandom(7), "little")  # this process's frame numbering
        self.adder = NStepAdder(num_envs=cfg.envs_per_actor, n=cfg.n_step, gamma=cfg.gamma,
                                obs_shape=() if frames else env.obs_shape, obs_dtype=np.int64 if frames else env.obs_dtype)
        self.rng = np.random.default_rng([seed, index])
        self.version = -1          # weights version in use (-1: none yet, acting uniformly)
        self.env_steps = 0         # valid environment steps (transitions of the MDP)
        self.sent = 0              # transitions handed to the replay server
        self.seq = 0               # insert messages sent
        self.blocked_s = 0.0       # time spent waiting on backpressure
        self._pending: list[dict] = []
        self._returns: list[float] = []
        self._lengths: list[int] = []
        self._lags_ms: list[float] = []
        self._versions_applied = 0
        self._poller: Optional[zmq.Poller] = None
        # The count of transitions handed (or being handed) to ZeroMQ, in a file the launcher
        # can read even after a SIGKILL: a killed actor lost this minus what was stored.
        self._sent_file = None if sent_file is None else np.memmap(sent_file, np.int64, "w+", shape=(1,))

    def run(self, should_stop: Callable[[], bool], max_env_steps: int = 0) -> dict:
        cfg = self.cfg
        envs = make_vec_env(self.env_spec, cfg.envs_per_actor)
        signal = TrainingSignal.for_env(self.env_spec)  # clipped rewards, life loss (Atari preset)
        obs, _ = envs.reset(seed=self.seed * 10_007 + self.index * 101)
        stored_obs = self._encode(obs)
        done_prev = np.zeros(cfg.envs_per_actor, bool)
        ep_return = np.zeros(cfg.envs_per_actor)
        ep_length = np.zeros(cfg.envs_per_actor, np.int64)
        steps = 0
        started = last_report = time.monotonic()
        try:
            while not should_stop() and not (max_env_steps and self.env_steps >= max_env_steps):
                self._apply_weights()
                actions = self._act(obs)
                next_obs, reward, terminated, truncated, info = envs.step(actions)
                valid = ~done_prev  # NEXT_STEP autoreset: the step after an episode end only resets
                learn_reward, learn_terminal = signal(reward, terminated, valid, info)
                stored_next = self._encode(next_obs)
                self._queue(self.adder.add(stored_obs, actions, learn_reward, stored_next, learn_terminal, truncated,
                                           valid))
                ep_return += reward * valid
                ep_length += valid
                ended = valid & (terminated | truncated)
                if ended.any():
                    self._returns += ep_return[ended].tolist()
                    self._lengths += ep_length[ended].tolist()
                    ep_return[ended] = 0.0
                    ep_length[ended] = 0
                n_valid = int(valid.sum())
                self.env_steps += n_valid
                self.schedule.advance(n_valid, int(ended.sum()))
                done_prev = terminated | truncated
                obs, stored_obs = next_obs, stored_next
                steps += 1
                if steps % cfg.flush_every_steps == 0:
                    self._flush(should_stop)
                now = time.monotonic()
                if now - last_report >= cfg.report_every_s:
                    self._report(now - started)
                    last_report = now
            final_deadline = time.monotonic() + FINAL_FLUSH_S
            self._flush(lambda: time.monotonic() > final_deadline)  # hand over what is pending
        finally:
            envs.close()
        self._report(time.monotonic() - started)
        return {"env_steps": self.env_steps, "sent": self.sent, "version": self.version}

    def _act(self, obs: np.ndarray) -> np.ndarray:
        if not self.policy.loaded:
            return self.rng.integers(0, self.env_spec.num_actions, len(obs), dtype=np.int32)
        return epsilon_greedy(self.policy(obs), self.schedule.epsilons(), self.rng)

    def _apply_weights(self) -> None:
        weights = self.weights.poll()
        if weights is None:
            return
        self.policy.load(weights.params)
        self.version = weights.version
        self._versions_applied += 1
        self._lags_ms.append((time.time() - weights.published_at) * 1e3)  # publish -> first use

    def _encode(self, obs: np.ndarray) -> np.ndarray:
        """What the adder stores for an observation: itself, or its newest frame's number."""
        return obs if self.encoder is None else self.encoder.encode(obs)

    def _queue(self, out: dict[str, np.ndarray]) -> None:
        if self.encoder is not None:  # every step has new frames, with or without transitions
            first, frames, links = self.encoder.take()
            self._pending.append({"frame_first": first, "frames": frames, "frame_prev": links, **out})
        elif len(out["action"]):
            self._pending.append(out)

    def _messages(self, pending: list[dict]) -> Iterator[m.InsertBatch | m.InsertFrames]:
        """Insert messages of at most max_insert_batch transitions (seq filled in at send)."""
        if self.encoder is not None:
            yield from frame_messages(pending, actor_id=self.index, version=self.version, stream=self.stream,
                                      max_transitions=self.max_insert_batch, max_frames=self.max_insert_batch)
            return
        batch = {k: np.concatenate([p[k] for p in pending]) for k in m.TRANSITION_FIELDS}
        for start in range(0, len(batch["action"]), self.max_insert_batch):
            chunk = {k: v[start:start + self.max_insert_batch] for k, v in batch.items()}
            yield m.InsertBatch(self.index, 0, self.version, **chunk)

    def _flush(self, should_stop: Callable[[], bool]) -> None:
        """Push pending transitions; while the replay server applies backpressure, keep
        taking new weights and honour stop requests (nothing is dropped meanwhile)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for msg in self._messages(pending):
            msg = msg._replace(seq=self.seq)
            # Counted before the send: a SIGKILL between the two then reads as one message
            # lost, never as transitions stored that were not counted as sent.
            self._write_sent(self.sent + len(msg.action))
            while True:
                try:
                    self.replay.insert(msg, timeout=0)
                    break
                except QfleetTimeout:
                    # Backpressure: wait until the replay server takes more, or new weights
                    # arrive (applied at once, so a blocked actor does not lag behind).
                    waited = time.monotonic()
                    self._blocked_poller().poll(int(self.cfg.send_timeout_s * 1000))
                    self.blocked_s += time.monotonic() - waited
                    self._apply_weights()
                    if should_stop():
                        self._write_sent(self.sent)  # this message was never handed over
                        return
            self.seq += 1
            self.sent += len(msg.action)

    def _write_sent(self, count: int) -> None:
        if self._sent_file is not None:
            self._sent_file[0] = count

    def _blocked_poller(self) -> zmq.Poller:
        if self._poller is None:
            self._poller = zmq.Poller()
            self._poller.register(self.replay.insert_socket, zmq.POLLOUT)
            for sock in self.weights.sockets:
                self._poller.register(sock, zmq.POLLIN)
        return self._poller

    def _report(self, elapsed: float) -> None:
        values = {"env_steps": self.env_steps, "transitions_sent": self.sent, "insert_messages": self.seq,
                  "weights_version": self.version, "versions_applied": self._versions_applied,
                  "env_steps_per_s": self.env_steps / max(elapsed, 1e-9), "blocked_s": self.blocked_s,
                  "epsilon_mean": float(self.schedule.epsilons().mean()), "weights_rejected":
                  sum(self.weights.rejected.values()), "schedule_env_steps": self.schedule.env_steps,
                  "schedule_episodes": self.schedule.episodes, "weights_epoch": self.weights.epoch}
        self.telemetry.report(values, np.array(self._returns, np.float32), np.array(self._lengths, np.int32),
                              np.array(self._lags_ms, np.float32))
        self._returns.clear()
        self._lengths.clear()
        self._lags_ms.clear()
