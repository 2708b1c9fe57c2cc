"""SumTree against a brute-force reference, and sampling frequencies against priorities."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qfleet.replay_server.sum_tree import SumTree


def assert_consistent(tree: SumTree, reference: np.ndarray) -> None:
    assert np.array_equal(tree.leaves[: tree.capacity], reference.astype(np.float32))
    assert tree.total == pytest.approx(float(reference.astype(np.float32).astype(np.float64).sum()), rel=1e-9, abs=1e-9)


ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.lists(st.integers(0, 299), min_size=1, max_size=40),
              st.floats(0.0, 100.0, allow_nan=False, width=32)),
    st.tuples(st.just("range"), st.integers(0, 299), st.integers(1, 60),
              st.floats(0.0, 100.0, allow_nan=False, width=32)),
), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 300), branching=st.sampled_from([2, 3, 4, 16]), operations=ops)
def test_matches_brute_force(capacity, branching, operations):
    tree = SumTree(capacity, branching)
    reference = np.zeros(capacity)
    rng = np.random.default_rng(0)
    for op in operations:
        if op[0] == "set":
            slots = np.array([s % capacity for s in op[1]])
            values = rng.uniform(0, op[2], len(slots)).astype(np.float32)
            tree.set(slots, values)
            for s, v in zip(slots, values):  # duplicates: last wins, like numpy assignment
                reference[s] = v
        else:
            start = op[1] % capacity
            count = min(op[2], capacity - start)
            values = rng.uniform(0, op[3], count).astype(np.float32)
            tree.set_range(start, values)
            reference[start:start + count] = values
        assert_consistent(tree, reference)
    if reference.sum() > 0:
        slots, values = tree.sample(64, rng)
        assert np.all(reference[slots] > 0), "a zero-priority slot was sampled"
        assert np.array_equal(values, reference[slots].astype(np.float32))


@pytest.mark.parametrize("capacity,branching", [(10, 2), (1000, 16), (4097, 16)])
def test_sampling_frequencies_match_priorities(capacity, branching):
    rng = np.random.default_rng(123)
    tree = SumTree(capacity, branching)
    priorities = rng.uniform(0.0, 1.0, capacity).astype(np.float32)
    priorities[::5] = 0.0
    tree.set(np.arange(capacity), priorities)
    draws = 400 * capacity if capacity < 100 else 200_000
    counts = np.zeros(capacity)
    for _ in range(draws // 1000):
        slots, _ = tree.sample(1000, rng)
        counts += np.bincount(slots, minlength=capacity)
    assert counts[priorities == 0].sum() == 0
    expected = priorities / priorities.sum() * counts.sum()
    nz = expected > 0
    chi2 = float(((counts[nz] - expected[nz]) ** 2 / expected[nz]).sum())
    dof = int(nz.sum()) - 1
    # Stratified sampling has lower variance than multinomial, so chi2 is below its
    # multinomial expectation; 6 standard deviations above it is a generous bound.
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)


def test_rejects_empty_tree():
    with pytest.raises(ValueError, match="total priority is 0"):
        SumTree(8).sample(4, np.random.default_rng(0))


def test_memory_is_small():
    tree = SumTree(1_000_000)
    assert tree.nbytes / 1_000_000 < 4.6
