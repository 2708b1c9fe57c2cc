"""The learner's device path. On any machine: the staging buffers that carry batches to
the device, the update role's submit/collect contract, backend choice, and `qfleet bench
learner`. Where CUDA exists (marked gpu, skipped elsewhere): the CUDA learner against the
CPU learner on fixed batches, CUDA-graph replay across hard target copies and Polyak
updates, pipelined results, weight snapshots, bf16 for the CNN, and a full training run."""
import dataclasses
import json
import subprocess
import time

import numpy as np
import pytest
import torch

from qfleet.common.config import LearnerConfig
from qfleet.common.netspec import NetSpec
from qfleet.deploy.bench.learner import synthetic_batches
from qfleet.learner.backend import make_update
from qfleet.learner.numpy_dqn import NumpyDQN
from qfleet.learner.staging import ALIGN, Staging
from qfleet.learner.torch_dqn import TorchDQN
from tests.conftest import python_env

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none")
MLP = NetSpec("mlp", (4,), 3, (32, 32))
CNN = NetSpec("cnn", (4, 84, 84), 2, (512,))


def batches(spec: NetSpec, n: int, size: int, seed: int = 1) -> list[dict]:
    """Writable copies of the benchmark's synthetic batches."""
    return [{k: v.copy() for k, v in b.items()} for b in synthetic_batches(spec, size, count=n, seed=seed)]


# -- device-independent -----------------------------------------------------------------------
@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_staging_lands_each_batch_in_the_static_tensors(spec):
    staging = Staging(batch_size=8, obs_shape=spec.obs_shape,
                      obs_dtype=np.uint8 if spec.kind == "cnn" else np.float32, device=torch.device("cpu"))
    assert all(f.offset % ALIGN == 0 for f in staging.fields)
    before = {k: v.data_ptr() for k, v in staging.tensors.items()}
    for batch in batches(spec, 3, 8):  # alternating host buffers, the same device tensors
        staging.upload(batch)
        for name, tensor in staging.tensors.items():
            np.testing.assert_array_equal(tensor.numpy(), batch[name], err_msg=name)
            assert tensor.numpy().dtype == batch[name].dtype
    assert before == {k: v.data_ptr() for k, v in staging.tensors.items()}
    with pytest.raises(ValueError, match="batches of 8, got 4"):
        staging.upload(batches(spec, 1, 4)[0])


def test_sync_updates_follow_the_submit_collect_contract():
    cfg = dataclasses.replace(LearnerConfig(), hidden=(32, 32))
    a, b = NumpyDQN(cfg, MLP, 0), NumpyDQN(cfg, MLP, 0)
    assert a.depth == 1 and a.in_flight == 0
    for batch in batches(MLP, 3, 16):
        b.submit(batch)
        assert b.in_flight == 1
        with pytest.raises(RuntimeError, match="collect"):
            b.submit(batch)
        td_b, loss_b = b.collect()
        td_a, loss_a = a.step(batch)
        np.testing.assert_array_equal(td_a, td_b)
        assert loss_a == loss_b
    with pytest.raises(RuntimeError, match="no update in flight"):
        b.collect()
    assert b.snapshot_params()
    taken = b.take_params()
    assert taken is not None and b.take_params() is None
    for k, v in a.params().items():
        np.testing.assert_array_equal(taken[k], v)


def test_backend_choice_on_the_cpu():
    cfg = LearnerConfig()
    assert type(make_update(cfg, NetSpec("mlp", (4,), 2), "cpu", 0)).__name__ == "NumpyDQN"
    assert type(make_update(cfg, NetSpec("cnn", (4, 36, 36), 2, (16,)), "cpu", 0)).__name__ == "TorchDQN"
    from qfleet.learner.device_dqn import DeviceDQN

    with pytest.raises(ValueError, match="runs on CUDA"):
        DeviceDQN(cfg, MLP, torch.device("cpu"))


