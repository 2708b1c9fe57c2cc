"""Table: ring-buffer wrap-around, importance weights, stale priority updates, content checks,
and snapshots (atomic, fallback to the previous one when the newest is corrupt)."""
import numpy as np
import pytest

from qfleet.common.errors import CheckpointError, ConfigError, RequestError
from qfleet.replay_server.rate_limiter import RateLimiter
from qfleet.replay_server.snapshot import SnapshotStore
from qfleet.replay_server.table import Table
from tests.conftest import make_batch


def table(capacity=10, prioritized=True, alpha=0.6, obs_shape=(4,)):
    lim = RateLimiter(min_size_to_sample=1, samples_per_insert=0.0, error_buffer=0.0,
                      max_insert_batch=1000, max_sample_batch=1000)
    return Table(capacity=capacity, obs_shape=obs_shape, obs_dtype=np.float32, num_actions=2,
                 prioritized=prioritized, alpha=alpha, limiter=lim, seed=0)


def fields(batch):
    return {k: getattr(batch, k) for k in ("obs", "action", "reward", "next_obs", "discount")}


def marked(n, start):
    """Transitions whose reward equals their global insertion index."""
    b = make_batch(n)
    return {**fields(b), "reward": np.arange(start, start + n, dtype=np.float32)}


def test_ring_buffer_wraps_and_keeps_newest():
    t = table(capacity=10)
    t.insert(marked(7, 0))
    t.insert(marked(7, 7))  # wraps: slots 7,8,9,0,1,2,3
    assert t.size == 10 and t.storage.inserted == 14
    stored = sorted(t.storage.arrays["reward"].tolist())
    assert stored == list(range(4, 14))
    out = t.sample(200, beta=0.5)
    assert np.array_equal(out["reward"], out["keys"].astype(np.float32)), "keys must name what was sampled"


def test_batch_larger_than_capacity_keeps_its_tail():
    t = table(capacity=5)
    first, stored = t.insert(marked(12, 0))
    assert (first, stored) == (7, 5)
    assert sorted(t.storage.arrays["reward"].tolist()) == [7, 8, 9, 10, 11]


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_importance_weights(beta):
    t = table(capacity=4, alpha=1.0)
    t.insert(marked(4, 0), priority=np.array([1.0, 2.0, 4.0, 8.0], np.float32))
    out = t.sample(64, beta=beta)
    p = np.array([1, 2, 4, 8], float)[out["keys"]]
    prob = p / 15.0
    expected = (4 * prob) ** -beta
    np.testing.assert_allclose(out["weight"], expected / expected.max(), rtol=1e-6)


@pytest.mark.parametrize("prioritized", [True, False])
def test_sample_carries_probabilities_within_the_table(prioritized):
    t = table(capacity=8, alpha=0.6, prioritized=prioritized)
    raw = np.array([1.0, 2.0, 4.0, 8.0, 0.5], np.float32)
    t.insert(marked(5, 0), priority=raw)
    leaves = raw.astype(np.float64) ** 0.6 if prioritized else np.ones(5)
    assert t.total_priority == pytest.approx(leaves.sum() if prioritized else 5.0)
    out = t.sample(64, beta=0.5)
    np.testing.assert_allclose(out["probability"], leaves[out["keys"]] / leaves.sum(), rtol=1e-6)


def test_weights_match_the_single_table_formula():
    """(v_i / v_min)^-beta per batch, the formula before probabilities went on the wire."""
    t = table(capacity=16, alpha=0.6)
    t.insert(marked(16, 0), priority=np.linspace(0.1, 5.0, 16).astype(np.float32))
    out = t.sample(8, beta=0.7, num_batches=4)
    value = t.tree.get(out["keys"] % 16).astype(np.float64).reshape(4, 8)
    expected = np.power(value / value.min(axis=1, keepdims=True), -0.7).reshape(-1)
    np.testing.assert_allclose(out["weight"], expected, rtol=1e-6)


def test_weights_normalised_per_batch():
    t = table(capacity=4, alpha=1.0)
    t.insert(marked(4, 0), priority=np.array([1.0, 2.0, 4.0, 8.0], np.float32))
    out = t.sample(8, beta=1.0, num_batches=3)
    assert len(out["keys"]) == 24
    for chunk in out["weight"].reshape(3, 8):
        assert chunk.max() == pytest.approx(1.0)


