"""IQL: losses against hand computation, update order, schedule, exact resume, learning."""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
import torch

from offrl.buffer import Batch
from offrl.errors import OffrlError
from offrl.algos import iql
from offrl.algos.iql import IQL, Config, awr_weights, expectile_loss


def test_expectile_loss_by_hand():
    # u = Q - V = [2, -1], tau = 0.7: weight 0.7 on the positive, 0.3 on the negative residual
    u = torch.tensor([2.0, -1.0])
    assert expectile_loss(u, 0.7).item() == pytest.approx((0.7 * 4 + 0.3 * 1) / 2)
    # direction matters: the mirrored residual gives a different loss
    assert expectile_loss(-u, 0.7).item() == pytest.approx((0.3 * 4 + 0.7 * 1) / 2)
    # tau = 0.5 is half the MSE
    assert expectile_loss(u, 0.5).item() == pytest.approx(0.5 * (4 + 1) / 2)


def test_expectile_fit_is_upper_expectile():
    # minimizing the loss over a constant v gives the tau-expectile: above the mean for tau > 0.5
    q = torch.tensor([0.0, 0.0, 0.0, 10.0])
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.1)
    for _ in range(2000):
        opt.zero_grad()
        expectile_loss(q - v, 0.9).backward()
        opt.step()
    # tau-expectile solves 0.9 * (10 - v) = 0.1 * 3 * v  ->  v = 9 / 1.2 = 7.5
    assert v.item() == pytest.approx(7.5, abs=1e-3)


def test_awr_weights_clip_after_exp():
    adv = torch.tensor([0.0, 1.0, 10.0, -2.0])
    w = awr_weights(adv, beta=3.0, max_weight=100.0)
    assert w.tolist() == pytest.approx([1.0, math.exp(3.0), 100.0, math.exp(-6.0)], rel=1e-6)


def _tiny_agent(**kw) -> IQL:
    torch.manual_seed(0)
    cfg = Config(steps=100, hidden=(8, 8), expectile=0.7, beta=3.0, actor_dropout=0.0, **kw)
    return IQL(cfg, obs_dim=3, act_dim=2)


def _batch(n=16, seed=0, done=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    done = (torch.rand(n, generator=g) < 0.3).float() if done is None else done
    return Batch(torch.randn(n, 3, generator=g), torch.rand(n, 2, generator=g) * 2 - 1, torch.randn(n, generator=g),
                 torch.randn(n, 3, generator=g), done)


def test_update_matches_hand_computation():
    agent = _tiny_agent()
    before = copy.deepcopy(agent)
    b = _batch()
    m = agent.update(b)
    cfg = agent.cfg
    with torch.no_grad():
        tq = before.critic_target(b.obs, b.act).min(0).values
        # 1. V loss: target Q (not the online Q), expectile on the sign of Q - V, pre-update V
        v_loss = expectile_loss(tq - before.value(b.obs), 0.7)
        # V after its step is what the actor and Q use; it is not touched again in the step
        v_new = agent.value
        adv = tq - v_new(b.obs)
        w = torch.exp(3.0 * adv).clamp(max=100.0)
        a_loss = -(w * before.actor.log_prob(b.obs, b.act)).mean()
        y = b.rew + cfg.discount * (1 - b.done) * v_new(b.next_obs)
        q = before.critic(b.obs, b.act)
        q_loss = ((q[0] - y) ** 2 + (q[1] - y) ** 2).mean()
        # the same Q loss with the *pre-update* V(s') differs: the test can tell the two apart
        y_old = b.rew + cfg.discount * (1 - b.done) * before.value(b.next_obs)
        q_loss_old = ((q[0] - y_old) ** 2 + (q[1] - y_old) ** 2).mean()
    assert m["value_loss"].item() == pytest.approx(v_loss.item(), rel=1e-5)
    assert m["actor_loss"].item() == pytest.approx(a_loss.item(), rel=1e-5)
    assert m["critic_loss"].item() == pytest.approx(q_loss.item(), rel=1e-5)
    assert abs(q_loss_old.item() - q_loss.item()) > 1e-6
    # every network moved; the target moved by tau toward the updated critic
    with torch.no_grad():
        for p0, p1, t0, t1 in zip(before.critic.parameters(), agent.critic.parameters(),
                                  before.critic_target.parameters(), agent.critic_target.parameters()):
            assert torch.allclose(t1, t0 + cfg.tau * (p1 - t0), atol=1e-6)


def test_terminal_transitions_do_not_bootstrap():
    agent = _tiny_agent(discount=0.9)
    b = _batch(done=torch.ones(16))
    before = copy.deepcopy(agent)
    m = agent.update(b)
    with torch.no_grad():
        q = before.critic(b.obs, b.act)
        expected = ((q - b.rew) ** 2).sum(0).mean()
    assert m["critic_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_weights_are_clipped_at_100():
    agent = _tiny_agent()
    with torch.no_grad():
        agent.value.net.net[-1].bias.fill_(-50.0)  # V far below Q: every advantage is large and positive
    m = agent.update(_batch())
    assert m["adv_mean"].item() > 10
    assert m["weight_max"].item() == pytest.approx(100.0)
    assert m["weight_mean"].item() == pytest.approx(100.0)


def test_actor_lr_cosine_decay():
    agent = _tiny_agent()
    lrs = []
    for _ in range(50):
        lrs.append(agent.update(_batch())["actor_lr"].item())
    T = agent.cfg.steps
    assert lrs[0] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(0.0)))
    assert lrs[49] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 49 / T)), rel=1e-5)
    # value/critic lrs are constant
    assert agent.optimizers["value"].param_groups[0]["lr"] == 3e-4


