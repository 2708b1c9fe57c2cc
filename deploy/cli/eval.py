"""`qfleet eval CHECKPOINT`: greedy (or epsilon-greedy) evaluation of a trained agent,
optionally as a GIF.

Also home of the `--gif` options and the GIF step that `qfleet train` and `qfleet baseline`
run after training.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from qfleet.common.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import numpy as np

    from qfleet.common.envs import EnvSpec


def add_gif_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gif-episodes", type=int, default=3, metavar="N",
                   help="episodes shown in the GIF, one after another (default 3)")
    p.add_argument("--gif-max-frames", type=int, default=600, metavar="N",
                   help="frames at most; longer episodes keep every k-th frame (default 600)")
    p.add_argument("--gif-width", type=int, default=320, metavar="PIXELS",
                   help="frames are downscaled to this width (default 320)")


def write_gif(policy: Callable[[np.ndarray], np.ndarray], env: EnvSpec, path: str | Path,
              args: argparse.Namespace, seed: int) -> str:
    """Record the GIF that the --gif options describe; returns a line saying what was written."""
    from qfleet.learner.recording import record_gif

    if min(args.gif_episodes, args.gif_max_frames, args.gif_width) < 1:
        raise ConfigError("--gif-episodes, --gif-max-frames and --gif-width must be at least 1")
    info = record_gif(policy, env, path, episodes=args.gif_episodes, seed=seed, max_frames=args.gif_max_frames,
                      width=args.gif_width)
    every = "every frame" if info.stride == 1 else f"1 frame in {info.stride}"
    returns = ", ".join(f"{r:g}" for r in info.result.returns)
    return (f"gif: {info.path}: {len(info.result.returns)} episode(s) (returns {returns}), {info.frames} frames of "
            f"{info.size[0]}x{info.size[1]}, {every}, {info.frame_ms} ms each"
            + (" (stopped at --gif-max-frames)" if info.truncated else ""))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.npz, or the run directory holding it")
    p.add_argument("--episodes", type=int, default=100, help="episodes to evaluate (default 100)")
    p.add_argument("--seed", type=int, default=0, help="episode i starts from seed S+i (default 0)")
    p.add_argument("--epsilon", type=float, default=0.0, metavar="E",
                   help="take a random action with probability E at each step, as papers that score "
                        "epsilon-greedy do (default 0: greedy)")
    p.add_argument("--weights", choices=("best", "last"), default="best",
                   help="best: the weights that scored best in training's evaluations (default); "
                        "last: the online network as training left it")
    p.add_argument("--gif", metavar="PATH", help="also record episodes as an animated GIF at PATH")
    add_gif_options(p)


def run(args: argparse.Namespace) -> int:
    from qfleet.common.envs import describe_env
    from qfleet.learner.checkpoint import check_env_fits, load_policy
    from qfleet.learner.evaluation import evaluate, greedy_policy

    if args.episodes < 1:
        raise ConfigError(f"--episodes {args.episodes}: evaluate at least 1 episode")
    if not 0.0 <= args.epsilon <= 1.0:
        raise ConfigError(f"--epsilon {args.epsilon}: a probability from 0 (greedy) to 1 (random actions)")
    saved = load_policy(args.checkpoint, args.weights)
    try:
        policy = greedy_policy(saved.spec, saved.params)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {args.checkpoint}: {exc}") from None
    env = describe_env(saved.env, pixels=saved.pixels, env_kwargs=saved.env_kwargs, preset=saved.env_preset)
    check_env_fits(saved.spec, env.obs_shape, args.checkpoint)  # the network comes from the checkpoint's spec
    trained = saved.meta.get("policy_eval")
    if args.weights == "last":
        which = f" (the online network after {int(saved.meta.get('updates', 0)):,} updates)"
    elif trained:
        which = f" (scored {trained['mean']:.1f} over {trained['episodes']} episodes in training, v{trained['version']})"
    else:
        which = " (never evaluated in training: the final weights)"
    print(f"qfleet eval: {env.env_id}, {saved.spec.describe()}, weights from {args.checkpoint}{which}", flush=True)
    result = evaluate(policy, env, args.episodes, args.seed, epsilon=args.epsilon)
    how = f"epsilon-greedy (epsilon {args.epsilon:g})" if args.epsilon else "greedy"
    print(f"{how} return over {args.episodes} episode(s): mean {result.mean:.2f}, std {result.std:.2f}, "
          f"min {result.min:g}, max {result.max:g} (mean length {result.lengths.mean():.1f} steps)")
    if env.reward_threshold is not None:
        verdict = "reaches" if result.mean >= env.reward_threshold else "is below"
        print(f"the mean {verdict} the environment's reward threshold {env.reward_threshold:g}")
    if args.gif:
        print(write_gif(policy, env, args.gif, args, args.seed))
    return 0
