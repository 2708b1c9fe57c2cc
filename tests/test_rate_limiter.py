"""Rate limiter: the minimum-size stage, the ratio stage in both directions, validation."""
import pytest

from qfleet.common.errors import ConfigError
from qfleet.replay_server.rate_limiter import RateLimiter


def limiter(spi=2.0, min_size=10, eb=None, max_insert=4, max_sample=4):
    if eb is None:
        eb = RateLimiter.min_error_buffer(spi, max_insert, max_sample)
    return RateLimiter(min_size_to_sample=min_size, samples_per_insert=spi, error_buffer=eb,
                       max_insert_batch=max_insert, max_sample_batch=max_sample)


def test_min_size_stage_blocks_sampling_and_never_inserts():
    lim = limiter(min_size=10)
    size = 0
    for _ in range(10):
        assert not lim.can_sample(1, size)
        assert lim.can_insert(1, size)
        lim.record_insert(1)
        size += 1
    assert lim.can_sample(1, size)


def test_ratio_blocks_inserts_when_learner_falls_behind():
    lim = limiter(spi=2.0, min_size=10, max_insert=4, max_sample=4)  # eb = (4*2 + 4) / 2 = 6
    size = 0
    while lim.can_insert(1, size):
        lim.record_insert(1)
        size += 1
    # min size (10) plus what the error buffer allows: (inserts * 2 - 0) <= 2 * 10 + 6
    assert lim.inserts == 13
    assert lim.can_sample(4, size)
    lim.record_sample(4)
    assert lim.can_insert(1, size)


def test_ratio_blocks_samples_when_learner_runs_ahead():
    lim = limiter(spi=2.0, min_size=10, max_insert=4, max_sample=4)
    for _ in range(10):
        lim.record_insert(1)
    taken = 0
    while lim.can_sample(1, 10):
        lim.record_sample(1)
        taken += 1
    assert taken == 6  # exactly the error buffer below the target of 2 samples per insert
    lim.record_insert(1)
    assert lim.can_sample(2, 11)


def test_achieved_ratio_tracks_target():
    lim = limiter(spi=4.0, min_size=100, max_insert=32, max_sample=64)
    size = 0
    for _ in range(20_000):  # alternate greedily, as actors and learner would
        if lim.can_insert(32, size):
            lim.record_insert(32)
            size += 32
        if lim.can_sample(64, size):
            lim.record_sample(64)
    ratio = lim.samples / (lim.inserts - 100)
    assert ratio == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("spi,max_insert,max_sample", [(1.0, 1, 1), (8.0, 128, 256), (0.5, 1000, 32)])
def test_no_deadlock_at_minimum_error_buffer(spi, max_insert, max_sample):
    lim = limiter(spi=spi, min_size=50, max_insert=max_insert, max_sample=max_sample)
    size = 0
    for _ in range(5000):
        progressed = False
        if lim.can_insert(max_insert, size):
            lim.record_insert(max_insert)
            size += max_insert
            progressed = True
        if lim.can_sample(max_sample, size):
            lim.record_sample(max_sample)
            progressed = True
        assert progressed, "neither side could proceed: deadlock"


def test_constructor_names_the_deadlock():
    with pytest.raises(ConfigError, match="deadlock.*error_buffer >= 516"):
        RateLimiter(min_size_to_sample=100, samples_per_insert=8.0, error_buffer=10,
                    max_insert_batch=64, max_sample_batch=520)


@pytest.mark.parametrize("kwargs", [dict(min_size_to_sample=0), dict(samples_per_insert=-1.0),
                                    dict(max_insert_batch=0)])
def test_constructor_rejects_bad_values(kwargs):
    args = dict(min_size_to_sample=1, samples_per_insert=1.0, error_buffer=100.0, max_insert_batch=1,
                max_sample_batch=1)
    args.update(kwargs)
    with pytest.raises(ConfigError):
        RateLimiter(**args)


def test_disabled_ratio_only_gates_min_size():
    lim = RateLimiter(min_size_to_sample=5, samples_per_insert=0.0, error_buffer=0.0,
                      max_insert_batch=10, max_sample_batch=10)
    assert lim.can_insert(10**6, 10**9)
    assert not lim.can_sample(1, 4)
    assert lim.can_sample(10**6, 5)
