"""The dynamics-model ensemble (offrl/models.py): one batched forward equals the members run one by
one, the loss against a hand computation, elite selection and best-weight restore, early stopping,
a fit of a small known linear system, resumable training, and the Gymnasium v5 termination
functions against hand cases and the real envs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from offrl.models import (DynamicsTrainer, EnsembleDynamics, dynamics_targets, hopper_termination, never_terminates,
                          nll_loss, soft_clamp, termination_fn, walker2d_termination)


def test_architecture_and_batched_forward_equals_each_member():
    torch.manual_seed(0)
    m = EnsembleDynamics(3, 2)
    assert m.num_models == 7 and m.num_elites == 5 and len(m.layers) == 5
    assert [tuple(layer.weight.shape) for layer in m.layers] == [(7, 5, 200), (7, 200, 200), (7, 200, 200),
                                                                 (7, 200, 200), (7, 200, 8)]
    assert all(torch.equal(layer.bias, torch.zeros_like(layer.bias)) for layer in m.layers)
    x = torch.randn(6, 5)
    mean, logvar = m(x)
    assert mean.shape == logvar.shape == (7, 6, 4)
    for e in (0, 4, 6):  # member e by hand: x W_e + b_e, Swish, ..., soft-clamped log-variance
        h = x
        for layer in m.layers[:-1]:
            h = h @ layer.weight[e] + layer.bias[e]
            h = h * torch.sigmoid(h)
        out = h @ m.layers[-1].weight[e] + m.layers[-1].bias[e]
        mu, lv = out[:, :4], out[:, 4:]
        lv = 0.5 - F.softplus(0.5 - lv)
        lv = -10.0 + F.softplus(lv + 10.0)
        assert torch.allclose(mean[e], mu, atol=1e-5) and torch.allclose(logvar[e], lv, atol=1e-5)
    # soft clamp: the upper bound first, then the lower one (so the top can pass 0.5 by softplus(-10.5) ≈ 3e-5)
    y = soft_clamp(torch.tensor([-100.0, 0.0, 100.0]), torch.tensor(-10.0), torch.tensor(0.5))
    hi = 0.5 - math.log1p(math.exp(0.5))
    assert y[1].item() == pytest.approx(-10 + math.log1p(math.exp(hi + 10)), rel=1e-5)
    assert y[0].item() == pytest.approx(-10.0, abs=1e-4) and y[2].item() == pytest.approx(0.5, abs=1e-4)


def test_nll_loss_matches_hand_computation():
    mean = torch.tensor([[[1.0, 2.0]], [[0.0, 0.0]]])  # 2 members, 1 row, 2 dims
    logvar = torch.tensor([[[0.0, math.log(4.0)]], [[math.log(0.5), 0.0]]])
    target = torch.tensor([[0.0, 0.0]])
    # member 0: ((1 - 0)^2 / 1 + (2 - 0)^2 / 4) / 2 + (0 + log 4) / 2 = 1 + log(4)/2
    # member 1: (0 + 0) / 2 + (log 0.5 + 0) / 2
    expected = 1.0 + math.log(4.0) / 2 + math.log(0.5) / 2
    assert nll_loss(mean, logvar, target).item() == pytest.approx(expected, rel=1e-6)


def test_elites_are_the_lowest_holdout_losses_and_saved_weights_come_back():
    torch.manual_seed(0)
    m = EnsembleDynamics(2, 1, num_models=5, num_elites=3, hidden=(8,), weight_decay=(0.0, 0.0))
    m.set_elites(torch.tensor([0.5, 0.1, 0.9, 0.1, 0.3]))
    assert m.elites.tolist() == [1, 3, 4]  # ties broken by the lower index
    before = [layer.weight.detach().clone() for layer in m.layers]
    m.save_members(torch.tensor([True, False, False, True, False]))
    with torch.no_grad():
        for layer in m.layers:
            layer.weight.add_(1.0)
    m.save_members(torch.tensor([False, True, False, False, False]))  # member 1 keeps the changed weights
    m.load_saved()
    for layer, w0 in zip(m.layers, before):
        assert torch.equal(layer.weight[[0, 2, 3, 4]], w0[[0, 2, 3, 4]])  # 0, 3 saved unchanged; 2, 4 never re-saved
        assert torch.equal(layer.weight[1], w0[1] + 1.0)


def test_step_uses_elites_and_adds_the_observation():
    torch.manual_seed(0)
    m = EnsembleDynamics(2, 1, num_models=4, num_elites=1, hidden=(8,), weight_decay=(0.0, 0.0))
    m.elites.fill_(2)
    with torch.no_grad():
        m.min_logvar.fill_(-60.0)
        m.max_logvar.fill_(-50.0)  # σ ≈ 0: the step is the elite's mean
    obs, act = torch.randn(5, 2), torch.randn(5, 1)
    next_obs, rew = m.step(obs, act, torch.Generator().manual_seed(0))
    mean, _ = m(m.scale(obs, act))
    assert torch.allclose(next_obs, obs + mean[2, :, :2], atol=1e-6) and torch.allclose(rew, mean[2, :, 2], atol=1e-6)


def _linear_system(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    A = np.array([[0.9, 0.2], [-0.1, 0.8]])
    B = np.array([[0.5], [-0.3]])
    obs = rng.normal(size=(n, 2))
    act = rng.uniform(-1, 1, size=(n, 1))
    next_obs = obs @ A.T + act @ B.T + 0.01 * rng.normal(size=(n, 2))
    rew = obs[:, 0] - 0.5 * act[:, 0]
    return [torch.as_tensor(x, dtype=torch.float32) for x in (obs, act, rew, next_obs)]


def test_fit_of_a_small_linear_system_with_early_stopping():
    torch.manual_seed(0)
    obs, act, rew, next_obs = _linear_system()
    inputs, targets = dynamics_targets(obs, act, rew, next_obs)
    m = EnsembleDynamics(2, 1, num_models=3, num_elites=2, hidden=(32, 32), weight_decay=(0.0, 0.0, 0.0))
    trainer = DynamicsTrainer(m, torch.optim.Adam(m.parameters(), lr=1e-3), batch_size=256, max_epochs=60)
    gen = torch.Generator().manual_seed(0)
    first = trainer.epoch(inputs, targets, gen)
    while not trainer.done:
        last = trainer.epoch(inputs, targets, gen)
    assert len(trainer.holdout_idx) == 600 and trainer.epochs <= 60
    assert last["model_best_holdout_loss"].item() < 0.05 * first["model_holdout_loss"].item()
    # the elites are the members with the lowest best holdout loss, and the restored weights reach it
    assert set(m.elites.tolist()) == set(torch.argsort(trainer.holdout_losses)[:2].tolist())
    assert torch.allclose(trainer.validate(inputs, targets), trainer.holdout_losses, rtol=1e-5)
    # prediction on fresh points of the known system (measured: 60 epochs, holdout MSE 0.386 → 8e-5,
    # mean abs error 0.0086 on s', 0.0031 on r)
    o2, a2, r2, n2 = _linear_system(200, seed=1)
    mean, std = m.predict(o2, a2)
    err = (mean[m.elites, :, :2] - n2).abs().mean().item()
    assert err < 0.1 and (mean[m.elites, :, 2] - r2).abs().mean().item() < 0.1


def test_trainer_stops_after_epochs_without_improvement_and_resumes_exactly():
    obs, act, rew, next_obs = _linear_system(600)
    inputs, targets = dynamics_targets(obs, act, rew, next_obs)

    def make():
        torch.manual_seed(1)
        m = EnsembleDynamics(2, 1, num_models=3, num_elites=2, hidden=(16,), weight_decay=(0.0, 0.0))
        return m, DynamicsTrainer(m, torch.optim.Adam(m.parameters(), lr=1e-3), batch_size=64, max_epochs=6)

    m1, t1 = make()
    g1 = torch.Generator().manual_seed(3)
    while not t1.done:
        t1.epoch(inputs, targets, g1)
    assert t1.epochs == 6  # max_epochs
    m2, t2 = make()
    g2 = torch.Generator().manual_seed(3)
    calls = []
    for _ in range(3):  # with the progress callback: it sees every minibatch and changes nothing
        t2.epoch(inputs, targets, g2, on_batch=lambda done, total: calls.append((done, total)))
    # 600 rows, 120 held out, 480 per member's resample, batches of 64: 8 per epoch
    assert calls == [(i, 8) for i in range(1, 9)] * 3
    saved = ({k: v.clone() for k, v in m2.state_dict().items()}, t2.optimizer.state_dict(), t2.state_dict(), g2.get_state())
    m3, t3 = make()
    m3.load_state_dict(saved[0])
    t3.optimizer.load_state_dict(saved[1])
    t3.load_state_dict(saved[2])
    g3 = torch.Generator().manual_seed(0)
    g3.set_state(saved[3])
    while not t3.done:
        t3.epoch(inputs, targets, g3)
    assert all(torch.equal(v, m3.state_dict()[k]) for k, v in m1.state_dict().items())
    # no improvement at all: stops after max_epochs_since_update epochs
    m4, t4 = make()
    t4.max_epochs, t4.improvement = None, float("inf")
    g4 = torch.Generator().manual_seed(0)
    while not t4.done:
        t4.epoch(inputs, targets, g4)
    assert t4.epochs == 5


# ------------------------------------------------------------------------------------ termination
def test_hopper_termination_hand_cases():
    fn = hopper_termination()
    ok = [1.25, 0.0, 0.1, -0.1, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    cases = {
        "healthy": (ok, False),
        "fallen (z = 0.7)": ([0.7] + ok[1:], True),
        "tilted (θ = 0.2)": (ok[:1] + [0.2] + ok[2:], True),
        "tilted back (θ = -0.21)": (ok[:1] + [-0.21] + ok[2:], True),
        "velocity 100": (ok[:5] + [100.0] + ok[6:], True),
        "velocity -99": (ok[:5] + [-99.0] + ok[6:], False),
        "NaN": (ok[:3] + [float("nan")] + ok[4:], True),
        "very tall (z = 50)": ([50.0] + ok[1:], False),
    }
    out = fn(torch.tensor([c for c, _ in cases.values()]))
    assert out.tolist() == [d for _, d in cases.values()]


def test_walker2d_and_halfcheetah_termination_hand_cases():
    fn = walker2d_termination()
    ok = [1.2, 0.5] + [0.0] * 15
    rows = [ok, [0.8] + ok[1:], [2.0] + ok[1:], [1.99] + ok[1:], ok[:1] + [-1.0] + ok[2:], ok[:1] + [0.99] + ok[2:],
            ok[:5] + [500.0] + ok[6:]]
    assert fn(torch.tensor(rows)).tolist() == [False, True, True, False, True, False, False]  # no state range in v5
    assert never_terminates(torch.full((3, 17), 1e6)).tolist() == [False, False, False]
    assert termination_fn("HalfCheetah-v5") is never_terminates and termination_fn(None) is never_terminates


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Walker2d-v5"])
def test_termination_fn_agrees_with_the_env(env_id):
    """The env's own terminated flag and the function on the env's observations, along random rollouts."""
    import gymnasium as gym

    env = gym.make(env_id)
    fn = termination_fn(env_id)
    rng = np.random.default_rng(0)
    agree = ends = steps = 0
    for ep in range(6):
        env.reset(seed=ep)
        for _ in range(300):
            obs, _, term, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
            agree += bool(fn(torch.as_tensor(obs, dtype=torch.float64)[None])[0]) == term
            ends += term
            steps += 1
            if term or trunc:
                break
    env.close()
    assert ends == 6 and agree == steps  # every step agreed, and every episode ended by termination


def test_step_samples_each_row_from_one_elite_with_the_members_own_noise():
    torch.manual_seed(0)
    m = EnsembleDynamics(2, 1, num_models=4, num_elites=2, hidden=(8,), weight_decay=(0.0, 0.0))
    m.elites.copy_(torch.tensor([3, 1]))
    obs, act = torch.randn(50, 2), torch.randn(50, 1)
    gen = torch.Generator().manual_seed(5)
    next_obs, rew = m.step(obs, act, gen)
    mean, std = m.predict(obs, act)  # [E, B, 3] with s added back
    z = (torch.cat([next_obs, rew[:, None]], -1)[None] - mean) / std  # the standardized noise under each member
    # the row's noise reproduced from the same generator stream: pick, then noise in elite-sorted order
    gen = torch.Generator().manual_seed(5)
    pick = torch.randint(0, 2, (50,), generator=gen)
    order = torch.argsort(pick, stable=True)
    noise = torch.empty(50, 3)
    noise[order] = torch.randn(50, 3, generator=gen)
    member = m.elites[pick]
    assert torch.allclose(z[member, torch.arange(50)], noise, atol=1e-4)
    assert set(member.tolist()) == {1, 3}
    # the ungrouped layout (every elite on every row, the GPU default) uses the same numbers the same way
    full = m.step(obs, act, torch.Generator().manual_seed(5), grouped=False)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full, (next_obs, rew)))
