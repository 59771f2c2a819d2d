"""Networks: ensembles equal E separate computations, actor densities, init and Polyak averaging."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.distributions import Normal

from offrl.nets import (
    MLP,
    DeterministicActor,
    EnsembleCritic,
    EnsembleLayerNorm,
    EnsembleLinear,
    EnsembleMLP,
    GaussianActor,
    TanhGaussianActor,
    ValueNet,
    gaussian_log_prob,
    orthogonal_init_,
    soft_update_,
    tanh_log_det,
)

E, B, IN, OUT = 3, 7, 5, 4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def member_linear(layer: EnsembleLinear, e: int) -> nn.Linear:
    """Member ``e`` of an ensemble layer as a plain ``nn.Linear`` (weight ``[in, out]`` → ``[out, in]``)."""
    lin = nn.Linear(layer.in_dim, layer.out_dim)
    with torch.no_grad():
        lin.weight.copy_(layer.weight[e].T)
        lin.bias.copy_(layer.bias[e, 0])
    return lin


def member_mlp(ens: EnsembleMLP, e: int) -> nn.Sequential:
    """Member ``e`` of an ensemble MLP as an ordinary ``nn.Sequential``."""
    layers: list[nn.Module] = []
    for m in ens.net:
        if isinstance(m, EnsembleLinear):
            layers.append(member_linear(m, e))
        elif isinstance(m, EnsembleLayerNorm):
            ln = nn.LayerNorm(m.dim, eps=m.eps)
            with torch.no_grad():
                ln.weight.copy_(m.weight[e, 0])
                ln.bias.copy_(m.bias[e, 0])
            layers.append(ln)
        else:
            layers.append(m)
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- ensembles
def test_ensemble_linear_shared_input_equals_separate_layers():
    layer = EnsembleLinear(IN, OUT, E)
    x = torch.randn(B, IN)
    out = layer(x)
    assert out.shape == (E, B, OUT)
    for e in range(E):
        torch.testing.assert_close(out[e], member_linear(layer, e)(x))


def test_ensemble_linear_per_member_input_equals_separate_layers():
    layer = EnsembleLinear(IN, OUT, E)
    x = torch.randn(E, B, IN)
    out = layer(x)
    assert out.shape == (E, B, OUT)
    for e in range(E):
        torch.testing.assert_close(out[e], member_linear(layer, e)(x[e]))


def test_ensemble_linear_init_bound_like_nn_linear():
    layer = EnsembleLinear(16, 8, 4)
    bound = 1 / math.sqrt(16)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    # members are initialised independently
    assert not torch.equal(layer.weight[0], layer.weight[1])


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("shared_input", [True, False])
def test_ensemble_mlp_equals_separate_mlps(layer_norm, shared_input):
    ens = EnsembleMLP(IN, OUT, E, hidden=(8, 6), activation="tanh", layer_norm=layer_norm)
    if layer_norm:  # make every member's affine distinct, so a shared affine would be caught
        with torch.no_grad():
            for m in ens.net:
                if isinstance(m, EnsembleLayerNorm):
                    m.weight.normal_()
                    m.bias.normal_()
    x = torch.randn(B, IN) if shared_input else torch.randn(E, B, IN)
    out = ens(x)
    assert out.shape == (E, B, OUT)
    for e in range(E):
        torch.testing.assert_close(out[e], member_mlp(ens, e)(x if shared_input else x[e]))


def test_ensemble_layer_norm_per_member_affine():
    ln = EnsembleLayerNorm(6, E)
    with torch.no_grad():
        ln.weight.copy_(torch.arange(1.0, E + 1).view(E, 1, 1).expand(E, 1, 6))
        ln.bias.copy_(torch.arange(E, dtype=torch.float32).view(E, 1, 1).expand(E, 1, 6) * 10)
    x = torch.randn(E, B, 6)
    out = ln(x)
    plain = nn.functional.layer_norm(x, (6,))
    for e in range(E):
        torch.testing.assert_close(out[e], (e + 1) * plain[e] + 10 * e)


def test_ensemble_critic_equals_separate_q_functions():
    obs_dim, act_dim = 5, 2
    critic = EnsembleCritic(obs_dim, act_dim, ensemble_size=E, hidden=(8, 8))
    obs, act = torch.randn(B, obs_dim), torch.randn(B, act_dim)
    q = critic(obs, act)
    assert q.shape == (E, B)
    sa = torch.cat([obs, act], -1)
    for e in range(E):
        torch.testing.assert_close(q[e], member_mlp(critic.net, e)(sa).squeeze(-1))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_gradients_reach_only_the_member_used(layer_norm):
    ens = EnsembleMLP(IN, 1, E, hidden=(8,), layer_norm=layer_norm)
    ens(torch.randn(B, IN))[1].sum().backward()
    for name, p in ens.named_parameters():
        assert p.grad is not None, name
        for e in range(E):
            g = p.grad[e]
            if e == 1:
                assert g.abs().sum() > 0, f"{name}: member 1 got no gradient"
            else:
                assert torch.count_nonzero(g) == 0, f"{name}: member {e} got a gradient"


def test_value_net_and_mlp_shapes():
    assert ValueNet(5, (8,))(torch.randn(B, 5)).shape == (B,)
    mlp = MLP(5, None, (8, 6), layer_norm=True, dropout=0.1)
    assert mlp.out_dim == 6 and mlp(torch.randn(B, 5)).shape == (B, 6)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(5, 1, (8,), activation="nope")


# ----------------------------------------------------------------------------- actors
def test_gaussian_actor_log_prob_matches_torch_normal():
    actor = GaussianActor(5, 3, hidden=(8, 8))
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([-1.0, 0.0, 0.5]))
    obs, act = torch.randn(B, 5), torch.rand(B, 3) * 2 - 1
    mean, std = actor(obs)
    expected = Normal(mean, std).log_prob(act).sum(-1)
    torch.testing.assert_close(actor.log_prob(obs, act), expected)
    torch.testing.assert_close(gaussian_log_prob(act, mean, std), expected)
    assert mean.abs().max() < 1  # tanh on the mean
    torch.testing.assert_close(actor.act(obs), mean)


def test_gaussian_actor_log_std_clipped_to_bounds():
    actor = GaussianActor(5, 3, hidden=(8,))
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([-10.0, 0.3, 7.0]))
    _, std = actor(torch.randn(B, 5))
    assert std.shape == (B, 3)
    torch.testing.assert_close(std[0].log(), torch.tensor([-5.0, 0.3, 2.0]))


def test_gaussian_actor_stochastic_act_uses_std():
    actor = GaussianActor(5, 2, hidden=(8,))
    obs = torch.randn(4000, 5)
    mean, _ = actor(obs)
    noise = actor.act(obs, deterministic=False) - mean
    torch.testing.assert_close(noise.std(0), torch.ones(2), atol=0.05, rtol=0)


def test_tanh_gaussian_sample_log_prob_matches_naive_change_of_variables():
    actor = TanhGaussianActor(5, 3, hidden=(16, 16))
    obs = torch.randn(64, 5)
    torch.manual_seed(123)
    action, logp = actor.sample(obs)
    # the same noise again, then the textbook formula
    torch.manual_seed(123)
    mean, log_std = actor(obs)
    u = mean + log_std.exp() * torch.randn_like(mean)
    assert u.abs().max() < 4  # moderate values: the naive formula is accurate there
    torch.testing.assert_close(action, torch.tanh(u))
    naive = Normal(mean, log_std.exp()).log_prob(u).sum(-1) - torch.log(1 - torch.tanh(u) ** 2).sum(-1)
    torch.testing.assert_close(logp, naive, rtol=1e-4, atol=1e-4)
    assert logp.shape == (64,)


def test_tanh_log_det_stable_for_large_inputs():
    u = torch.tensor([[0.0, 30.0, -30.0]])
    out = tanh_log_det(u)
    assert torch.isfinite(out).all()
    # log(1 - tanh(u)^2) = log(4) - 2|u| - 2 log(1 + e^{-2|u|})  (≈ log 4 − 60 for |u| = 30)
    torch.testing.assert_close(out, torch.tensor([0.0 + 2 * (math.log(4) - 60.0)]), rtol=1e-5, atol=1e-4)


def test_tanh_gaussian_log_std_clamped_and_actions_bounded():
    actor = TanhGaussianActor(5, 2, hidden=(8,))
    with torch.no_grad():
        actor.head.bias.copy_(torch.tensor([0.0, 0.0, -50.0, 50.0]))
        actor.head.weight.zero_()
    mean, log_std = actor(torch.randn(B, 5))
    torch.testing.assert_close(log_std[0], torch.tensor([-20.0, 2.0]))
    a = actor.act(torch.randn(B, 5) * 100, deterministic=False)
    assert a.abs().max() <= 1.0
    torch.testing.assert_close(actor.act(torch.randn(B, 5)), torch.tanh(mean))


def test_deterministic_actor_bounds():
    actor = DeterministicActor(5, 3, hidden=(8,), max_action=2.0)
    a = actor(torch.randn(256, 5) * 1000)
    assert a.shape == (256, 3)
    assert a.abs().max() <= 2.0
    assert a.abs().max() > 1.9  # saturates at max_action, not at 1
    torch.testing.assert_close(actor.act(torch.ones(1, 5)), actor(torch.ones(1, 5)))


# ----------------------------------------------------------------------------- utilities
def test_soft_update_is_polyak_average():
    src, tgt = EnsembleCritic(4, 2, 2, (8,)), EnsembleCritic(4, 2, 2, (8,))
    before = [p.clone() for p in tgt.parameters()]
    soft_update_(tgt, src, 0.1)
    for t, s, b in zip(tgt.parameters(), src.parameters(), before):
        torch.testing.assert_close(t, 0.1 * s + 0.9 * b)
    soft_update_(tgt, src, 1.0)
    for t, s in zip(tgt.parameters(), src.parameters()):
        torch.testing.assert_close(t, s)


def _assert_orthogonal(w: torch.Tensor, gain: float) -> None:
    """``w`` is ``[out, in]``: orthonormal rows (out ≤ in) or columns (out > in), times ``gain``."""
    out_dim, in_dim = w.shape
    gram = w @ w.T if out_dim <= in_dim else w.T @ w
    torch.testing.assert_close(gram, gain**2 * torch.eye(min(out_dim, in_dim)), atol=1e-5, rtol=1e-5)


def test_orthogonal_init_nn_linear():
    net = MLP(6, 3, hidden=(6, 10))
    orthogonal_init_(net, gain=math.sqrt(2), last_gain=0.01)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for lin, gain in zip(linears, [math.sqrt(2), math.sqrt(2), 0.01]):
        _assert_orthogonal(lin.weight.detach(), gain)
        assert torch.count_nonzero(lin.bias) == 0
    # the square layer: W Wᵀ = gain² I
    w = linears[0].weight.detach()
    torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(6), atol=1e-5, rtol=1e-5)


def test_orthogonal_init_ensemble_linear():
    ens = EnsembleMLP(6, 3, E, hidden=(6, 10))
    orthogonal_init_(ens, gain=1.5, last_gain=0.1)
    layers = [m for m in ens.modules() if isinstance(m, EnsembleLinear)]
    for layer, gain in zip(layers, [1.5, 1.5, 0.1]):
        for e in range(E):
            _assert_orthogonal(layer.weight[e].detach().T, gain)
        assert torch.count_nonzero(layer.bias) == 0
        assert not torch.allclose(layer.weight[0], layer.weight[1])  # members differ
    w = layers[0].weight[2].detach().T  # square [6, 6]
    torch.testing.assert_close(w @ w.T, 1.5**2 * torch.eye(6), atol=1e-5, rtol=1e-5)
    # an initialised ensemble still equals its separate members
    x = torch.randn(B, 6)
    torch.testing.assert_close(ens(x)[2], member_mlp(ens, 2)(x))
