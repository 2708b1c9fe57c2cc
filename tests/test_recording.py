"""GIF recording: the frames of the recorded episodes, at real-time speed, readable by Pillow."""
import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from qfleet.common.envs import describe_env
from qfleet.learner.recording import FrameRecorder, frame_ms, frame_stride, record_gif


def gif_frames(path) -> tuple[int, int, tuple]:
    """(frames, total duration in ms, size) as a viewer would read them."""
    with Image.open(path) as im:
        assert im.format == "GIF" and im.info.get("loop") == 0  # plays forever
        total = 0
        for i in range(im.n_frames):
            im.seek(i)
            total += im.info["duration"]
        return im.n_frames, total, im.size


def lean_left(obs):
    """A fixed policy: push left unless the pole leans right fast (short, varied episodes)."""
    return np.stack([np.zeros(len(obs)), obs[:, 3] - 0.5], axis=1)


def episode_lengths(env_id, policy, seeds):
    lengths = []
    for seed in seeds:
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        done, n = False, 0
        while not done:
            obs, _, terminated, truncated, _ = env.step(int(policy(obs[None])[0].argmax()))
            done, n = terminated or truncated, n + 1
        lengths.append(n)
    return lengths


@pytest.mark.parametrize("episodes,seed", [(1, 0), (3, 11)])
def test_gif_holds_every_frame_of_the_recorded_episodes(tmp_path, episodes, seed):
    spec = describe_env("CartPole-v1")
    info = record_gif(lean_left, spec, tmp_path / "a.gif", episodes=episodes, seed=seed, max_frames=5000, width=160)
    lengths = episode_lengths("CartPole-v1", lean_left, range(seed, seed + episodes))
    expected = sum(n + 1 for n in lengths)  # the reset frame and one per step
    assert info.result.lengths.tolist() == lengths and info.stride == 1 and info.frames == expected
    frames, total_ms, size = gif_frames(tmp_path / "a.gif")
    # Pillow merges identical neighbouring frames and adds up their durations.
    assert frames <= expected and total_ms == expected * 20  # CartPole renders at 50 fps
    assert size == (160, 107)


def test_long_episodes_keep_every_kth_frame_and_play_in_real_time(tmp_path):
    spec = describe_env("CartPole-v1")  # 500-step episodes at most, 50 fps
    info = record_gif(lean_left, spec, tmp_path / "a.gif", episodes=2, seed=3, max_frames=200, width=80)
    assert info.stride == 6  # 2 x 501 frames into 200
    assert info.frames == sum(-(-(n + 1) // 6) for n in info.result.lengths) and info.frame_ms == 120
    assert gif_frames(tmp_path / "a.gif")[1] == info.frames * 120


@pytest.mark.parametrize("fps,stride,ms", [(50, 1, 20), (15, 1, 70), (30, 2, 70), (None, 1, 30), (200, 1, 20)])
def test_frame_time_is_real_time_in_gif_units(fps, stride, ms):
    assert frame_ms(fps, stride) == ms


def test_stride_fits_full_episodes_into_the_frame_cap():
    assert frame_stride(3, 500, 600) == 3 and frame_stride(1, 200, 600) == 1 and frame_stride(5, None, 10) == 1


def test_tiny_float_frames_are_scaled_to_colours_and_whole_cells():
    """MinAtar renders 10x10 float frames in [0, 1]: the GIF shows them as 255-scale colours,
    each cell a 32x32 block at width 320 (not a black 10x10 stamp)."""
    frame = np.zeros((10, 10, 3))
    frame[2, 3] = (1.0, 0.5, 0.0)
    recorder = FrameRecorder(copies=1, stride=1, width=320, max_frames=10)
    recorder([frame], np.array([True]))
    [img] = recorder.frames()
    assert img.size == (320, 320)
    rgb = np.asarray(img.convert("RGB"))
    assert tuple(rgb[2 * 32 + 5, 3 * 32 + 5]) == (255, 128, 0) and tuple(rgb[0, 0]) == (0, 0, 0)
    assert (rgb[2 * 32:3 * 32, 3 * 32:4 * 32] == (255, 128, 0)).all()
