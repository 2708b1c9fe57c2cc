"""`qfleet bench pixels`: what pixel observations cost an actor, and what they cost the replay.

Frames/s per actor (each the median of 3 runs over --seconds, per wall-clock second and per
CPU-second of the process, which a shared machine does not dilute): one process steps --envs
CartPole environments with random actions through the pixel observation wrapper (render,
crop, grey, downscale, stack), once with the stock renderer (gymnasium's pygame rgb_array frames, then
Pillow) and once with qfleet's fast renderer; and the renderers alone (frames of the
same states, no stepping). Also the frames/s an actor reaches including its CNN forward
pass (torch, one thread), which is what an actor really does per step.

Agreement: the fast renderer against the stock one on --agreement-states random states
(positions and angles over the whole episode range), after preprocessing: mean and
largest absolute difference in grey levels, and the share of pixels that differ.

Memory: bytes one transition takes in the replay table (obs and next obs as uint8 stacks).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from qfleet.common.config import PixelConfig
from qfleet.deploy.bench.report import machine, markdown_table, median, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--envs", type=int, default=32, help="environments per actor (one vector env)")
    p.add_argument("--seconds", type=float, default=6.0, help="duration of each measurement")
    p.add_argument("--size", type=int, default=84)
    p.add_argument("--frame-stack", type=int, default=4)
    p.add_argument("--agreement-states", type=int, default=256)
    p.add_argument("--json", help="write the results here")


REPEATS = 3  # each rate is the median of this many runs (the machine is shared and noisy)


def _rate(fn, frames_per_call: int, seconds: float) -> dict:
    """Frames per wall-clock second and per CPU-second of this process (the second does not
    drop when other jobs take the core: it is what one busy core would do)."""
    fn()  # warm-up (numba loads its compiled kernel, pygame opens its surfaces)
    wall, cpu = [], []
    for _ in range(REPEATS):
        done, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds / REPEATS:
            fn()
            done += frames_per_call
        wall.append(done / (time.perf_counter() - started))
        cpu.append(done / max(time.process_time() - cpu_started, 1e-9))
    return {"wall": median(wall), "cpu": median(cpu)}


def stepping_rate(cfg: PixelConfig, envs: int, seconds: float, policy=None) -> dict:
    """Environment steps (= frames) per second through the pixel wrapper."""
    from qfleet.common.envs import make_vec_env

    env = make_vec_env("CartPole-v1", envs, pixels=cfg)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    state = {"obs": obs}

    def step() -> None:
        if policy is not None:
            policy(state["obs"])
        state["obs"] = env.step(rng.integers(0, 2, envs))[0]
    try:
        return _rate(step, envs, seconds)
    finally:
        env.close()


def random_states(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-2.5, 2.5, n), rng.normal(0, 1, n), rng.uniform(-0.25, 0.25, n),
                     rng.normal(0, 1, n)]).astype(np.float64)


def renderers(cfg: PixelConfig, envs: int, agreement_states: int, seconds: float) -> dict:
    """Frames/s of the two renderers on the same `envs` states, and their agreement on
    `agreement_states` states."""
    from qfleet.common.cartpole_render import CARTPOLE_CROP, CartPoleRenderer
    from qfleet.common.pixels import crop_pixels, preprocess_frames

    crop = crop_pixels(CARTPOLE_CROP, 400, 600)
    fast = CartPoleRenderer(size=cfg.size, crop=crop)
    result: dict = {"agreement_states": agreement_states}
    for n, timed in ((envs, True), (agreement_states, False)):
        env = _stock_env(random_states(n))
        states = env.unwrapped.state.T.copy()
        try:
            stock_frames = preprocess_frames(env.render(), crop, cfg.size)
            if timed:
                result["stock_render_only"] = _rate(env.render, n, seconds)
                result["stock_render_and_preprocess"] = _rate(
                    lambda: preprocess_frames(env.render(), crop, cfg.size), n, seconds)
                result["fast_render"] = _rate(lambda: fast.render(states), n, seconds)
        finally:
            env.close()
    diff = np.abs(stock_frames.astype(np.int16) - fast.render(states))
    result.update({"agreement_mean_abs_diff": float(diff.mean()), "agreement_max_abs_diff": int(diff.max()),
                   "agreement_differing_pixels": float((diff > 0).mean())})
    return result


def _stock_env(states: np.ndarray):
    import gymnasium as gym

    env = gym.make_vec("CartPole-v1", num_envs=len(states[0]), vectorization_mode="vector_entry_point",
                       render_mode="rgb_array")
    env.reset(seed=0)
    env.unwrapped.state = states
    return env


def run(args: argparse.Namespace) -> int:
    import torch

    from qfleet.common.netspec import NetSpec
    from qfleet.common.policy import make_policy
    from qfleet.common.networks import build_qnetwork, params_to_numpy
    from qfleet.replay_server.storage import transition_dtype

    obs_shape = (args.frame_stack, args.size, args.size)
    result: dict = {"envs": args.envs, "obs_shape": list(obs_shape), "machine": machine()}
    rows = []

    def record(key: str, figure: str, rate: dict) -> None:
        result[key], result[key + "_per_cpu_s"] = rate["wall"], rate["cpu"]
        rows.append({"figure": figure, "frames/s": rate["wall"], "frames per CPU-second": rate["cpu"]})
        print(f"{figure}: {rate['wall']:,.0f} frames/s ({rate['cpu']:,.0f} per CPU-second)", flush=True)

    for renderer in ("stock", "fast"):
        cfg = PixelConfig(size=args.size, frame_stack=args.frame_stack, renderer=renderer)
        record(f"{renderer}_actor_frames_per_s", f"actor, {renderer} renderer (step + render + preprocess + stack)",
               stepping_rate(cfg, args.envs, args.seconds))
    torch.set_num_threads(1)
    spec = NetSpec("cnn", obs_shape, 2, (512,))
    policy = make_policy(spec)
    policy.load(params_to_numpy(build_qnetwork(spec)))
    record("fast_actor_frames_per_s_with_cnn_policy", "actor, fast renderer + CNN forward pass (1 thread)",
           stepping_rate(PixelConfig(size=args.size, frame_stack=args.frame_stack, renderer="fast"), args.envs,
                         args.seconds, policy))
    rend = renderers(PixelConfig(size=args.size, frame_stack=args.frame_stack), args.envs, args.agreement_states,
                     args.seconds)
    record("stock_render_only_fps", "stock renderer alone (pygame rgb_array)", rend.pop("stock_render_only"))
    record("stock_render_and_preprocess_fps", "stock renderer + preprocessing (Pillow)",
           rend.pop("stock_render_and_preprocess"))
    record("fast_render_fps", "fast renderer alone (preprocessed frames)", rend.pop("fast_render"))
    result.update(rend)
    per_item = transition_dtype(obs_shape, np.uint8).itemsize
    result["bytes_per_transition"] = per_item
    result["float32_bytes_per_transition"] = transition_dtype(obs_shape, np.float32).itemsize
    print(markdown_table(rows, ["figure", "frames/s", "frames per CPU-second"]))
    print(markdown_table([
        {"figure": "fast vs stock, mean |difference| (grey levels)", "value": rend["agreement_mean_abs_diff"]},
        {"figure": "fast vs stock, largest |difference| (grey levels)", "value": rend["agreement_max_abs_diff"]},
        {"figure": "fast vs stock, share of differing pixels", "value": rend["agreement_differing_pixels"]},
        {"figure": "replay bytes per transition (uint8 obs + next obs, action, reward, discount)",
         "value": per_item}], ["figure", "value"]))
    write_json(result, args.json)
    return 0
