"""Evaluation: normalized scores, seeded vector-env episodes, InvertedPendulum sanity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offrl.data.builtin import ENV_ID, GAINS
from offrl.errors import OffrlError
from offrl.evaluation import evaluate, normalized_score

# a weak linear controller: holds the pole for a seed-dependent ~100-200 steps
WEAK = np.array([0.3, 1.5, 0.2, 0.1])
KEYS = {"return_mean", "return_std", "normalized_score", "normalized_score_std", "length_mean", "returns", "lengths"}


def linear(gains):
    return lambda obs: np.clip(obs @ gains, -1.0, 1.0)[:, None]


def zero_policy(obs):
    return np.zeros((len(obs), 1))


# ----------------------------------------------------------------------------- scores
def test_normalized_score_reference_points():
    assert normalized_score(3234.3, -20.272305, 3234.3) == pytest.approx(100.0)
    assert normalized_score(-20.272305, -20.272305, 3234.3) == pytest.approx(0.0)
    assert normalized_score(5.0, 0.0, 10.0) == pytest.approx(50.0)
    assert isinstance(normalized_score(5.0, 0.0, 10.0), float)
    np.testing.assert_allclose(normalized_score([0.0, 10.0, 20.0], 0.0, 10.0), [0.0, 100.0, 200.0])


def test_normalized_score_unknown_refs_is_nan():
    assert math.isnan(normalized_score(5.0, None, 10.0))
    assert math.isnan(normalized_score(5.0, 0.0, None))
    out = normalized_score([1.0, 2.0], None, None)
    assert out.shape == (2,) and np.isnan(out).all()


def test_normalized_score_equal_refs_raise():
    with pytest.raises(OffrlError, match="must differ"):
        normalized_score(1.0, 3.0, 3.0)


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_keys_and_determinism():
    a = evaluate(linear(WEAK), ENV_ID, episodes=3, seed=5, ref_min_score=0.0, ref_max_score=1000.0)
    b = evaluate(linear(WEAK), ENV_ID, episodes=3, seed=5, ref_min_score=0.0, ref_max_score=1000.0)
    assert set(a) == KEYS
    assert a == b
    assert len(a["returns"]) == len(a["lengths"]) == 3
    assert a["return_mean"] == pytest.approx(np.mean(a["returns"]))
    assert a["return_std"] == pytest.approx(np.std(a["returns"]))
    assert a["length_mean"] == pytest.approx(np.mean(a["lengths"]))
    assert a["normalized_score"] == pytest.approx(a["return_mean"] / 10)
    assert len(set(a["returns"])) > 1  # the weak controller's episodes differ by seed


def test_evaluate_same_returns_for_any_num_envs():
    one = evaluate(linear(WEAK), ENV_ID, episodes=4, seed=11, num_envs=1)
    four = evaluate(linear(WEAK), ENV_ID, episodes=4, seed=11, num_envs=4)
    assert one["returns"] == four["returns"]
    assert one["lengths"] == four["lengths"]


def test_evaluate_episode_i_uses_seed_plus_i():
    batch = evaluate(linear(WEAK), ENV_ID, episodes=3, seed=20, num_envs=3)
    for i in range(3):
        single = evaluate(linear(WEAK), ENV_ID, episodes=1, seed=20 + i)
        assert single["returns"] == [batch["returns"][i]]


def test_evaluate_episodes_not_multiple_of_num_envs():
    ref = evaluate(linear(WEAK), ENV_ID, episodes=5, seed=2, num_envs=1)
    for num_envs in (2, 3, 8):
        res = evaluate(linear(WEAK), ENV_ID, episodes=5, seed=2, num_envs=num_envs)
        assert res["returns"] == ref["returns"], num_envs
        assert len(res["lengths"]) == 5


@pytest.mark.parametrize("batched", [False, True])
def test_on_step_sees_exactly_the_steps_of_running_episodes(batched):
    """``on_step`` records one (obs, clipped action) pair per counted step: the padding copies of a
    short last wave and the copies whose episode has ended are masked out."""
    seen_obs, seen_act = [], []

    def on_step(obs, act, alive):
        assert obs.shape[0] == act.shape[0] == alive.shape[0]
        seen_obs.append(obs[alive])
        seen_act.append(act[alive])

    # commands partly beyond the ±1 box of offrl's envs: recorded clipped
    env_id, policy = ("Hopper-v5", lambda obs: 1.5 * np.tanh(3.0 * obs[:, 5:8])) if batched else \
        (ENV_ID, lambda obs: 5.0 * linear(WEAK)(obs))
    res = evaluate(policy, env_id, episodes=5, seed=2, num_envs=3, batched=batched, on_step=on_step)
    obs, act = np.concatenate(seen_obs), np.concatenate(seen_act)
    assert len(obs) == len(act) == sum(res["lengths"])
    np.testing.assert_allclose(act, np.clip(policy(obs), -1.0, 1.0), rtol=1e-6)
    assert np.abs(act).max() == 1.0 and (np.abs(act) < 1.0).any()
    assert res["returns"] == evaluate(policy, env_id, episodes=5, seed=2, num_envs=3, batched=batched)["returns"]


@pytest.mark.parametrize("episodes", [0, -3])
def test_evaluate_rejects_non_positive_episodes(episodes):
    with pytest.raises(OffrlError, match="episodes must be positive"):
        evaluate(zero_policy, ENV_ID, episodes=episodes)


def test_evaluate_unknown_env_raises():
    with pytest.raises(OffrlError, match="unknown environment 'InvertedPendulum-v55'.*InvertedPendulum-v5"):
        evaluate(zero_policy, "InvertedPendulum-v55", episodes=1)


def test_stabilising_gains_reach_1000_and_zero_policy_falls():
    good = evaluate(linear(GAINS), ENV_ID, episodes=2, seed=0, ref_min_score=0.0, ref_max_score=1000.0)
    assert good["returns"] == [1000.0, 1000.0]
    assert good["lengths"] == [1000, 1000]  # the env's default time limit
    assert good["normalized_score"] == pytest.approx(100.0)
    zero = evaluate(zero_policy, ENV_ID, episodes=2, seed=0, ref_min_score=0.0, ref_max_score=1000.0)
    assert max(zero["returns"]) < 100
    assert zero["normalized_score"] < 10


def test_max_episode_steps_override():
    res = evaluate(linear(GAINS), ENV_ID, episodes=2, seed=0, max_episode_steps=50)
    assert res["lengths"] == [50, 50]
    assert res["returns"] == [50.0, 50.0]


def test_policy_gets_batched_observations_and_actions_are_clipped():
    seen = []

    def policy(obs):
        seen.append(obs.shape)
        return np.full((len(obs), 1), 50.0)  # far outside the action box

    res = evaluate(policy, ENV_ID, episodes=3, seed=0, num_envs=2)
    assert all(shape[0] == 2 and shape[1:] == (4,) for shape in seen)
    clipped = evaluate(lambda o: np.ones((len(o), 1)), ENV_ID, episodes=3, seed=0, num_envs=2)
    assert res["returns"] == clipped["returns"]


# ----------------------------------------------------------------------------- batched locomotion
@pytest.mark.parametrize("env_id,limit", [("Hopper-v5", 34), ("Walker2d-v5", 75), ("HalfCheetah-v5", 120)])
def test_batched_locomotion_matches_gymnasium(env_id, limit):
    """The batched path (default for these envs) gives Gymnasium's returns and lengths exactly,
    across waves of different widths, with episodes ending by termination (a fixed random linear
    policy falls over after ~35 / ~75 steps) and by the time limit."""
    from offrl.envs import env_dims

    obs_dim, act_dim = env_dims(env_id)
    w = np.random.default_rng(3).normal(0.0, 0.02, (obs_dim, act_dim))
    policy = lambda o: np.tanh(o @ w)  # noqa: E731
    kw = dict(episodes=5, seed=40, max_episode_steps=limit)
    gym_res = evaluate(policy, env_id, num_envs=2, batched=False, **kw)
    fast = evaluate(policy, env_id, num_envs=3, **kw)
    for k in ("returns", "lengths", "return_mean", "return_std", "length_mean"):
        assert fast[k] == gym_res[k], k
    assert max(fast["lengths"]) == limit
    if env_id != "HalfCheetah-v5":
        assert min(fast["lengths"]) < limit


def test_batched_flag_rejects_other_envs():
    with pytest.raises(OffrlError, match="batched stepping supports"):
        evaluate(zero_policy, ENV_ID, episodes=1, batched=True)
