"""The shipped behaviour policies load and reach their recorded returns (slow: 90 episodes of MuJoCo, ~25 s on 2 cores)."""

import pytest
import torch

from offrl.data import recipes
from offrl.evaluation import evaluate

SHIPPED = [(env, level) for env in recipes.ENVS for level in recipes.POLICY_LEVELS
           if recipes.policy_file(env, level).is_file()]


def test_policy_files_are_small_and_complete():
    for env, level in SHIPPED:
        assert recipes.policy_file(env, level).stat().st_size < 1_000_000
        _, info = recipes.load_behaviour(env, level)
        for key in ("env", "step", "seed", "behaviour_return_mean", "behaviour_return_std", "note"):
            assert key in info, (env, level, key)


@pytest.mark.slow
@pytest.mark.parametrize("env, level", SHIPPED or [pytest.param(None, None, marks=pytest.mark.skip("no policies shipped"))])
def test_shipped_policy_reaches_recorded_return(env, level):
    agent, info = recipes.load_behaviour(env, level)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(1)  # the CPU generator only: the one fork_rng(devices=[]) restores
        res = evaluate(lambda o: agent.explore(o), recipes.ENVS[env], 10, seed=30_000)
    mean, std = info["behaviour_return_mean"], info["behaviour_return_std"]
    # 10 fresh episodes against the recorded 50: within 3 standard errors plus 5 % of the mean
    tol = 3 * std / 10 ** 0.5 + 0.05 * abs(mean) + 5
    assert abs(res["return_mean"] - mean) <= tol, (res["return_mean"], mean, tol)
