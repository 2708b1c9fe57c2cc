"""The Atari preset: the standard DQN preprocessing for ALE/<Game>-v5 ids (run.preset: auto).

Each step of the agent is `frameskip` emulator frames; ale-py's native vector environment
(`ale_py.vector_env.AtariVectorEnv`) plays them, max-pools the last two, turns them grey,
resizes to 84x84 and stacks the newest 4 in C++ threads, so an actor gets (4, 84, 84) uint8
stacks without any Python per frame. What the preset sets, field by field, and why:

- `noop_max = 30`: each episode starts with 0-30 no-op actions (random), so episodes of a
  deterministic game do not all start alike (Mnih et al. 2015).
- `frameskip = 4`, `maxpool = True`: the agent acts every 4th frame; the observation is the
  pixel-wise max of the last two frames, which removes the flicker of sprites drawn on
  alternate frames.
- `size = 84`, grey: frames are luminance only, resized to 84x84 (the Nature DQN input).
- `stack = 4`: the observation is the last 4 such frames, oldest first, so velocities are
  visible; the Nature CNN's input is (4, 84, 84).
- `repeat_action_probability = 0.25`: sticky actions exactly as ALE v5 defines them (each
  emulator frame repeats the previous action with this probability), the stochasticity
  Machado et al. (2018) recommend; `run.env_kwargs` may set it (0.0 for the 2015 protocol).
- `full_action_space = False`: the game's minimal action set (6 for Pong).
- `max_num_frames_per_episode = 108_000`: 30 minutes of play at 60 Hz caps an episode
  (counted in emulator frames, i.e. 27,000 agent steps).
- `use_fire_reset = False`: no game-specific FIRE after a reset; the agent learns to press it.
- Learning signal (applied by the actors, `actors/training_signal.py`, never to scores):
  rewards are clipped to their sign for the n-step returns, and losing a life ends the
  n-step return (no bootstrap across it) while the episode itself goes on.
- Evaluation plays the same preset with raw rewards and whole episodes (all lives): the
  scores in metrics, the status line and the summary are the game's own.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from qfleet.common.errors import EnvironmentSpecError

# The preset's settings for AtariVectorEnv; keys that run.env_kwargs may override.
PRESET: dict[str, Any] = {
    "noop_max": 30,
    "frameskip": 4,
    "maxpool": True,
    "img_height": 84,
    "img_width": 84,
    "grayscale": True,
    "stack_num": 4,
    "repeat_action_probability": 0.25,
    "full_action_space": False,
    "max_num_frames_per_episode": 108_000,
    "use_fire_reset": False,
}
# Always so: the actors clip rewards and end n-step returns at a life loss themselves, so
# that evaluation and reported scores keep the game's raw rewards and whole episodes.
FIXED = {"reward_clipping": False, "episodic_life": False, "life_loss_info": False, "autoreset_mode": "NextStep"}


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def game_of(env_id: str) -> str:
    """ale-py's game name: ALE/SpaceInvaders-v5 -> space_invaders."""
    name = env_id.split("/", 1)[1].rsplit("-v", 1)[0]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def preset_kwargs(env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The AtariVectorEnv settings: the preset, with run.env_kwargs over it (a key that is
    not one of the preset's is refused: the native environment would not take it)."""
    unknown = sorted(set(env_kwargs) - set(PRESET))
    if unknown:
        raise ValueError(f"run.env_kwargs {unknown} are not settings of the Atari preset; it takes "
                         f"{', '.join(sorted(PRESET))} (or set run.preset: none to use gymnasium's ALE env)")
    return {**PRESET, **env_kwargs, **FIXED}


def obs_shape(env_kwargs: Mapping[str, Any]) -> tuple:
    kw = preset_kwargs(env_kwargs)
    return (kw["stack_num"], kw["img_height"], kw["img_width"])


def make_atari_vec(env_id: str, num_envs: int, env_kwargs: Mapping[str, Any], num_threads: int = 1):
    """`num_envs` copies as one native vector env (one thread by default: an actor is one
    process on one core)."""
    from ale_py.vector_env import AtariVectorEnv

    return AtariVectorEnv(game_of(env_id), num_envs, num_threads=num_threads, **preset_kwargs(env_kwargs))


SCREEN = {"grayscale": False, "img_height": 210, "img_width": 160, "stack_num": 1}  # the 2600's own frame


class RecordedAtariVec:
    """The preset's vector env for the policy, plus a twin that plays the same games in
    colour at the console's 210x160, for recording (`qfleet eval --gif`). Both are reset
    with the same seed and given the same actions; the emulator, its no-op starts and
    sticky actions draw the same randomness whatever the observation type, so the twin
    shows exactly the frames the policy saw (max-pooled like them). A divergence (rewards
    or episode ends that differ) is an error, never a silently wrong GIF."""

    def __init__(self, env_id: str, num_envs: int, env_kwargs: Mapping[str, Any]):
        self.env = make_atari_vec(env_id, num_envs, env_kwargs)
        self.twin = make_atari_vec(env_id, num_envs, {**env_kwargs, **SCREEN})
        self.num_envs = num_envs
        self._screens = None

    def reset(self, seed=None):
        obs, info = self.env.reset(seed=seed)
        screens, _ = self.twin.reset(seed=seed)
        self._screens = screens[:, -1]
        return obs, info

    def step(self, actions):
        out = self.env.step(actions)
        screens, reward, terminated, truncated, _ = self.twin.step(actions)
        if not (np.array_equal(out[1], reward) and np.array_equal(out[2], terminated)
                and np.array_equal(out[3], truncated)):
            raise EnvironmentSpecError("the colour copy recording this Atari game diverged from the one the policy "
                                       "plays; record without --gif, or with run.preset: none")
        self._screens = screens[:, -1]
        return out

    def render(self) -> list:
        return list(self._screens)

    def close(self) -> None:
        self.env.close()
        self.twin.close()
