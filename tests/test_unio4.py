"""Uni-O4: the data as the official code reads it, every loss against a hand computation (joint BC,
the clipped objective against the reference policy, the IQL and MC/SARSA critics), the OPE gate,
the online member selection, the density-greedy ensemble, the online PPO pieces, exact resume in
every stage, the script, and learning."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_cli import SCRIPTED
from test_signals import _rows, _signal_at, default_handlers  # noqa: F401  (autouse: default signal handlers)

from offrl import logger as logger_mod
from offrl.algos import unio4
from offrl.algos.unio4 import (Config, RewardScaling, UniO4, clipped_objective, gaussian_logp, joint_bc_loss,
                               member_grad_clip_, normalize_advantage, official_rows, scale_dataset_rewards,
                               task_of, weighted_advantage)
from offrl.buffer import Batch
from offrl.data import Dataset
from offrl.errors import TrainingInterrupted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(q_hidden=(16, 16), v_hidden=(16, 16), bc_hidden=(16, 16), model_hidden=(16, 16), value_hidden=(16, 16),
             num_members=3, ope_states=8, ope_horizon=4)
TINY = dict(dataset=SCRIPTED, **SMALL, critic_steps=12, model_max_epochs=3, model_patience=100, bc_steps=10,
            improve_steps=12, ope_every=4, member_eval_every=6, member_eval_episodes=1, value_steps=6,
            reward_scale="dynamic", online_steps=128, online_num_steps=64, online_minibatch=16, online_epochs=2,
            batch_size=32, eval_every=1000, eval_episodes=1, log_every=4, checkpoint_every=10_000, progress=False,
            threads=1)


def _agent(**kw) -> UniO4:
    cfg = Config(dataset=SCRIPTED, **{**SMALL, **kw})
    cfg.resolve(None)
    torch.manual_seed(0)
    return UniO4(cfg, 4, 2, obs_mean=np.array([0.5, -1.0, 0.0, 2.0], np.float32),
                 obs_std=np.array([2.0, 1.0, 0.5, 1.0], np.float32))


def _batch(n=6, seed=0, obs_dim=4, act_dim=2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    done = torch.zeros(n)
    done[1] = 1.0  # a terminal row: no bootstrap
    return Batch(torch.randn(n, obs_dim, generator=g), torch.rand(n, act_dim, generator=g) * 2 - 1,
                 torch.randn(n, generator=g), torch.randn(n, obs_dim, generator=g), done,
                 next_act=torch.rand(n, act_dim, generator=g) * 2 - 1, ret=torch.randn(n, generator=g),
                 scaled_ret=torch.randn(n, generator=g))


# ------------------------------------------------------------------------------------ data
def test_official_rows_consecutive_pairs_timeouts_terminal_mc_returns_and_state_stats():
    obs = np.arange(12, dtype=np.float32).reshape(6, 2)
    ds = Dataset(observations=obs, actions=np.arange(6, dtype=np.float32).reshape(6, 1) / 10,
                 rewards=np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), next_observations=obs + 100,
                 terminals=np.array([0, 0, 1, 0, 0, 0]), timeouts=np.array([0, 0, 0, 0, 1, 0]))
    rows = official_rows(ds, 0.5, state_norm=True)
    assert np.array_equal(rows.obs, obs[:5]) and np.array_equal(rows.next_obs, obs[1:])  # s' = next row, not next_obs
    assert np.allclose(rows.next_act[:, 0], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert rows.not_done.tolist() == [1, 1, 0, 1, 0]  # the timeout (row 4) is terminal too
    # G = r + 0.5·not_done·G': rows 0-2: 1 + 0.5(2 + 0.5·3) = 2.75, 2 + 1.5 = 3.5, 3; rows 3-4: 4 + 2.5 = 6.5, 5
    assert np.allclose(rows.ret, [2.75, 3.5, 3.0, 6.5, 5.0])
    assert np.allclose(rows.obs_mean, obs[:5].mean(0)) and np.allclose(rows.obs_std, obs[:5].std(0) + 1e-10)
    assert official_rows(ds, 0.5, state_norm=False).obs_mean is None
    d = rows.dataset({"id": "x"})
    assert d.terminals.tolist() == [0, 0, 1, 0, 1] and len(d) == 5


def test_reward_scaling_matches_the_official_welford_and_skips_episode_ends():
    rewards = np.array([1.0, 2.0, -1.0, 3.0, 0.5, 2.0])
    not_done = np.array([1, 1, 0, 1, 1, 0], np.float32)
    g = 0.9
    # by hand: n, mean, S (starts at 1), std (1 until the second sample); R reset and row unscaled at ends
    out, n, mean, S, std, R = [], 0, 0.0, 1.0, 1.0, 0.0
    for r, nd in zip(rewards, not_done):
        if not nd:
            R = 0.0
            out.append(r)
            continue
        R = g * R + r
        n += 1
        if n == 1:
            mean = R
        else:
            old = mean
            mean = old + (R - old) / n
            S += (R - old) * (R - mean)
            std = math.sqrt(S / n)
        out.append(r / (std + 1e-8))
    scaler = RewardScaling(g)
    got = scale_dataset_rewards(rewards, not_done, "dynamic", g, scaler)
    assert np.allclose(got, out, rtol=1e-6) and got[2] == -1.0 and got[5] == 2.0
    assert scaler.n.item() == 4 and scaler.std.item() == pytest.approx(std)
    # online: the module continues the same statistics
    x = scaler(torch.tensor(1.5, dtype=torch.float64)).item()
    R, n = 1.5, 5  # R was reset by the last (terminal) row
    old = mean
    mean = old + (R - old) / n
    S += (R - old) * (R - mean)
    assert x == pytest.approx(1.5 / (math.sqrt(S / n) + 1e-8))
    assert np.allclose(scale_dataset_rewards(rewards, not_done, "number", g), rewards * 0.1)


def test_presets_follow_the_task_scripts():
    assert task_of("offrl/hopper/medium-replay-v0") == ("hopper", "medium-replay")
    assert task_of("halfcheetah-medium-expert-v2") == ("halfcheetah", "medium-expert")
    c = Config(dataset="offrl/halfcheetah/medium-replay-v0")
    c.resolve(None)
    assert (c.state_norm, c.pi_activation, c.online_epochs, c.online_actor_lr, c.reward_scale, c.critic_steps) == \
        ("off", "tanh", 20, 3e-5, "dynamic", 2_000_000)
    c = Config(dataset="offrl/walker2d/medium-replay-v0")
    c.resolve(None)
    assert (c.state_norm, c.pi_activation, c.online_epochs, c.reward_scale, c.critic_steps) == ("on", "relu", 30, "none", 500_000)
    c = Config(dataset="offrl/hopper/medium-v0", online_epochs=3)
    c.resolve(None)
    assert (c.online_epochs, c.online_actor_lr, c.reward_scale) == (3, 2e-5, "number")
    # halfm.sh: --is_iql, tanh; halfme.sh: neither (the MC-V + SARSA critic, ReLU); hm.sh: --is_iql, ReLU
    for dataset, want in [("offrl/halfcheetah/medium-v0", ("iql", "tanh")), ("offrl/halfcheetah/medium-expert-v0", ("mc-sarsa", "relu")),
                          ("offrl/hopper/medium-v0", ("iql", "relu"))]:
        c = Config(dataset=dataset)
        c.resolve(None)
        assert (c.critic, c.pi_activation) == want, dataset
    c = Config(dataset="offrl/halfcheetah/medium-expert-v0", critic="iql", pi_activation="tanh")
    c.resolve(None)
    assert (c.critic, c.pi_activation) == ("iql", "tanh")  # set on the command line: kept


# ------------------------------------------------------------------------------------ losses
def test_joint_bc_loss_matches_hand_computation_and_its_gradient_is_scaled_nll():
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -0.5], [-4.0, -1.0]])
    loss, best = joint_bc_loss(logp, alpha=0.1)
    # max over the others: member 0: max(-2, -4) = -2, max(-0.5, -1) = -0.5; member 1: -1, -1; member 2: -1, -0.5
    assert best.tolist() == [[-2.0, -0.5], [-1.0, -1.0], [-1.0, -0.5]]
    # L = -logp - 0.1 (logp - best), averaged over the batch
    hand = [((1 - 0.1 * 1.0) + (3 - 0.1 * -2.5)) / 2, ((2 - 0.1 * -1.0) + (0.5 - 0.1 * 0.5)) / 2,
            ((4 - 0.1 * -3.0) + (1 - 0.1 * -0.5)) / 2]
    assert torch.allclose(loss, torch.tensor(hand))
    assert torch.allclose(joint_bc_loss(logp, 0.0)[0], -logp.mean(-1))
    # the max is detached: the gradient of L_i is (1 + α) times the gradient of the NLL
    agent = _agent()
    b = _batch()
    s = agent.normalize_obs(b.obs)
    lp = agent.pi.log_prob(s, b.act)
    joint_bc_loss(lp, 0.1)[0].sum().backward()
    g_joint = [p.grad.clone() for p in agent.pi.parameters()]
    agent.pi.zero_grad()
    (-agent.pi.log_prob(s, b.act)).mean(-1).sum().backward()
    for gj, gn in zip(g_joint, (p.grad for p in agent.pi.parameters())):
        assert torch.allclose(gj, 1.1 * gn, atol=1e-6)


def test_bc_ensemble_architecture_and_log_std_range():
    agent = _agent()
    linears = [m for m in agent.pi.net.modules() if hasattr(m, "ensemble_size") and hasattr(m, "weight")]
    assert [tuple(m.weight.shape) for m in linears] == [(3, 4, 16), (3, 16, 16), (3, 16, 4)]
    for m in linears:
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
        w = m.weight[1].T  # [out, in] of member 1: orthogonal with gain 1
        eye = torch.eye(min(w.shape))
        assert torch.allclose(w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w, eye, atol=1e-5)
    mean, log_std = agent.pi(torch.randn(50, 4) * 100)
    assert mean.abs().max() <= 1 and log_std.min() >= -5 and log_std.max() <= 0
    out = torch.tanh(agent.pi.net(torch.ones(1, 4)))
    assert torch.allclose(agent.pi(torch.ones(1, 4))[1], -5 + 2.5 * (out[..., 2:] + 1))
    # online quirk: tanh again → [-5 + 2.5(tanh(-1) + 1), -5 + 2.5(tanh(1) + 1)] ≈ [-4.40, -0.60]
    agent.online_actor.copy_member_(agent.pi, 1)
    assert torch.allclose(agent.online_actor(torch.ones(1, 4))[1][0], -5 + 2.5 * (torch.tanh(out[1, :, 2:]) + 1))
    assert (-5 + 2.5 * (math.tanh(-1) + 1), -5 + 2.5 * (math.tanh(1) + 1)) == pytest.approx((-4.404, -0.596), abs=1e-3)
    assert torch.allclose(agent.online_actor(torch.ones(1, 4))[0][0], agent.pi(torch.ones(1, 4))[0][1])


def test_clipped_objective_matches_hand_computation():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    # min(ρA, clip(ρ, 0.75, 1.25)A): min(1.5, 1.25) = 1.25; min(-0.5, -0.75) = -0.75; min(2.2, 2.2) = 2.2
    assert clipped_objective(new, old, adv, 0.25).item() == pytest.approx(-(1.25 - 0.75 + 2.2) / 3, rel=1e-6)
    a = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    norm = normalize_advantage(a)
    assert torch.allclose(norm, (a - 3.0) / (a.std() + 1e-10))  # unbiased std: sqrt(14/3)
    assert torch.allclose(weighted_advantage(torch.tensor([2.0, -2.0]), 0.7), torch.tensor([1.4, -0.6]))
    assert torch.equal(weighted_advantage(torch.tensor([2.0, -2.0]), 0.5), torch.tensor([2.0, -2.0]))


def test_improvement_step_matches_an_independent_computation():
    agent = _agent()
    b = _batch(8)
    with torch.no_grad():  # a reference policy different from the current one
        for p in agent.pi_old.parameters():
            p.add_(0.05 * torch.randn_like(p))
    agent.improve_step = 3
    before = {k: v.clone() for k, v in agent.pi.state_dict().items()}
    torch.manual_seed(11)
    m = agent.improve_update(b)
    # by hand: the same noise, the reference policy's sample, Â, ρ, the clipped objective, its gradient
    ref, cur = unio4.GaussianEnsemble(4, 2, 3, (16, 16)), unio4.GaussianEnsemble(4, 2, 3, (16, 16))
    ref.load_state_dict(agent.pi_old.state_dict())
    cur.load_state_dict(before)
    torch.manual_seed(11)
    s = (b.obs - agent.obs_mean) / agent.obs_std
    mu_o, ls_o = ref(s)
    act = (mu_o + ls_o.exp() * torch.randn_like(mu_o)).detach()
    q = torch.stack([agent.critic(s, act[i]).min(0).values for i in range(3)])
    adv = q - agent.value(s)
    adv = ((adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-10)).detach()
    eps = 0.25 * (1 - 3 / agent.cfg.improve_steps)
    mu, ls = cur(s)
    logp = lambda m_, l_: (-0.5 * ((act - m_) / l_.exp()) ** 2 - l_ - 0.5 * math.log(2 * math.pi)).sum(-1)
    ratio = torch.exp(logp(mu, ls) - logp(mu_o, ls_o).detach())
    per_member = -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv).mean(1)
    assert m["improve_loss"].item() == pytest.approx(per_member.mean().item(), rel=1e-5)
    assert m["clip_ratio"].item() == pytest.approx(eps)
    assert m["improve_lr"].item() == pytest.approx(1e-4)  # the lr this step used (none written yet here)
    assert agent.optimizers["improve"].param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - 3 / agent.cfg.improve_steps))
    per_member.sum().backward()
    norms = torch.stack([sum(p.grad[i].square().sum() for p in cur.parameters()) for i in range(3)]).sqrt()
    assert torch.allclose(m["grad_norm"], norms.mean(), rtol=1e-4)
    # ε is frozen after step clip_decay_steps (200)
    agent.improve_step = 250
    agent.improve_update(b)
    assert agent.eps == pytest.approx(eps)  # unchanged since the last step ≤ 200 (here: step 3)


def test_member_grad_clip_is_per_member():
    w = torch.zeros(2, 3, requires_grad=True)
    w.grad = torch.tensor([[3.0, 4.0, 0.0], [0.3, 0.0, 0.4]])  # norms 5 and 0.5
    norms = member_grad_clip_([w], 1.0, 2)
    assert torch.allclose(norms, torch.tensor([5.0, 0.5]))
    assert torch.allclose(w.grad[0], torch.tensor([0.6, 0.8, 0.0]), atol=1e-6)  # scaled to norm 1
    assert torch.allclose(w.grad[1], torch.tensor([0.3, 0.0, 0.4]))  # under the limit: unchanged


def test_iql_critic_step_matches_hand_computation():
    agent = _agent()
    b = _batch(6)
    s, s2 = (b.obs - agent.obs_mean) / agent.obs_std, (b.next_obs - agent.obs_mean) / agent.obs_std
    with torch.no_grad():
        tq = agent.critic_target(s, b.act).min(0).values.numpy()
        v = agent.value(s).numpy()
        q = agent.critic(s, b.act).numpy()
    target0 = {k: p.clone() for k, p in agent.critic_target.state_dict().items()}
    m = agent.critic_update(b)
    u = tq - v
    w = np.where(u > 0, 0.7, 0.3)
    assert m["value_loss"].item() == pytest.approx(float(np.mean(w * u ** 2)), rel=1e-5)
    with torch.no_grad():
        v_next = agent.value(s2).numpy()  # V after its step (the official order)
    y = b.rew.numpy() + 0.99 * (1 - b.done.numpy()) * v_next
    assert y[1] == pytest.approx(b.rew[1].item())  # terminal: no bootstrap
    assert m["q_loss"].item() == pytest.approx(float(np.mean((q[0] - y) ** 2 + (q[1] - y) ** 2)), rel=1e-5)
    # the target moves every 2 steps only
    assert all(torch.equal(p, target0[k]) for k, p in agent.critic_target.state_dict().items())
    agent.critic_update(b)
    moved = agent.critic_target.state_dict()
    assert any(not torch.equal(p, target0[k]) for k, p in moved.items())


def test_mc_sarsa_critic_and_omega_weighted_advantage():
    agent = _agent(critic="mc-sarsa")
    assert agent.critic.ensemble_size == 1
    b = _batch(6)
    s, s2 = (b.obs - agent.obs_mean) / agent.obs_std, (b.next_obs - agent.obs_mean) / agent.obs_std
    with torch.no_grad():
        v = agent.value(s).numpy()
        q = agent.critic(s, b.act)[0].numpy()
        q_next = agent.critic_target(s2, b.next_act)[0].numpy()
    m = agent.critic_update(b)
    assert m["value_loss"].item() == pytest.approx(float(np.mean((v - b.ret.numpy()) ** 2)), rel=1e-5)
    y = b.rew.numpy() + 0.99 * (1 - b.done.numpy()) * q_next
    assert m["q_loss"].item() == pytest.approx(float(np.mean((q - y) ** 2)), rel=1e-5)
    act = torch.rand(3, 6, 2) * 2 - 1
    with torch.no_grad():
        raw = torch.stack([agent.critic(s, act[i])[0] for i in range(3)]) - agent.value(s)
        expected = weighted_advantage(normalize_advantage(raw), 0.7)
        assert torch.allclose(agent.advantage(s, act), expected, atol=1e-6)
        iql = _agent()
        raw = torch.stack([iql.critic(s, act[i]).min(0).values for i in range(3)]) - iql.value(s)
        assert torch.allclose(iql.advantage(s, act), normalize_advantage(raw), atol=1e-6)  # no ω in the IQL branch


# ------------------------------------------------------------------------------------ OPE, selection, acting
def test_ope_gate_replaces_the_reference_only_on_improvement(monkeypatch):
    agent = _agent()
    with torch.no_grad():
        for p in agent.pi.parameters():
            p.add_(1.0)  # current ≠ reference for every member
    ref_before = {k: v.clone() for k, v in agent.pi_old.state_dict().items()}
    agent.ope_best.copy_(torch.tensor([1.0, 2.0, 3.0]))
    monkeypatch.setattr(agent, "ope", lambda: torch.tensor([1.5, 2.0, 2.5]))  # only member 0 improves (2.0 is a tie)
    m = agent.ope_gate()
    assert agent.ope_best.tolist() == [1.5, 2.0, 3.0] and agent.ope_last.tolist() == [1.5, 2.0, 2.5]
    assert m["ope_replaced"].item() == 1.0 and m["ope_member2"].item() == 2.5
    cur = agent.pi.state_dict()
    for k, v in agent.pi_old.state_dict().items():
        assert torch.equal(v[0], cur[k][0])  # replaced
        assert torch.equal(v[1:], ref_before[k][1:])  # kept
    agent.cfg.replace_reference = False
    monkeypatch.setattr(agent, "ope", lambda: torch.tensor([9.0, 9.0, 9.0]))
    agent.ope_gate()
    assert torch.equal(agent.pi_old.state_dict()["net.net.0.weight"][1], ref_before["net.net.0.weight"][1])


def test_ope_scores_mean_q_along_model_rollouts_until_termination():
    from offrl.buffer import ReplayBuffer

    agent = _agent(ope_states=5, ope_horizon=4)
    buf = ReplayBuffer(4, 2, 20)
    buf.add(np.random.default_rng(0).normal(size=(20, 4)), np.zeros((20, 2)), np.zeros(20), np.zeros((20, 4)), np.zeros(20))
    agent.setup_data(buf)
    x = torch.randn(7, 4)
    for m in range(3):  # one member alone equals its slice of the batched forward
        assert all(torch.allclose(a, b[m], atol=1e-6) for a, b in zip(agent.pi.member(m, x), agent.pi(x)))
    calls = []

    def term(next_obs):  # after the first model step member 0's rollouts end, after the second all others
        calls.append(next_obs.shape[0])
        done = torch.zeros(next_obs.shape[0], dtype=torch.bool)
        if len(calls) == 1:
            done[:5] = True
        if len(calls) == 2:
            done[:] = True
        return done

    agent.term_fn = term
    gen_state = agent.generator.get_state()
    scores = agent.ope()
    assert calls == [15, 10]  # stopped once every rollout had terminated
    # by hand: the same generator stream, each member's clipped mean action, min Q of the visited states
    agent.generator.set_state(gen_state)
    obs = buf.observations[torch.randint(0, 20, (3, 5), generator=agent.generator).reshape(-1)]
    with torch.no_grad():
        def visit(obs, members):
            s = agent.normalize_obs(obs)
            a = torch.cat([agent.pi(s[5 * i: 5 * i + 5])[0][m] for i, m in enumerate(members)]).clamp(-1, 1)
            q = agent.critic(s, a).min(0).values.reshape(len(members), 5).sum(1)
            return q, agent.dynamics.step(obs, a, agent.generator)[0]

        q0, nxt = visit(obs, [0, 1, 2])
        q1, _ = visit(nxt[5:], [1, 2])
    expected = torch.stack([q0[0] / 5, (q0[1] + q1[0]) / 10, (q0[2] + q1[1]) / 10])
    assert torch.allclose(scores, expected, atol=1e-5)



def test_masked_ope_equals_the_compacting_one():
    """The fixed-layout OPE (the GPU default) against the compacting loop: identical without
    terminations; with terminations, identical when the model is deterministic (every elite the
    same, σ ≈ 0), since the two loops then draw different amounts of noise that does not matter."""
    from offrl.buffer import ReplayBuffer

    agent = _agent(ope_states=6, ope_horizon=5)
    buf = ReplayBuffer(4, 2, 30)
    buf.add(np.random.default_rng(1).normal(size=(30, 4)), np.zeros((30, 2)), np.zeros(30), np.zeros((30, 4)), np.zeros(30))
    agent.setup_data(buf)
    state = agent.generator.get_state()
    compact = agent.ope(masked=False)
    agent.generator.set_state(state)
    assert torch.allclose(agent.ope(masked=True), compact, atol=1e-5)
    with torch.no_grad():  # deterministic model: elite 0's weights everywhere, log-variance at its floor
        for layer in agent.dynamics.layers:
            layer.weight.copy_(layer.weight[:1].expand_as(layer.weight))
            layer.bias.copy_(layer.bias[:1].expand_as(layer.bias))
        agent.dynamics.max_logvar.fill_(-30.0)
        agent.dynamics.min_logvar.fill_(-40.0)
    agent.term_fn = lambda o: o[:, 0] > 0.3  # rollouts end at different steps
    agent.generator.set_state(state)
    compact = agent.ope(masked=False)
    agent.generator.set_state(state)
    assert torch.allclose(agent.ope(masked=True), compact, atol=1e-5)


def test_select_member_top3_by_ope_then_best_real_return():
    agent = _agent(num_members=4)
    agent.ope_last.copy_(torch.tensor([5.0, 1.0, 4.0, 3.0]))
    agent.member_returns.copy_(torch.tensor([10.0, 99.0, 30.0, 20.0]))
    assert agent.select_member() == 2  # member 1 has the best return but is not in the OPE top 3
    agent.member_returns.fill_(float("nan"))
    assert agent.select_member() == 0  # no real evaluations: the best OPE score


def test_ensemble_acts_with_the_member_most_confident_at_its_own_mean():
    agent = _agent()
    obs = torch.randn(20, 4)
    mean, log_std = agent.pi(obs)
    a = agent.ensemble_action(obs)
    for b in range(20):
        with torch.no_grad():
            dens = [float(gaussian_logp(mean[i, b].clamp(-1, 1), mean[i, b], log_std[i, b])) for i in range(3)]
        assert torch.equal(a[b], mean[int(np.argmax(dens)), b].clamp(-1, 1))


def test_online_rollout_action_and_reward_scaling():
    agent = _agent(reward_scale="number")
    agent.online_actor.copy_member_(agent.pi, 0)
    obs = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32) * 3
    torch.manual_seed(0)
    a, extras = agent.rollout_action(obs)
    assert np.abs(a).max() <= 1.0 and torch.equal(torch.as_tensor(a), extras["sample"])  # the clipped action is stored
    mean, log_std = agent.online_actor(extras["policy_obs"])
    assert torch.allclose(extras["logp"], gaussian_logp(extras["sample"], mean[0], log_std[0]))
    from offrl.collector import Transition

    tr = Transition(obs, a, np.array([2.0]), obs, np.array([False]), np.array([False]))
    assert agent.observe(tr).tolist() == pytest.approx([0.2])


# ------------------------------------------------------------------------------------ runs
def test_exact_resume_in_every_stage(use_scripted, tmp_path, monkeypatch):
    full = unio4.train(Config(run_dir=str(tmp_path / "full"), **TINY))
    ends = [p["end_step"] for p in full["phases"]]
    assert [p["name"] for p in full["phases"]] == ["critic", "dynamics", "bc", "improve", "value", "online"]
    # the offline → online scores: the end of the value re-fit (the policy handed over), then online PPO
    assert full["offline_normalized_score"] == full["phases"][4]["final_normalized_score"] is not None
    assert full["online_normalized_score"] == full["phases"][5]["final_normalized_score"]
    assert full["normalized_regret"] == full["phases"][5]["normalized_regret"]
    # critic, dynamics and value do not change the acting policy: no evaluations; the value line carries
    # the improved ensemble's score, the first two have none yet
    assert [p["evaluations"] for p in full["phases"]] == [0, 0, 1, 1, 0, 1]
    assert full["phases"][0]["final_normalized_score"] is None is full["phases"][1]["final_normalized_score"]
    assert full["phases"][4]["final_normalized_score"] == full["phases"][3]["final_normalized_score"]
    evaluated = [r["step"] for r in _rows(tmp_path / "full") if "eval/return_mean" in r]
    assert evaluated == [25, 37, 171]  # the ends of bc, improve and online
    assert ends == [12, 15, 25, 37, 43, 171]
    # global steps: critic 1-12, dynamics 13-15 (one per epoch), bc 16-25, improve 26-37, value 38-43,
    # online 44-171 (one metrics add per PPO update, at steps 107 and 171). A signal inside the n-th
    # metrics add of a run stops it at that step; each resume counts from 1 again.
    cuts = [5, 9, 6, 11, 9, 4]  # → steps 5 (critic), 14 (dynamics), 20 (bc), 31 (improve: after an OPE gate
    #                              and a member evaluation), 40 (value), 107 (online, at the first update)
    original = _signal_at(monkeypatch, cuts[0], signal.SIGTERM)
    steps = []
    with pytest.raises(TrainingInterrupted) as e:
        unio4.train(Config(run_dir=str(tmp_path / "cut"), **TINY))
    steps.append(e.value.step)
    for n in cuts[1:]:
        _signal_at(monkeypatch, n, signal.SIGTERM)
        with pytest.raises(TrainingInterrupted) as e:
            unio4.train(Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))
        steps.append(e.value.step)
    assert steps == [5, 14, 20, 31, 40, 107]
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    calls = {"n": 0}
    act = UniO4.rollout_action

    def rollout_action(self, obs):  # then in the middle of the second rollout (reward scaler, storage)
        calls["n"] += 1
        if calls["n"] == 20:
            os.kill(os.getpid(), signal.SIGTERM)
        return act(self, obs)

    monkeypatch.setattr(UniO4, "rollout_action", rollout_action)
    with pytest.raises(TrainingInterrupted) as e:
        unio4.train(Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))
    assert e.value.step == 127
    monkeypatch.setattr(UniO4, "rollout_action", act)
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    resumed = unio4.train(Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["agent"].keys() == b["agent"].keys()
    for k, v in a["agent"].items():
        assert torch.equal(v, b["agent"][k]), k
    assert a["unio4_state"]["history"] == b["unio4_state"]["history"]
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    assert resumed["unio4"] == full["unio4"] and resumed["phases"] == full["phases"]


def test_script_help_and_cli_run(use_scripted, tmp_path):
    script = os.path.join(ROOT, "algos", "unio4.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0
    for flag in ("--critic-steps", "--bc-steps", "--improve-steps", "--online-steps", "--model-max-epochs",
                 "--ope-every", "--reward-scale", "--online-double-tanh"):
        assert flag in out.stdout, flag
    run_dir = tmp_path / "cli"
    args = ["--dataset", SCRIPTED, "--q-hidden", "16", "16", "--v-hidden", "16", "16", "--bc-hidden", "16", "16",
            "--model-hidden", "16", "16", "--num-members", "2", "--critic-steps", "8", "--model-max-epochs", "2",
            "--bc-steps", "8", "--improve-steps", "8", "--ope-every", "4", "--ope-horizon", "3", "--ope-states", "8",
            "--member-eval-every", "8", "--member-eval-episodes", "1", "--reward-scale", "none", "--online-steps", "64",
            "--online-num-steps", "32", "--online-minibatch", "16", "--online-epochs", "1", "--batch-size", "16",
            "--eval-every", "1000", "--eval-episodes", "1", "--log-every", "4", "--threads", "1", "--progress", "False",
            "--heartbeat-seconds", "1e-9", "--run-dir", str(run_dir)]
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    # progress inside a dynamics epoch (one global step that takes minutes on a 1M-row dataset)
    assert re.search(r"\| phase dynamics \| dynamics epoch 1 \(at most 2\): batch 1/\d+, [\d.]+ batches/s, epoch ETA", out.stderr), out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads(out.stdout.strip().splitlines()[-1])
    assert [p["name"] for p in summary["phases"]] == ["critic", "dynamics", "bc", "improve", "online"]  # no value re-fit
    assert summary["steps"] == 8 + 2 + 8 + 8 + 64 and summary["unio4"]["selected_member"] in (0, 1)
    rows = _rows(run_dir)
    assert {r["phase"] for r in rows} == {"critic", "dynamics", "bc", "improve", "online"}
    assert any("train/ope_member0" in r for r in rows) and any("train/member1_return" in r for r in rows)
    assert any("train/model_holdout_loss" in r for r in rows) and any("train/bc_loss" in r for r in rows)
    agent = UniO4.load(str(run_dir / "checkpoint.pt"), device="cpu")
    assert agent.stage == "online" and agent.act(np.zeros(4, np.float32)).shape == (1,)
    out = subprocess.run([sys.executable, script, *args[:-2], "--run-dir", str(tmp_path / "bad"), "--reward-scale", "x"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode != 0 and "reward-scale" in out.stderr


@pytest.mark.slow
def test_offline_improvement_beats_the_bc_ensemble(use_scripted, tmp_path):
    """On the scripted pendulum (half the actions destabilize), cloning averages the two modes; the
    OPE-gated improvement on the IQL critic should move the ensemble towards the stabilizing
    controller. Measured numbers are in the assertion comments."""
    cfg = Config(dataset=SCRIPTED, run_dir=str(tmp_path / "r"), q_hidden=(64, 64), v_hidden=(64, 64),
                 bc_hidden=(64, 64), model_hidden=(64, 64), model_max_epochs=5, critic_steps=3000, bc_steps=2000,
                 improve_steps=1000, ope_every=100, ope_horizon=20, ope_states=128, member_eval_every=500,
                 member_eval_episodes=5, online_steps=0, eval_every=100_000, eval_episodes=5, batch_size=256,
                 log_every=500, threads=1, progress=False)
    s = unio4.train(cfg)  # 80-110 s on one (shared) CPU thread
    bc, improved = s["unio4"]["bc_normalized_score"], s["unio4"]["offline_normalized_score"]
    evals = [h["member_returns"] for h in s["unio4"]["history"] if "member_returns" in h]
    # measured (seed 0): ensemble normalized score 2.1 after BC → 8.2 after improvement; the members'
    # mean real return 21.7 before the first improvement step → 81.3 after 1000 steps
    assert improved > bc + 3, (bc, improved)
    assert np.mean(evals[-1]) > 2 * np.mean(evals[0]), evals


def test_policy_files_act_like_the_agent_offline_and_online(tmp_path):
    agent = _agent()
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    agent.save_policy(str(tmp_path / "offline.pt"))
    loaded = UniO4.load(str(tmp_path / "offline.pt"), device="cpu")
    assert loaded.stage == "critic" and np.array_equal(loaded.act(obs), agent.act(obs))  # the ensemble
    agent.ope_last.copy_(torch.tensor([0.0, 2.0, 1.0]))
    agent.begin_stage("online")  # selection by OPE (no member evaluations): member 1
    assert int(agent.selected) == 1 and agent.stage == "online"
    assert torch.equal(agent.online_actor(torch.ones(1, 4))[0][0], agent.pi(torch.ones(1, 4))[0][1])
    agent.save_policy(str(tmp_path / "online.pt"))
    loaded = UniO4.load(str(tmp_path / "online.pt"), device="cpu")
    assert loaded.stage == "online" and np.array_equal(loaded.act(obs), agent.act(obs))


def test_ope_ranking_by_hand():
    from offrl.algos.unio4 import average_ranks, ope_ranking, spearman

    assert average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    history = [{"improve_step": 0, "ope": [1.0, 2.0]},  # no real returns at step 0: left out
               {"improve_step": 100, "ope": [1.0, 2.0, 3.0], "replaced": [True, False, True]},
               {"improve_step": 100, "member_returns": [10.0, 30.0, 20.0]},
               {"improve_step": 200, "ope": [5.0, 4.0, 6.0]},
               {"improve_step": 200, "member_returns": [50.0, 40.0, 60.0]}]
    out = ope_ranking(history)
    assert out["policies"] == 6 and out["steps"] == [100, 200]
    # within step 100: ranks (1,2,3) vs (1,3,2): ρ = 1 − 6·2/(3·8) = 0.5; step 200: ρ = 1
    assert out["spearman_within_step"] == pytest.approx(0.75)
    # pooled: ope (1,2,3,5,4,6) vs real (10,30,20,50,40,60): ranks differ in two swaps of neighbours
    ro, rr = np.array([1, 2, 3, 5, 4, 6]), np.array([1, 3, 2, 5, 4, 6])
    assert out["spearman"] == pytest.approx(1 - 6 * ((ro - rr) ** 2).sum() / (6 * 35))
    # 15 pairs, all real returns differ; the OPE orders 14 of them as the returns do (only (m1, m2) at step 100 flips)
    assert out["pairwise_accuracy"] == pytest.approx(14 / 15)
    assert ope_ranking([])["policies"] == 0
