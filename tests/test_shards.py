"""Sharded sampling draws what one table holding every shard's rows would draw.

Three real Tables (the shards) and one Table holding the same rows with the same priorities;
the sharded draw is `learner.shards.ShardSet` choosing the shard of each batch from the
totals the shards report. A chi-square test compares the row counts with the single table's
probabilities, for prioritized (alpha 0.6) and uniform replay. The priority mass (or the
size) is deliberately skewed across shards, and the same test rejects a uniform choice of
shard, so it has the power to see a wrong draw. Importance weights of the same key agree.
All seeds are fixed; nothing depends on time.
"""
import numpy as np
import pytest

from qfleet.common.importance import importance_weights
from qfleet.learner.shards import ShardSet
from qfleet.replay_server.rate_limiter import RateLimiter
from qfleet.replay_server.table import Table
from tests.conftest import make_batch

ALPHA, BETA, BATCH, REQUESTS = 0.6, 0.5, 16, 4000
# rows per shard and their raw priorities: ~74% / 19% / 7% of the mass with alpha 0.6
PRIORITIES = [np.linspace(20, 40, 10), np.linspace(0.5, 1.5, 20), np.linspace(0.05, 0.15, 30)]
SIZES = [5, 15, 40]  # uniform replay: the size is the mass (8% / 25% / 67%)


def chi2_critical(dof: int, z: float = 3.090) -> float:
    """Upper critical value of chi-square with `dof` degrees of freedom by the Wilson-Hilferty
    approximation (z = 3.090 is the standard normal's 0.999 quantile: a 0.1% false alarm rate;
    for 59 dof it gives 98.3, the tables' value is 98.3)."""
    h = 2.0 / (9.0 * dof)
    return dof * (1.0 - h + z * np.sqrt(h)) ** 3


def chi2(counts: np.ndarray, probability: np.ndarray) -> float:
    expected = counts.sum() * probability
    return float(((counts - expected) ** 2 / expected).sum())


def make_table(n: int, seed: int, prioritized: bool) -> Table:
    lim = RateLimiter(min_size_to_sample=1, samples_per_insert=0.0, error_buffer=0.0,
                      max_insert_batch=1024, max_sample_batch=1024)
    return Table(capacity=max(n, 16), obs_shape=(4,), obs_dtype=np.float32, num_actions=2,
                 prioritized=prioritized, alpha=ALPHA, limiter=lim, seed=seed)


def rows(first: int, n: int) -> dict:
    """Transitions whose reward is their global row number."""
    b = make_batch(n, seed=first)
    return {"obs": b.obs, "action": b.action, "reward": np.arange(first, first + n, dtype=np.float32),
            "next_obs": b.next_obs, "discount": b.discount}


def build(prioritized: bool):
    """(shards, single table, each row's probability in the single table)."""
    raw = PRIORITIES if prioritized else [np.ones(n) for n in SIZES]
    shards, first = [], 0
    single = make_table(sum(map(len, raw)), seed=100, prioritized=prioritized)
    for s, p in enumerate(raw):
        shard = make_table(len(p), seed=s + 1, prioritized=prioritized)
        shard.insert(rows(first, len(p)), priority=p.astype(np.float32))
        shards.append(shard)
        first += len(p)
    single.insert(rows(0, first), priority=np.concatenate(raw).astype(np.float32))
    leaves = np.concatenate(raw).astype(np.float32).astype(np.float64) ** ALPHA if prioritized else np.ones(first)
    return shards, single, leaves / leaves.sum()


def sharded_draw(shards, choose, draw_set: ShardSet):
    """Row counts and (row, global probability, weight) of every sampled row."""
    counts = np.zeros(sum(t.size for t in shards), np.int64)
    seen = []
    for _ in range(REQUESTS):
        s = choose()
        t = shards[s]
        out = t.sample(BATCH, BETA)
        weight = draw_set.take_batch(s, t.total_priority, t.size, out["probability"], BETA, BATCH, now=0.0)
        row = out["reward"].astype(np.int64)
        np.add.at(counts, row, 1)
        seen.append((row, draw_set.global_probability(s, out["probability"]), weight))
    return counts, seen


