"""CDSA: the score model on a known Gaussian, the inverse dynamics on a linear system, weight 0 =
the base policy exactly, VaR/CVaR by hand, and the plug-in run through the CLI."""

import json

import numpy as np
import pytest
import torch

from offrl.algos.cdsa import CDSA, Config, var_cvar
from offrl.algos.td3_bc import TD3BC
from offrl.algos.td3_bc import Config as TD3BCConfig
from offrl.buffer import Batch


@pytest.fixture
def base_ckpt(tmp_path):
    torch.manual_seed(0)
    base = TD3BC(TD3BCConfig(hidden=(16,)), 2, 1)
    path = tmp_path / "base.pt"
    base.save(str(path))
    return str(path), base


def make_cdsa(path, **kw):
    torch.manual_seed(1)
    cfg = Config(checkpoint=path, hidden=(64, 64), lr=3e-3, sigma_min=0.05, sigma_max=1.0, num_sigmas=6, **kw)
    return CDSA(cfg, 2, 1)


MU = torch.tensor([1.0, -2.0])
STD = torch.tensor([0.5, 1.0])
A = torch.tensor([[0.9, 0.1], [-0.2, 0.8]])
B = torch.tensor([0.5, -1.0])


def linear_batch(g, n=256):
    x = MU + STD * torch.randn(n, 2, generator=g)
    a = torch.rand(n, 1, generator=g) * 1.6 - 0.8
    x2 = x @ A.T + a * B
    return Batch(x, a, torch.zeros(n), x2, torch.zeros(n))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    base = TD3BC(TD3BCConfig(hidden=(16,)), 2, 1)
    path = str(tmp_path_factory.mktemp("cdsa") / "base.pt")
    base.save(path)
    agent = make_cdsa(path)
    g = torch.Generator().manual_seed(2)
    for _ in range(1500):
        agent.update(linear_batch(g))
    return agent


def test_score_points_to_the_mean_and_matches_the_gaussian_score(trained):
    """At every noise level σ the model's score ≈ −(x − μ)/(σ_x² + σ²), the score of the
    σ-perturbed Gaussian (measured: median relative error 5–20 % for σ ≥ 0.09, 36 % at σ = 0.05,
    where denoising score matching is noisiest; direction cosine ≥ 0.98 everywhere)."""
    g = torch.Generator().manual_seed(3)
    x = MU + STD * torch.randn(200, 2, generator=g)
    for sigma in trained.sigmas.tolist():
        with torch.no_grad():
            s = trained.score_fn(x, torch.full((200, 1), sigma))
        truth = -(x - MU) / (STD ** 2 + sigma ** 2)
        cos = torch.nn.functional.cosine_similarity(s, truth, dim=1)
        assert cos.median() > 0.97, sigma
        rel = ((s - truth).norm(dim=1) / truth.norm(dim=1).clamp(min=0.5)).median()
        assert rel < (0.3 if sigma >= 0.09 else 0.5), (sigma, rel)
        toward = ((MU - x) * s).sum(1) > 0  # a step along the score moves toward the mean
        assert toward.float().mean() > 0.9


def test_inverse_dynamics_recovers_actions_on_a_linear_system(trained):
    g = torch.Generator().manual_seed(4)
    batch = linear_batch(g, 500)
    with torch.no_grad():
        pred = trained.inverse_model(torch.cat([batch.obs, batch.next_obs], -1))
        fwd = trained.forward_model(torch.cat([batch.obs, batch.act], -1))
    assert (pred - batch.act).abs().mean() < 0.05
    assert (fwd - (batch.next_obs - batch.obs)).abs().mean() < 0.1


def test_weight_zero_is_exactly_the_base_policy(base_ckpt):
    path, base = base_ckpt
    agent = make_cdsa(path, weight=0.0)
    obs = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32) * 3
    assert np.array_equal(agent.act(obs), base.act(obs))
    agent.cfg.weight = 1.0
    assert not np.array_equal(agent.act(obs), base.act(obs))  # an untrained correction moves the actions


def test_var_cvar_by_hand():
    returns = [10, 1, 7, 3, 9, 2, 8, 4, 6, 5]
    assert var_cvar(returns, 0.1) == (1.0, 1.0)
    assert var_cvar(returns, 0.3) == (3.0, 2.0)


def test_cdsa_over_an_iql_checkpoint_through_the_cli(use_scripted, tmp_path, capsys):
    from offrl.cli import main

    base_dir = tmp_path / "iql"
    assert main(["train", "iql", "--dataset", "offrl/invertedpendulum/scripted-v0", "--steps", "20", "--hidden", "16", "16", "--batch-size", "16", "--eval-every", "0",
                 "--eval-episodes", "1", "--progress", "False", "--run-dir", str(base_dir)]) == 0
    run_dir = tmp_path / "cdsa"
    assert main(["train", "cdsa", "--checkpoint", str(base_dir / "checkpoint.pt"), "--steps", "30", "--hidden", "16", "16",
                 "--batch-size", "16", "--eval-every", "0", "--eval-episodes", "1", "--compare-episodes", "3",
                 "--progress", "False", "--run-dir", str(run_dir)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["dataset"] == "offrl/invertedpendulum/scripted-v0"
    comp = json.load(open(run_dir / "comparison.json"))
    assert set(comp) == {"base", "cdsa"} and len(comp["base"]["returns"]) == 3
    assert {"var_0.1", "cvar_0.1", "normalized_score"} <= set(comp["cdsa"])
    # the checkpoint carries its base: it loads, evaluates and acts without the base file
    (base_dir / "checkpoint.pt").unlink()
    agent = CDSA.load(str(run_dir / "checkpoint.pt"), device="cpu")
    assert agent.act(np.zeros(4, np.float32)).shape == (1,)
    assert main(["eval", str(run_dir / "checkpoint.pt"), "--episodes", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["returns"]) == 2


def test_cdsa_needs_a_base(use_scripted, capsys):
    from offrl.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "cdsa", "--steps", "5"])
    assert e.value.code == 2 and "--checkpoint (the base policy) is required" in capsys.readouterr().err
