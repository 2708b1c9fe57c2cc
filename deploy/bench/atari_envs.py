"""`qfleet bench atari-envs`: emulator frames per CPU-second of one actor process through
the Atari preset, with ale-py's native vector env (what actors use, common/atari.py)
against gymnasium's AtariPreprocessing + FrameStackObservation in a SyncVectorEnv with the
same settings (noop 30, frame skip 4 with max-pooling, 84x84 grey, stack 4, sticky 0.25).

CPU seconds (time.process_time) rather than wall-clock, so that other work on a shared
machine moves the figure less. gymnasium's AtariPreprocessing needs opencv, which qfleet
does not install (pip install opencv-python-headless); without it only the native env is
measured.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from qfleet.deploy.bench.report import machine, markdown_table, median, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", help="write the results here")
    p.add_argument("--game", default="ALE/Pong-v5")
    p.add_argument("--envs", type=int, default=16, help="environments per actor (deploy/configs/atari.yaml: 16)")
    p.add_argument("--steps", type=int, default=600, help="agent steps per measurement")
    p.add_argument("--repeats", type=int, default=3)


def _frames_per_cpu_s(env, num_actions: int, envs: int, steps: int) -> float:
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    for _ in range(20):
        env.step(rng.integers(0, num_actions, envs))
    start = time.process_time()
    for _ in range(steps):
        env.step(rng.integers(0, num_actions, envs))
    cpu = time.process_time() - start
    env.close()
    return envs * steps * 4 / cpu


def _gymnasium(game: str, envs: int):
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)

    def make():
        env = gym.make(game, frameskip=1, repeat_action_probability=0.25, full_action_space=False,
                       max_num_frames_per_episode=108_000)
        env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True,
                                              terminal_on_life_loss=False, scale_obs=False)
        return gym.wrappers.FrameStackObservation(env, 4)
    return gym.vector.SyncVectorEnv([make] * envs, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


def run(args: argparse.Namespace) -> int:
    from qfleet.common import atari
    from qfleet.common.envs import describe_env
    from qfleet.common.extras import available

    actions = describe_env(args.game).num_actions  # names a missing ale-py with its pip command
    makers = {"native": lambda: atari.make_atari_vec(args.game, args.envs, {})}
    if available("cv2"):
        makers["gymnasium"] = lambda: _gymnasium(args.game, args.envs)
    else:
        print("opencv is not installed: measuring the native env only (pip install opencv-python-headless)")
    runs: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(args.repeats):  # interleaved, so drifting load affects both alike
        for name, make in makers.items():
            runs[name].append(_frames_per_cpu_s(make(), actions, args.envs, args.steps))
    result = {"game": args.game, "envs": args.envs, "steps": args.steps,
              "frames_per_cpu_s": {k: median(v) for k, v in runs.items()}, "runs": runs, "machine": machine()}
    if "gymnasium" in runs:
        result["native_over_gymnasium"] = median(runs["native"]) / median(runs["gymnasium"])
    print(markdown_table([{"env": k, "emulator frames per CPU-second": median(v)} for k, v in runs.items()],
                         ["env", "emulator frames per CPU-second"]))
    write_json(result, args.json)
    return 0
