"""Pixel observations: the preprocessing (shapes, dtypes, Pillow's exact box filter), frame
stacking across NEXT_STEP autoresets on real CartPole vector envs, and the fast renderer
against gymnasium's own frames."""
import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from qfleet.common.cartpole_render import CARTPOLE_CROP, CartPoleRenderer
from qfleet.common.config import PixelConfig
from qfleet.common.envs import describe_env, make_vec_env
from qfleet.common.errors import ConfigError, EnvironmentSpecError
from qfleet.common.pixels import FrameStack, box_resize, crop_pixels, preprocess_frames

CROP = crop_pixels(CARTPOLE_CROP, 400, 600)


@pytest.mark.parametrize("shape,size", [((168, 600), 84), ((400, 600), 84), ((168, 600), 64),
                                        ((168, 600), 256), ((37, 41), 36)])
def test_box_taps_reproduce_pillow_exactly(shape, size):
    gray = np.random.default_rng(sum(shape)).integers(0, 256, shape).astype(np.uint8)
    expected = np.asarray(Image.fromarray(gray).resize((size, size), Image.BOX))
    np.testing.assert_array_equal(box_resize(gray, size), expected)


def cartpole_frames(states: np.ndarray) -> list[np.ndarray]:
    """gymnasium's own rgb_array frames of (N, 4) CartPole states."""
    env = gym.make_vec("CartPole-v1", num_envs=len(states), vectorization_mode="vector_entry_point",
                       render_mode="rgb_array")
    env.reset(seed=0)
    env.unwrapped.state = states.T.astype(np.float64)
    try:
        return env.render()
    finally:
        env.close()


def random_states(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-2.5, 2.5, n), rng.normal(size=n), rng.uniform(-0.25, 0.25, n),
                     rng.normal(size=n)], axis=1)


def test_preprocessing_shapes_dtypes_and_values():
    frames = cartpole_frames(random_states(3, 0))
    assert frames[0].shape == (400, 600, 3) and frames[0].dtype == np.uint8
    out = preprocess_frames(frames, CROP, 84)
    assert out.shape == (3, 84, 84) and out.dtype == np.uint8
    for frame, small in zip(frames, out):  # crop -> Pillow's luma -> box filter
        gray = np.asarray(Image.fromarray(frame[CROP.top:CROP.bottom]).convert("L"))
        np.testing.assert_array_equal(small, box_resize(gray, 84))
    assert out.min() == 0 and out.max() == 255  # the cart and track are black, the sky white
    assert CROP == (164, 332, 0, 600)


def test_crop_errors():
    with pytest.raises(ConfigError, match="4 fractions"):
        crop_pixels((0.1, 0.9), 400, 600)
    with pytest.raises(ConfigError, match="keeps nothing"):
        crop_pixels((0.5, 0.5, 0.0, 1.0), 400, 600)
    with pytest.raises(EnvironmentSpecError, match="draws CartPole only"):
        describe_env("Acrobot-v1", PixelConfig(renderer="fast"))


def test_frame_stack_shifts_and_restarts():
    stack = FrameStack(num_envs=2, k=3, size=2)
    first = np.stack([np.full((2, 2), 1), np.full((2, 2), 2)]).astype(np.uint8)
    obs = stack.reset(first)
    assert obs.shape == (2, 3, 2, 2) and obs.dtype == np.uint8
    assert (obs[0] == 1).all() and (obs[1] == 2).all()
    obs = stack.push(first + 10, np.array([False, False]))
    assert [int(f[0, 0]) for f in obs[0]] == [1, 1, 11]
    obs = stack.push(first + 20, np.array([False, True]))  # env 1 starts a new episode
    assert [int(f[0, 0]) for f in obs[0]] == [1, 11, 21]
    assert [int(f[0, 0]) for f in obs[1]] == [22, 22, 22]