def test_new_items_get_max_priority():
    t = table(capacity=8, alpha=1.0)
    t.insert(marked(2, 0))
    t.update_priorities(np.array([0]), np.array([5.0], np.float32))
    t.insert(marked(1, 2))
    assert t.tree.get(np.array([2]))[0] == pytest.approx(5.0)


def test_stale_priority_updates_are_ignored():
    t = table(capacity=4, alpha=1.0)
    t.insert(marked(4, 0))
    keys = np.array([0, 1, 2, 3])
    t.insert(marked(2, 4))  # overwrites keys 0 and 1 (slots 0 and 1)
    before = t.tree.get(np.array([0, 1])).copy()
    stale = t.update_priorities(keys, np.full(4, 9.0, np.float32))
    assert stale == 2
    np.testing.assert_array_equal(t.tree.get(np.array([0, 1])), before)
    np.testing.assert_array_equal(t.tree.get(np.array([2, 3])), [9.0, 9.0])


@pytest.mark.parametrize("change,reason", [
    (dict(action=np.array([0, 1, 2, 0], np.int32)), "bad_action"),
    (dict(action=np.array([0, -1, 0, 0], np.int32)), "bad_action"),
    (dict(discount=np.array([0.5, 1.5, 0, 0], np.float32)), "bad_discount"),
])
def test_insert_content_checks_leave_table_untouched(change, reason):
    t = table()
    t.insert(marked(3, 0))
    with pytest.raises(RequestError) as info:
        t.insert({**marked(4, 3), **change})
    assert info.value.reason == reason
    assert t.size == 3 and t.storage.inserted == 3


def test_priority_update_checks():
    t = table()
    t.insert(marked(3, 0))
    with pytest.raises(RequestError, match="bad_key"):
        t.update_priorities(np.array([-1]), np.ones(1, np.float32))
    assert t.update_priorities(np.array([3, 0]), np.ones(2, np.float32)) == 1  # key 3 does not exist yet
    with pytest.raises(RequestError, match="bad_priority"):
        t.update_priorities(np.array([0]), np.zeros(1, np.float32))
    with pytest.raises(RequestError, match="bad_priority"):
        t.insert(marked(1, 3), priority=np.array([-1.0], np.float32))


def test_uniform_sampling_covers_everything():
    t = table(capacity=50, prioritized=False)
    t.insert(marked(30, 0))
    out = t.sample(3000, beta=1.0)
    assert set(out["keys"].tolist()) == set(range(30))
    assert np.all(out["weight"] == 1.0)


def test_snapshot_round_trip_and_fallback(tmp_path):
    t = table(capacity=16, alpha=1.0)
    t.insert(marked(20, 0))
    t.update_priorities(np.array([10, 11]), np.array([3.0, 4.0], np.float32))
    store = SnapshotStore(tmp_path, keep=2)
    first = store.save(t)
    t.insert(marked(3, 20))
    second = store.save(t, {"note": "second"})
    assert store.paths() == [second, first]
    assert not list(tmp_path.glob("*.tmp"))

    restored = table(capacity=16, alpha=1.0)
    assert store.load_latest(restored) == (second, {"note": "second"})
    assert restored.storage.inserted == 23
    np.testing.assert_array_equal(restored.storage.records, t.storage.records)
    np.testing.assert_array_equal(restored.tree.leaves, t.tree.leaves)
    assert restored.max_priority == t.max_priority

    second.write_bytes(second.read_bytes()[:100])  # a crash mid-copy
    fallback = table(capacity=16, alpha=1.0)
    assert store.load_latest(fallback) == (first, {})
    assert fallback.storage.inserted == 20


def test_snapshot_from_other_env_is_refused(tmp_path):
    t = table(capacity=16)
    t.insert(marked(5, 0))
    SnapshotStore(tmp_path).save(t)
    with pytest.raises(CheckpointError, match=r"shape \(4,\).*gives \(6,\)"):
        SnapshotStore(tmp_path).load_latest(table(capacity=16, obs_shape=(6,)))
    with pytest.raises(CheckpointError, match="capacity"):
        SnapshotStore(tmp_path).load_latest(table(capacity=32))


def test_min_size_above_capacity_is_refused():
    lim = RateLimiter(min_size_to_sample=100, samples_per_insert=0.0, error_buffer=0.0,
                      max_insert_batch=10, max_sample_batch=10)
    with pytest.raises(ConfigError, match="wait forever"):
        Table(capacity=50, obs_shape=(4,), obs_dtype=np.float32, num_actions=2, prioritized=True,
              alpha=0.6, limiter=lim)