def test_bench_learner_writes_the_required_keys(qfleet_cmd, tmp_path):
    path = tmp_path / "learner.json"
    out = subprocess.run(qfleet_cmd + ["bench", "learner", "--device", "cpu", "--seconds", "0.5", "--system-seconds",
                                       "0", "--json", str(path)], capture_output=True, text=True, env=python_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(path.read_text())
    assert result["device"] == "cpu"
    assert result["mlp_updates_per_s"] > 0 and result["cnn_updates_per_s"] > 0
    assert result["mlp_samples_per_s"] == pytest.approx(256 * result["mlp_updates_per_s"])
    assert result["cnn_samples_per_s"] == pytest.approx(64 * result["cnn_updates_per_s"])
    assert "| mlp | isolated | 256 |" in out.stdout


# -- CUDA --------------------------------------------------------------------------------------
def cuda_pair(spec: NetSpec, **overrides):
    """A CPU TorchDQN and a CUDA DeviceDQN starting from the same state."""
    from qfleet.learner.device_dqn import DeviceDQN

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = dataclasses.replace(LearnerConfig(), **{"grad_clip": 0.5, "lr": 1e-2, **overrides})
    ref = TorchDQN(cfg, spec, torch.device("cpu"), seed=0)
    dev = DeviceDQN(cfg, spec, torch.device("cuda"), seed=1)
    dev.load(ref.state())
    return ref, dev


def assert_states_close(a: dict, b: dict, rtol: float, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
@pytest.mark.parametrize("target_update", ["hard", "polyak"])
@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
@pytest.mark.gpu
@cuda_only
def test_cuda_learner_agrees_with_the_cpu_learner(target_update, graphs, optimizer):
    ref, dev = cuda_pair(MLP, hidden=MLP.hidden, batch_size=64, target_update=target_update, target_period=3,
                         cuda_graphs=graphs, precision="fp32", optimizer=optimizer)
    for batch in batches(MLP, 10, 64):  # hard: copies after updates 3, 6 and 9, between replays
        td_ref, loss_ref = ref.step(batch)
        td_dev, loss_dev = dev.step(batch)
        assert loss_dev == pytest.approx(loss_ref, rel=1e-4, abs=1e-6)
        np.testing.assert_allclose(td_dev, td_ref, rtol=1e-4, atol=1e-5)
    assert dev.updates == ref.updates == 10
    assert_states_close(dev.state(), ref.state(), rtol=1e-3, atol=1e-5)
    ref.load(dev.state())  # a checkpoint loaded into a captured learner: it captures again
    dev.load(dev.state())
    for batch in batches(MLP, 4, 64, seed=2):
        np.testing.assert_allclose(dev.step(batch)[0], ref.step(batch)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@cuda_only
def test_pipelined_submissions_give_the_sequential_results():
    seq_ref, seq = cuda_pair(MLP, hidden=MLP.hidden, batch_size=64, target_update="hard", target_period=2)
    _, piped = cuda_pair(MLP, hidden=MLP.hidden, batch_size=64, target_update="hard", target_period=2)
    data = batches(MLP, 9, 64)
    expected = [seq.step(b) for b in data]
    got = []
    for b in data:
        piped.submit(b)
        while piped.in_flight >= piped.depth:
            got.append(piped.collect())
    while piped.in_flight:
        got.append(piped.collect())
    assert piped.depth == 2 and len(got) == len(expected)
    for (td_e, loss_e), (td_g, loss_g) in zip(expected, got):
        np.testing.assert_allclose(td_g, td_e, rtol=1e-6, atol=1e-7)
        assert loss_g == pytest.approx(loss_e, rel=1e-6)


@pytest.mark.gpu
@cuda_only
def test_weight_snapshots_arrive_without_a_sync():
    _, dev = cuda_pair(MLP, hidden=MLP.hidden, batch_size=64)
    data = batches(MLP, 3, 64)
    dev.step(data[0])
    assert dev.snapshot_params()
    assert not dev.snapshot_params()  # one copy at a time
    deadline, taken = time.monotonic() + 10, None
    while taken is None and time.monotonic() < deadline:
        taken = dev.take_params()
    assert taken is not None and dev.take_params() is None
    for k, v in dev.params().items():  # the weights after the first update
        np.testing.assert_array_equal(taken[k], v)
    dev.step(data[1])
    assert dev.snapshot_params()  # free again once taken


@pytest.mark.gpu
@cuda_only
def test_cnn_on_cuda_in_bf16_tracks_fp32_and_learns():
    ref, dev = cuda_pair(CNN, batch_size=32, lr=1e-3, precision="auto")
    assert dev.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    batch = batches(CNN, 1, 32)[0]
    td_ref, loss_ref = ref.step(batch)
    td_dev, loss_dev = dev.step(batch)
    assert loss_dev == pytest.approx(loss_ref, rel=0.05, abs=1e-3)
    np.testing.assert_allclose(td_dev, td_ref, rtol=0.05, atol=0.05)
    batch["discount"][:] = 0.0
    first = dev.step(batch)[0].mean()
    for _ in range(200):
        last = dev.step(batch)[0].mean()
    assert last < 0.3 * first


@pytest.mark.slow
@pytest.mark.gpu
@cuda_only
def test_training_on_cuda_solves_cartpole(qfleet_cmd, tmp_path):
    # stops when solved, under an update cap many times what solving takes; --max-seconds is
    # only a hang guard
    out = subprocess.run(qfleet_cmd + ["train", "--seed", "0", "--max-seconds", "600", "--run-dir", str(tmp_path),
                                       "--name", "run", "--set", "learner.device=cuda",
                                       "--set", "run.max_updates=30000"],
                         capture_output=True, text=True, env=python_env(), timeout=700)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["solved"] and summary["reason"] == "solved" and summary["learner"]["device"] == "cuda", summary