@pytest.mark.parametrize("prioritized", [True, False], ids=["prioritized", "uniform"])
def test_sharded_draw_matches_one_table(prioritized):
    shards, single, probability = build(prioritized)
    critical = chi2_critical(len(probability) - 1)

    single_counts = np.zeros(len(probability), np.int64)
    for _ in range(REQUESTS):
        np.add.at(single_counts, single.sample(BATCH, BETA)["reward"].astype(np.int64), 1)
    draw_set = ShardSet(len(shards), seed=7)
    counts, seen = sharded_draw(shards, draw_set.choose, draw_set)

    assert chi2(single_counts, probability) < critical  # the reference itself fits
    assert chi2(counts, probability) < critical
    # homogeneity of the two samples (2 x K contingency table, K - 1 dof)
    pooled = (counts + single_counts) / (counts.sum() + single_counts.sum())
    assert chi2(counts, pooled) + chi2(single_counts, pooled) < critical

    # power: the same test rejects drawing the shard uniformly, whatever its mass
    rng = np.random.default_rng(7)
    uniform_counts, _ = sharded_draw(shards, lambda: int(rng.integers(len(shards))), ShardSet(len(shards)))
    assert chi2(uniform_counts, probability) > 10 * critical

    # importance weights: the global probability of a key is its single-table probability,
    # so its unnormalised weight (N P)^-beta and each batch's normalised weights agree (once
    # every shard has reported its total; before, a silent shard's total is estimated)
    n = len(probability)
    for row, global_p, weight in seen[-200:]:
        np.testing.assert_allclose(global_p, probability[row], rtol=1e-5)
        np.testing.assert_allclose((n * global_p) ** -BETA, (n * probability[row]) ** -BETA, rtol=1e-5)
        np.testing.assert_allclose(weight, importance_weights(probability[row], n, BETA, BATCH), rtol=1e-5)
    assert all(w.max() == 1.0 for _, _, w in seen)


@pytest.mark.parametrize("prioritized", [True, False], ids=["prioritized", "uniform"])
def test_one_shard_gives_the_single_tables_weights_bit_for_bit(prioritized):
    _, single, _ = build(prioritized)
    draw_set = ShardSet(1, seed=3)
    state = draw_set.rng.bit_generator.state
    for _ in range(50):
        assert draw_set.choose() == 0
        out = single.sample(BATCH, BETA, num_batches=2)
        weight = draw_set.take_batch(0, single.total_priority, single.size, out["probability"], BETA, BATCH, 0.0)
        np.testing.assert_array_equal(weight, out["weight"])
        np.testing.assert_array_equal(draw_set.global_probability(0, out["probability"]), out["probability"])
    assert draw_set.rng.bit_generator.state == state  # one shard draws no random numbers


def test_choice_is_equal_before_the_first_reply_then_follows_the_totals():
    draw_set = ShardSet(2, seed=1)
    first = np.bincount([draw_set.choose() for _ in range(2000)], minlength=2)
    assert abs(first[0] - 1000) < 150
    draw_set.take_batch(0, 9.0, 10, np.full(4, 0.1), BETA, 4, now=0.0)  # shard 1 unknown: counts as 9
    draw_set.take_batch(1, 1.0, 10, np.full(4, 0.1), BETA, 4, now=0.0)
    later = np.bincount([draw_set.choose() for _ in range(2000)], minlength=2)
    assert abs(later[0] - 1800) < 80  # 90%, binomial sd ~ 13


def test_a_silent_shard_leaves_the_draw_is_probed_and_rejoins():
    """Times are given explicitly: the rules, not the clock, are under test."""
    draw_set = ShardSet(2, seed=1, retry_s=3.0)
    draw_set.replied(0, now=1.0)
    draw_set.timed_out(0, sent=0.5, now=4.0)     # a reply came after that request: still up
    assert draw_set.up.tolist() == [True, True]
    draw_set.timed_out(1, sent=1.0, now=4.0)     # nothing from shard 1 since: left out
    assert draw_set.up.tolist() == [True, False]
    assert {draw_set.choose() for _ in range(200)} == {0}
    assert draw_set.probe_due(now=5.0) is None   # probed at most once per retry_s
    assert draw_set.probe_due(now=7.0) == 1 and draw_set.probe_due(now=7.5) is None
    draw_set.replied(1, now=8.0)                 # any answer brings it back
    assert draw_set.up.tolist() == [True, True]
    assert {draw_set.choose() for _ in range(200)} == {0, 1}
    report = draw_set.report()
    assert report["shard.1.timeouts"] == 1 and report["shard.1.probes"] == 1 and report["shard.1.up"]


def test_when_no_shard_answers_all_are_asked():
    draw_set = ShardSet(2, seed=1)
    draw_set.timed_out(0, sent=0.0, now=3.0)
    draw_set.timed_out(1, sent=0.0, now=3.0)
    assert draw_set.probe_due(now=10.0) is None
    assert {draw_set.choose() for _ in range(200)} == {0, 1}
