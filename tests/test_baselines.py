"""Baselines: REINFORCE's gradient is right, and both baselines beat a random policy."""
import numpy as np
import pytest

from qfleet.common.config import RandomSearchConfig, ReinforceConfig
from qfleet.common.envs import describe_env
from qfleet.learner.baselines.random_search import RandomSearch, linear_policy
from qfleet.learner.baselines.reinforce import PolicyNet, Reinforce, discounted_returns, softmax
from qfleet.learner.evaluation import evaluate

EVAL_SEED = 12345


def random_policy_mean(env_id: str, episodes: int = 100) -> float:
    """Mean return of uniformly random actions (random scores, so argmax is uniform)."""
    rng = np.random.default_rng(0)
    return evaluate(lambda obs: rng.random((len(obs), 2)), env_id, episodes, EVAL_SEED).mean


def test_discounted_returns_stop_at_each_episode_end():
    rewards = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # the second episode ended after one step
    np.testing.assert_allclose(discounted_returns(rewards, 0.5), [[1.75, 1.0], [1.5, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize("hidden", [(5,), (4, 3)])
def test_policy_gradient_matches_finite_differences(hidden):
    rng = np.random.default_rng(1)
    net = PolicyNet([6, *hidden, 3], rng)
    net.params = [p + rng.normal(scale=0.5, size=p.shape) for p in net.params]  # away from the tiny init
    x, a, g = rng.normal(size=(7, 6)), rng.integers(0, 3, 7), rng.normal(size=7)

    def loss() -> float:
        p = softmax(net.forward(x)[0])
        return float(-(g * np.log(p[np.arange(7), a])).mean())

    logits, acts = net.forward(x)
    d = softmax(logits)
    d[np.arange(7), a] -= 1.0
    grads = net.backward(d * (g / 7)[:, None], acts)
    for param, grad in zip(net.params, grads):
        for idx in list(np.ndindex(param.shape))[:6]:
            old = param[idx]
            param[idx] = old + 1e-6
            up = loss()
            param[idx] = old - 1e-6
            down = loss()
            param[idx] = old
            assert grad[idx] == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-7)


def test_random_search_beats_a_random_policy_on_cartpole():
    env = describe_env("CartPole-v1")
    search = RandomSearch(cfg=RandomSearchConfig(), env=env, seed=0)
    played = [search.train_step() for _ in range(100)]
    assert search.candidates == 100 and all(len(p.returns) == 5 for p in played)
    assert search.best_return == max(p.returns.mean() for p in played)  # the best candidate is kept
    baseline = random_policy_mean("CartPole-v1")
    found = evaluate(search.greedy(), "CartPole-v1", 100, EVAL_SEED).mean
    assert baseline < 30 and found > 4 * baseline, (found, baseline)


def test_reinforce_beats_a_random_policy_on_cartpole():
    env = describe_env("CartPole-v1")
    learner = Reinforce(cfg=ReinforceConfig(), env=env, seed=0)
    try:
        first = evaluate(learner.greedy(), "CartPole-v1", 100, EVAL_SEED).mean
        returns = np.concatenate([learner.train_step().returns for _ in range(40)])  # 320 episodes
        trained = evaluate(learner.greedy(), "CartPole-v1", 100, EVAL_SEED).mean
    finally:
        learner.close()
    baseline = random_policy_mean("CartPole-v1")
    assert learner.updates == 40 and len(returns) == 320 and np.isfinite(learner.loss)
    assert returns[-50:].mean() > 2 * returns[:50].mean()  # training episodes got longer
    assert trained > 4 * baseline and trained > 2 * first, (trained, first, baseline)


def test_linear_policy_scores_are_obs_times_weights_plus_bias():
    w = np.arange(15, dtype=float).reshape(5, 3)  # 4 observation features + bias row, 3 actions
    obs = np.array([[1.0, 0, 0, 0], [0, 0, 0, 2.0]])
    np.testing.assert_allclose(linear_policy(w)(obs), [[12, 14, 16], [30, 33, 36]])
