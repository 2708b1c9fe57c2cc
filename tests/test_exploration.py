"""Epsilon schedules: Ape-X per-environment values and the decaying options."""
import dataclasses

import numpy as np
import pytest

from qfleet.actors.exploration import EpsilonSchedule, apex_epsilons
from qfleet.common.config import ActorConfig
from qfleet.common.netspec import epsilon_greedy


def test_apex_formula_over_all_envs_of_all_actors():
    actors, per = 3, 4
    eps = np.concatenate([apex_epsilons(a, actors, per, 0.4, 7.0) for a in range(actors)])
    k = actors * per
    expected = [0.4 ** (1 + 7 * i / (k - 1)) for i in range(k)]
    np.testing.assert_allclose(eps, expected)
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4 ** 8)


def test_apex_single_env():
    np.testing.assert_allclose(apex_epsilons(0, 1, 1, 0.4, 7.0), [0.4])


def cfg(**kw):
    return dataclasses.replace(ActorConfig(), envs_per_actor=4, **kw)


def test_linear_decay_by_step():
    s = EpsilonSchedule(cfg(epsilon="linear", eps_start=1.0, eps_end=0.1, eps_decay_steps=100), 0, 1)
    assert s.value() == 1.0
    s.advance(50, 0)
    assert s.value() == pytest.approx(0.55)
    s.advance(500, 0)
    assert s.value() == pytest.approx(0.1)
    assert np.all(s.epsilons() == pytest.approx(0.1))


def test_exponential_decay_by_step():
    s = EpsilonSchedule(cfg(epsilon="exponential", eps_start=0.9, eps_end=0.05, eps_decay_steps=200), 0, 1)
    s.advance(200, 0)
    assert s.value() == pytest.approx(0.05 + 0.85 * np.exp(-1))


def test_multiplicative_per_episode():
    s = EpsilonSchedule(cfg(epsilon="per_episode", eps_start=1.0, eps_end=0.01, eps_decay_rate=0.995), 0, 1)
    s.advance(1000, 10)
    assert s.value() == pytest.approx(0.995 ** 10)
    s.advance(0, 10_000)
    assert s.value() == pytest.approx(0.01)


def test_state_round_trip():
    s = EpsilonSchedule(cfg(epsilon="linear"), 0, 1)
    s.advance(123, 4)
    t = EpsilonSchedule(cfg(epsilon="linear"), 0, 1)
    t.load(s.state())
    assert t.value() == s.value() and t.state() == {"env_steps": 123, "episodes": 4}


def test_epsilon_greedy_rates():
    rng = np.random.default_rng(0)
    q = np.tile([[0.0, 1.0, 0.5]], (20_000, 1))
    greedy = epsilon_greedy(q, np.zeros(20_000), rng)
    assert np.all(greedy == 1)
    mixed = epsilon_greedy(q, np.full(20_000, 0.3), rng)
    # non-greedy picks: eps * 2/3 of the time
    assert np.mean(mixed != 1) == pytest.approx(0.3 * 2 / 3, abs=0.01)
