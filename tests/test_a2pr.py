"""A2PR: V target, masked VAE loss and the advantage-chosen constraint against hand computations
(numpy, float64) on tiny nets, the 0/mask weighting (official bool + bool: an OR), gradients through
the VAE, presets."""

import numpy as np
import pytest
import torch
from test_td3_family import np_actor, np_batch, np_critic, tiny_batch

from offrl.algos.a2pr import A2PR, Config, preset_for


def np_linear(lin, x):
    return x @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()


def np_mlp(mlp, x):
    """An offrl MLP by hand: its Sequential of Linear and ReLU layers."""
    for layer in mlp.net:
        x = np_linear(layer, x) if isinstance(layer, torch.nn.Linear) else np.maximum(x, 0)
    return x


def np_vae(vae, s, a, eps):
    h = np_mlp(vae.encoder, np.concatenate([s, a], 1))
    mean = np_linear(vae.mean, h)
    std = np.exp(np.clip(np_linear(vae.log_std, h), -4, 15))
    z = mean + std * eps
    return np.tanh(np_mlp(vae.decoder, np.concatenate([s, z], 1))), mean, std


def np_value(value, s):
    return np_mlp(value.net, s)[:, 0]


def tiny_agent(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = Config(hidden=(6,), actor_hidden=(5,), vae_hidden=(7,), alpha=2.5, vae_weight=1.5, mask=0.4,
                 discount=0.9, **kw)
    return A2PR(cfg, 3, 2)


def test_value_and_vae_losses_by_hand():
    agent = tiny_agent()
    batch = tiny_batch()
    s, a, r, s2, d = np_batch(batch)
    y_t = r + 1.0  # any target-critic bootstrap: V regresses on min(y_T, y_C)
    next_act = torch.rand(6, 2) * 2 - 1
    y_c = r + 0.9 * (1 - d) * np_critic(agent.critic, s2, next_act.double().numpy()).min(0)
    v = np_value(agent.value, s)
    expected_v = ((v - np.minimum(y_t, y_c)) ** 2).mean()
    q1 = np_critic(agent.critic, s, a)[0]
    keep = (q1 > v).astype(float)  # V before its update
    torch.manual_seed(11)
    eps = torch.randn(6, 4).double().numpy()
    recon, mean, std = np_vae(agent.vae, s, a, eps)
    recon_loss = (1.5 * keep[:, None] * (recon - a) ** 2).mean()
    kl = (-0.5 * (1 + np.log(std ** 2) - mean ** 2 - std ** 2)).mean()
    torch.manual_seed(11)
    m, (v_old, q_data) = agent.extra_update(batch, torch.as_tensor(y_t, dtype=torch.float32), next_act)
    assert m["value_loss"].item() == pytest.approx(expected_v, rel=1e-5)
    np.testing.assert_allclose(v_old.numpy(), v, rtol=1e-5)
    np.testing.assert_allclose(q_data.numpy(), q1, rtol=1e-5)
    assert m["vae_recon_loss"].item() == pytest.approx(recon_loss, rel=1e-5)
    assert m["vae_kl"].item() == pytest.approx(kl, rel=1e-5)
    assert m["vae_loss"].item() == pytest.approx(recon_loss + 0.5 * kl, rel=1e-5)
    assert 0 < keep.sum() < 6  # the mask is exercised both ways


def test_actor_loss_by_hand_and_weights():
    """Rows forced into each case of (Q₁(s, ã) ≥ V, Q₁(s, a) > V): neither, only ã, only a, both
    (twice, once with each target). The weight is mask where either holds — never 2·mask."""
    agent = tiny_agent(seed=4)
    batch = tiny_batch(seed=5)
    s, a = np_batch(batch)[:2]
    pi = np_actor(agent, s)
    q_pi = np_critic(agent.critic, s, pi)[0]
    lam = 2.5 / np.abs(q_pi).mean()
    torch.manual_seed(3)
    eps = torch.randn(6, 4).double().numpy()
    recon_pi, _, _ = np_vae(agent.vae, s, pi, eps)
    q_recon = np_critic(agent.critic, s, recon_pi)[0]
    # V and Q₁(s, a) placed around Q₁(s, ã), margins far above float32 rounding
    v = q_recon + np.array([1.0, -1.0, 1.0, -1.0, -2.0, 1.0])
    q_data = q_recon + np.array([0.5, -2.0, 2.0, 1.0, -1.0, -1.0])
    # rows:          neither  only ã  only a  both  both  neither
    weight = np.array([0.0,    0.4,    0.4,    0.4,  0.4,  0.0])
    use_recon = np.array([False, True, False, False, True, True])  # A_π ≥ A_D, i.e. Q₁(s, ã) ≥ Q₁(s, a)
    target = np.where(use_recon[:, None], recon_pi, a)
    sq = ((pi - target) ** 2).mean(1)
    constraint = (weight * sq).mean()
    expected = -lam * q_pi.mean() + constraint
    doubled = -lam * q_pi.mean() + (np.array([0.0, 0.4, 0.4, 0.8, 0.8, 0.0]) * sq).mean()
    assert abs(doubled - expected) > 1e-3 * abs(expected)  # the test tells the two rules apart
    aux = (torch.as_tensor(v, dtype=torch.float32), torch.as_tensor(q_data, dtype=torch.float32))
    torch.manual_seed(3)
    loss, m = agent.actor_loss(batch, aux)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert m["constraint_loss"].item() == pytest.approx(constraint, rel=1e-4)
    assert m["weight_mean"].item() == pytest.approx(0.4 * 4 / 6, rel=1e-6)
    assert m["recon_chosen"].item() == pytest.approx(3 / 6)
    assert m["lambda"].item() == pytest.approx(lam, rel=1e-5)


def test_constraint_gradient_flows_through_the_vae_reconstruction():
    agent = tiny_agent(seed=6, policy_freq=1)
    batch = tiny_batch(seed=7)
    aux = (torch.full((6,), -1e6), torch.full((6,), -1e7))  # Q₁(s,a) far below V: ã is always the target
    agent.critic.requires_grad_(False)
    agent.cfg.alpha = 0.0  # the constraint alone
    torch.manual_seed(0)
    loss, m = agent.actor_loss(batch, aux)
    assert m["recon_chosen"].item() == 1.0
    g_full = torch.autograd.grad(loss, list(agent.actor.parameters()))
    # the same loss with ã detached has a different gradient: the official code lets it flow through
    torch.manual_seed(0)
    pi = agent.actor(batch.obs)
    with torch.no_grad():
        recon, _, _ = agent.vae(batch.obs, pi)
    detached = (0.4 * 1.0 * (pi - recon).square()).mean()  # weight: q_recon ≥ V (1) + q_data > V (0)
    g_det = torch.autograd.grad(detached, list(agent.actor.parameters()))
    assert loss.item() == pytest.approx(detached.item(), rel=1e-5)
    assert any(not torch.allclose(x, y) for x, y in zip(g_full, g_det))
    assert all(p.grad is None for p in agent.vae.parameters())  # the VAE itself is not trained by the actor loss


def test_presets_and_architecture():
    assert preset_for("offrl/hopper/medium-replay-v0") == (2.5, 1.0, 0.4, 0.995)
    assert preset_for("halfcheetah-medium-v2") == (40.0, 1.0, 1.0, 0.99)
    assert preset_for("walker2d-medium-expert-v2") == (2.5, 1.5, 1.0, 0.99)
    cfg = Config(dataset="offrl/hopper/medium-v0")
    cfg.resolve(None)
    agent = A2PR(cfg, 11, 3)
    actor_layers = [m for m in agent.actor.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in actor_layers] == [256, 256, 256, 3]
    critic_layers = [m for m in agent.critic.modules() if type(m).__name__ == "EnsembleLinear"]
    assert [m.out_dim for m in critic_layers] == [256, 256, 256, 256, 1]
    assert [m.out_features for m in agent.value.modules() if isinstance(m, torch.nn.Linear)] == [256] * 4 + [1]
    assert agent.vae.latent_dim == 6 and agent.vae.mean.in_features == 750
    assert agent.optimizers["vae"].param_groups[0]["lr"] == 1e-3
