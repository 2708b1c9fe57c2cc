"""n-step adder against hand-computed cases: termination, truncation, mid-batch resets,
and gymnasium's autoreset steps (which are not transitions)."""
import numpy as np
import pytest

from qfleet.actors.nstep import NStepAdder

G = 0.9


def step(adder, obs, action, reward, next_obs, term=None, trunc=None, valid=None):
    v = len(obs)
    term = np.zeros(v, bool) if term is None else np.array(term)
    trunc = np.zeros(v, bool) if trunc is None else np.array(trunc)
    valid = np.ones(v, bool) if valid is None else np.array(valid)
    return adder.add(np.array(obs, np.float32)[:, None], np.array(action), np.array(reward, float),
                     np.array(next_obs, np.float32)[:, None], term, trunc, valid)


def rows(out):
    return [(float(o[0]), int(a), round(float(r), 6), float(n[0]), round(float(d), 6))
            for o, a, r, n, d in zip(out["obs"], out["action"], out["reward"], out["next_obs"], out["discount"])]


def row(obs, action, ret, next_obs, discount):
    return (float(obs), int(action), round(float(ret), 6), float(next_obs), round(float(discount), 6))


def test_full_windows():
    adder = NStepAdder(num_envs=1, n=3, gamma=G, obs_shape=(1,))
    assert rows(step(adder, [0], [0], [1], [1])) == []
    assert rows(step(adder, [1], [1], [2], [2])) == []
    assert rows(step(adder, [2], [0], [3], [3])) == [row(0, 0, 1 + G * 2 + G * G * 3, 3, G ** 3)]
    assert rows(step(adder, [3], [1], [4], [4])) == [row(1, 1, 2 + G * 3 + G * G * 4, 4, G ** 3)]


def test_termination_flushes_without_bootstrap():
    adder = NStepAdder(num_envs=1, n=3, gamma=G, obs_shape=(1,))
    step(adder, [0], [0], [1], [1])
    out = rows(step(adder, [1], [1], [2], [9], term=[True]))
    assert out == [row(0, 0, 1 + G * 2, 9, 0.0), row(1, 1, 2, 9, 0.0)]
    assert adder.pending() == 0


def test_truncation_bootstraps_from_last_obs():
    adder = NStepAdder(num_envs=1, n=3, gamma=G, obs_shape=(1,))
    step(adder, [0], [0], [1], [1])
    step(adder, [1], [0], [1], [2])
    step(adder, [2], [0], [1], [3])  # emits obs 0
    out = rows(step(adder, [3], [1], [5], [7], trunc=[True]))
    # pending: obs 1 (3 steps left: r=1,1,5), obs 2 (1,5), obs 3 (5); bootstrap from obs 7
    assert out == [row(1, 0, 1 + G * 1 + G * G * 5, 7, G ** 3), row(2, 0, 1 + G * 5, 7, G ** 2),
                   row(3, 1, 5.0, 7, G)]


def test_autoreset_step_is_skipped_and_episodes_do_not_mix():
    adder = NStepAdder(num_envs=1, n=2, gamma=G, obs_shape=(1,))
    step(adder, [0], [0], [1], [1], term=[True])           # episode A ends: 1 transition
    assert rows(step(adder, [1], [0], [0], [100], valid=[False])) == []  # reset step, not a transition
    assert adder.pending() == 0
    assert rows(step(adder, [100], [1], [3], [101])) == []
    assert rows(step(adder, [101], [0], [4], [102])) == [row(100, 1, 3 + G * 4, 102, G ** 2)]


def test_vectorized_envs_with_mid_batch_resets():
    """Three envs out of phase: one terminates, one truncates, one runs on; the output of
    each env must equal what a single-env adder produces for that env alone."""
    n, v, t_max = 3, 3, 12
    rng = np.random.default_rng(0)
    rewards = rng.integers(1, 5, (t_max, v)).astype(float)
    term = np.zeros((t_max, v), bool)
    trunc = np.zeros((t_max, v), bool)
    term[4, 0] = True
    trunc[6, 1] = True
    term[9, 0] = True
    valid = np.ones((t_max, v), bool)
    valid[5, 0] = valid[7, 1] = valid[10, 0] = False  # autoreset steps
    obs = np.arange(t_max * v, dtype=float).reshape(t_max, v)
    next_obs = obs + 1000
    vector = NStepAdder(num_envs=v, n=n, gamma=G, obs_shape=(1,))
    singles = [NStepAdder(num_envs=1, n=n, gamma=G, obs_shape=(1,)) for _ in range(v)]
    got = {e: [] for e in range(v)}
    want = {e: [] for e in range(v)}
    for t in range(t_max):
        out = step(vector, obs[t], np.full(v, t % 2), rewards[t], next_obs[t], term[t], trunc[t], valid[t])
        for r in rows(out):
            got[int(r[0]) % v].append(r)
        for e in range(v):
            want[e] += rows(step(singles[e], obs[t, e:e + 1], [t % 2], rewards[t, e:e + 1], next_obs[t, e:e + 1],
                                 term[t, e:e + 1], trunc[t, e:e + 1], valid[t, e:e + 1]))
    for e in range(v):
        assert sorted(got[e]) == sorted(want[e])
    assert all(r[4] == 0.0 for r in want[0] if r[3] in (next_obs[4, 0], next_obs[9, 0]))


@pytest.mark.parametrize("n", [1, 3, 5])
def test_matches_reference_on_random_episodes(n):
    rng = np.random.default_rng(n)
    adder = NStepAdder(num_envs=1, n=n, gamma=G, obs_shape=(1,))
    emitted = []
    episode = []
    for t in range(300):
        r = float(rng.integers(0, 3))
        ends = rng.random() < 0.05
        truncated = ends and rng.random() < 0.5
        episode.append((t, r))
        out = step(adder, [t], [0], [r], [t + 1], term=[ends and not truncated], trunc=[truncated])
        emitted += rows(out)
        if ends:
            # reference: straightforward definition over the finished episode
            for i, (t0, _) in enumerate(episode):
                window = episode[i:i + n]
                ret = sum(G ** k * rr for k, (_, rr) in enumerate(window))
                reaches_end = i + n >= len(episode)
                disc = (0.0 if not truncated else G ** len(window)) if reaches_end else G ** n
                assert row(t0, 0, ret, window[-1][0] + 1, disc) in emitted
            episode = []
    assert len(emitted) + adder.pending() == 300  # every valid step is emitted exactly once
