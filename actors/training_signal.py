"""What the learner learns from, as opposed to what the game scores.

For most environments the two are the same. With the Atari preset (common/atari.py) the
actor clips each reward to its sign and ends the n-step return when a life is lost (no
bootstrap across a lost life, the episode itself goes on), while the episode returns it
reports stay the game's raw score over whole episodes.

    signal = TrainingSignal.for_env(env_spec)
    learn_reward, learn_terminal = signal(reward, terminated, valid, info)
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from qfleet.common.envs import EnvSpec


class TrainingSignal:
    def __init__(self, *, clip_rewards: bool, life_loss_terminal: bool):
        self.clip_rewards, self.life_loss_terminal = clip_rewards, life_loss_terminal
        self._lives: Optional[np.ndarray] = None  # lives after the previous step, per env
        self.lives_lost = 0                        # life losses marked terminal so far

    @classmethod
    def for_env(cls, env: EnvSpec) -> "TrainingSignal":
        atari = env.preset == "atari"
        return cls(clip_rewards=atari, life_loss_terminal=atari)

    def __call__(self, reward: np.ndarray, terminated: np.ndarray, valid: np.ndarray,
                 info: dict) -> tuple[np.ndarray, np.ndarray]:
        """(reward, terminated) for the n-step adder of one vector step."""
        if not (self.clip_rewards or self.life_loss_terminal):
            return reward, terminated  # the usual case: the game's own signal, untouched
        learn_reward = np.sign(reward) if self.clip_rewards else reward
        learn_terminal = terminated
        lives = info.get("lives") if self.life_loss_terminal else None
        if lives is not None:
            lives = np.asarray(lives)
            if self._lives is not None:
                # A reset step (invalid) starts with full lives: never a loss.
                lost = valid & ~terminated & (lives < self._lives)
                self.lives_lost += int(lost.sum())
                learn_terminal = terminated | lost
            self._lives = lives.copy()
        return learn_reward, learn_terminal