@pytest.mark.parametrize("renderer,num_envs", [("fast", 16), ("stock", 3)])
def test_stacks_follow_episodes_across_next_step_autoresets(renderer, num_envs):
    cfg = PixelConfig(renderer=renderer)
    env = make_vec_env("CartPole-v1", num_envs, pixels=cfg)
    assert env.single_observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    reference = CartPoleRenderer(size=84, crop=CROP)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (num_envs, 4, 84, 84) and obs.dtype == np.uint8
    assert (obs == obs[:, :1]).all()  # the first frame fills every slot
    ended = np.zeros(num_envs, bool)
    resets_seen = 0
    try:
        for step in range(60):
            actions = np.full(num_envs, step % 2 if step < 4 else 1)  # push right: episodes end in ~10 steps
            new, _, terminated, truncated, _ = env.step(actions)
            if renderer == "fast":  # the wrapper draws exactly what the renderer draws from the states
                np.testing.assert_array_equal(new[:, -1], reference.render(env.unwrapped.state.T))
            for i in range(num_envs):
                if ended[i]:  # NEXT_STEP reset step: a new episode, a new stack of its first frame
                    assert (new[i] == new[i, -1]).all(), f"env {i} mixes two episodes at step {step}"
                    assert not (new[i, -1] == obs[i, -1]).all()
                    resets_seen += 1
                else:
                    np.testing.assert_array_equal(new[i, :-1], obs[i, 1:])
            ended = terminated | truncated
            obs = new
    finally:
        env.close()
    assert resets_seen >= num_envs  # every environment went through at least one reset


def test_fast_renderer_matches_the_stock_renderer():
    states = random_states(96, 1)
    stock = preprocess_frames(cartpole_frames(states), CROP, 84)
    fast = CartPoleRenderer(size=84, crop=CROP).render(states)
    assert fast.shape == stock.shape and fast.dtype == np.uint8
    diff = np.abs(stock.astype(int) - fast)
    # The filled shapes are drawn pixel for pixel as gfxdraw does; only the anti-aliased
    # outline along the slanted pole edges differs (a few grey levels, rarely more).
    assert diff.mean() < 0.1
    assert (diff > 0).mean() < 0.03
    assert diff.max() <= 64
    # ... while frames of other states differ far more: the comparison can tell scenes apart.
    shuffled = np.abs(stock.astype(int) - np.roll(fast, 1, axis=0))
    assert shuffled.mean() > 20 * diff.mean()


def test_describe_env_with_pixels():
    spec = describe_env("CartPole-v1", PixelConfig(size=64, frame_stack=2))
    assert spec.obs_shape == (2, 64, 64) and spec.obs_dtype == np.uint8 and spec.num_actions == 2
    assert spec.pixels == PixelConfig(size=64, frame_stack=2)
    assert describe_env("CartPole-v1").pixels is None


def test_train_refuses_pixel_sizes_that_cannot_work():
    import argparse

    from qfleet.deploy.cli.train import add_arguments, load_run_config
    from qfleet.deploy.plan import make_plan

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def plan(*argv):
        return make_plan(load_run_config(parser.parse_args(list(argv))))

    env = plan("--config", "deploy/configs/cartpole-pixels.yaml").env
    assert env.pixels is not None and env.obs_shape == (4, 84, 84) and env.obs_dtype == np.uint8
    with pytest.raises(ConfigError, match=r"a sample reply would be 2048 transitions x 56,460 bytes = 110 MiB"):
        plan("--obs", "pixels", "--set", "learner.batches_per_request=8")
    with pytest.raises(ConfigError, match=r"replay.capacity = 10,000,000 transitions of 56,460 bytes needs 525.8 GiB"):
        plan("--obs", "pixels", "--set", "replay.capacity=10000000", "--set", "replay.frames=false")
    # A frame at a time (the default) a transition takes ~7,400 bytes.
    with pytest.raises(ConfigError, match=r"replay.capacity = 100,000,000 transitions of 7,399 bytes needs 689.1 GiB"):
        plan("--obs", "pixels", "--set", "replay.capacity=100000000")