def test_deterministic_actor_variant():
    agent = _tiny_agent(deterministic_actor=True)
    before = copy.deepcopy(agent)
    b = _batch()
    m = agent.update(b)
    with torch.no_grad():
        tq = before.critic_target(b.obs, b.act).min(0).values
        w = torch.exp(3.0 * (tq - agent.value(b.obs))).clamp(max=100.0)
        expected = (w * ((before.actor(b.obs) - b.act) ** 2).sum(-1)).mean()
    assert m["actor_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_presets_by_domain():
    class D:  # resolve only needs the id
        pass

    cfg = Config(dataset="antmaze-umaze-v2")
    cfg.resolve(D())
    assert (cfg.expectile, cfg.beta) == (0.9, 10.0)
    cfg = Config(dataset="hopper-medium-v2", beta=5.0)
    cfg.resolve(D())
    assert (cfg.expectile, cfg.beta, cfg.actor_dropout) == (0.7, 5.0, 0.0)


@pytest.mark.parametrize("kw, msg", [({"expectile": 1.0}, "expectile"), ({"expectile": 0.0}, "expectile"),
                                     ({"steps": 0}, "steps"), ({"batch_size": -1}, "batch-size"),
                                     ({"tau": 0.0}, "tau")])
def test_config_validation(kw, msg):
    with pytest.raises(OffrlError, match=msg):
        Config(**kw).validate()


def test_reward_preprocessing(use_scripted):
    from offrl.data import load_dataset

    ds = load_dataset("offrl/invertedpendulum/scripted-v0")
    cfg = Config(dataset=ds.id)
    prep = iql.prepare(cfg, ds)
    rets = ds.episode_returns()
    assert np.allclose(prep.reward_fn(ds.rewards), ds.rewards * 1000.0 / (rets.max() - rets.min()))
    assert np.abs(prep.actions).max() <= 1 - 1e-5
    cfg.reward_mode = "minus_one"
    assert np.allclose(iql.prepare(cfg, ds).reward_fn(ds.rewards), ds.rewards - 1.0)


def test_act_single_and_batch():
    agent = _tiny_agent()
    assert agent.act(np.zeros(3)).shape == (2,)
    assert agent.act(np.zeros((5, 3))).shape == (5, 2)
    with pytest.raises(OffrlError, match="3"):
        agent.act(np.zeros(4))


def test_save_load_roundtrip(tmp_path):
    agent = _tiny_agent()
    agent.update(_batch())
    path = str(tmp_path / "a.pt")
    agent.save(path)
    loaded = IQL.load(path, device="cpu")
    obs = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    assert np.array_equal(agent.act(obs), loaded.act(obs))
    assert loaded.cfg.hidden == (8, 8)


# ------------------------------------------------------------------------------ training runs
TINY = dict(hidden=(32, 32), batch_size=32, eval_episodes=2, log_every=5, progress=False, threads=1)


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for r in rows:  # wall-clock values differ between runs
        r.pop("eval/seconds", None)
        for k in [k for k in r if k.startswith("time/")]:
            r.pop(k)
    return rows


def test_exact_resume(use_scripted, tmp_path, monkeypatch):
    ds = "offrl/invertedpendulum/scripted-v0"
    full = Config(dataset=ds, steps=40, eval_every=10, checkpoint_every=20, run_dir=str(tmp_path / "full"), **TINY)
    iql.train(full)

    # the same run, killed right after its step-20 checkpoint ...
    from offrl import logger as logger_mod

    calls = {"n": 0}
    original = logger_mod.MetricAccumulator.add

    def add_then_die(self, metrics):
        calls["n"] += 1
        if calls["n"] > 25:
            raise KeyboardInterrupt
        original(self, metrics)

    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", add_then_die)
    cut = Config(dataset=ds, steps=40, eval_every=10, checkpoint_every=20, run_dir=str(tmp_path / "cut"), **TINY)
    with pytest.raises(KeyboardInterrupt):
        iql.train(cut)
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    # ... and resumed from that checkpoint with the default command line plus --resume
    summary = iql.train(Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))
    assert summary["run_dir"] == str(tmp_path / "cut")

    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 40
    for k, v in a["agent"].items():
        assert torch.equal(v, b["agent"][k]), k
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")


def test_resume_rejects_weights_only_checkpoint(tmp_path):
    agent = _tiny_agent()
    agent.save(str(tmp_path / "w.pt"))
    with pytest.raises(OffrlError, match="cannot be resumed"):
        iql.train(Config(resume=str(tmp_path / "w.pt")))


def _learn(tmp_path, **kw):
    return iql.train(Config(dataset="offrl/invertedpendulum/scripted-v0", steps=3000, hidden=(64, 64),
                            eval_every=3000, eval_episodes=5, log_every=500, progress=False,
                            run_dir=str(tmp_path / "learn"), **kw))


# Measured on the 20k-step dataset (2-core CPU): IQL 3000 steps -> return 120-170; the same run with
# beta = 0 (plain behaviour cloning, the weights all 1) -> 28; behaviour data mean 12.5; random 4.9.
def test_iql_learns_scripted_pendulum(use_scripted, tmp_path):
    """The behaviour mixes a stabilising controller with its opposite; cloning it falls at once.
    IQL must pick the stabilising actions out by their advantage and balance far longer."""
    summary = _learn(tmp_path)
    assert summary["final_return"] >= 70, summary


@pytest.mark.slow
def test_cloning_the_same_data_fails(use_scripted, tmp_path):
    """The contrast that makes the learning test meaningful: without advantage weights (beta = 0)
    the same run stays far below the threshold."""
    summary = _learn(tmp_path, beta=0.0)
    assert summary["final_return"] < 50, summary
