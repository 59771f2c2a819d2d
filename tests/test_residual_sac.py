"""Residual SAC (ResFiT): zero residual at init, the frozen base, n-step rows, the critic loss form,
50/50 mixing, the action-range expansion, exact resume through the CLI, a CLI run, learning."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_signals import _rows, _signal_at

from offrl import logger as logger_mod
from offrl.algos import residual_sac as rs
from offrl.algos.bc import BC
from offrl.algos.bc import Config as BCConfig
from offrl.algos.residual_sac import Config, ResidualSAC
from offrl.buffer import Batch, DataTransform
from offrl.collector import Transition
from offrl.data.builtin import SCRIPTED_ID
from offrl.data.dataset import Dataset
from offrl.errors import OffrlError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBS, ACT = 4, 1


def _base_file(path, obs_dim=OBS, act_dim=ACT, seed=0) -> str:
    torch.manual_seed(seed)
    BC(BCConfig(hidden=(16, 16)), obs_dim, act_dim).save_policy(str(path), {"note": "random base"})
    return str(path)


def _agent(tmp_path, residual_actor="sac", **kw) -> ResidualSAC:
    torch.manual_seed(1)
    cfg = Config(hidden=(16, 16), base_policy=_base_file(tmp_path / "base.pt"), residual_actor=residual_actor, **kw)
    mid, half = rs.action_limits(np.array([[-1.0], [1.0]]), cfg.action_scale)  # the base's whole range
    return ResidualSAC(cfg, OBS, ACT, np.full(OBS, 0.5, np.float32), np.full(OBS, 2.0, np.float32),
                       act_mid=mid, act_half=half)


def _batch(agent, n=16, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs, nxt = torch.randn(n, OBS, generator=g), torch.randn(n, OBS, generator=g)
    done = (torch.rand(n, generator=g) < 0.3).float()
    return Batch(obs, torch.rand(n, ACT, generator=g) * 2 - 1, torch.randn(n, generator=g), nxt, done,
                 base_act=agent.base_action(obs), next_base_act=agent.base_action(nxt) * (1 - done).unsqueeze(-1),
                 discount=torch.full((n,), 0.99 ** 3))


# ------------------------------------------------------------------------------------ init, base
@pytest.mark.parametrize("actor", ["sac", "td3"])
def test_residual_is_exactly_zero_at_init(tmp_path, actor):
    agent = _agent(tmp_path, actor)
    obs = np.random.default_rng(0).normal(size=(32, OBS)).astype(np.float32) * 3
    x = torch.as_tensor(obs)
    b = agent.base_action(x)
    assert torch.equal(agent.residual(agent.normalize_obs(x), b, deterministic=True), torch.zeros(32, ACT))
    base_env = agent.base(x).numpy()
    assert np.array_equal(agent.act(obs), base_env)  # executed action = base action, bit for bit
    assert np.allclose(agent.unscale_action(b).numpy(), base_env, atol=1e-6)  # = unscale(a_b) (official form)
    env_act, extras = agent.behaviour(obs)  # exploration: a_b + a sample of the bounded residual
    bound = agent.cfg.action_scale if actor == "sac" else 1.0  # td3: σ 0.05 unclipped noise, clamped to ±(1 − 1e-6)
    delta = np.abs(extras["act"] - extras["base_act"])
    assert np.all(delta <= bound + 1e-6) and delta.max() > 0
    assert np.array_equal(extras["base_act"], b.numpy())


def test_frozen_base_never_changes_and_is_restored_from_the_checkpoint(tmp_path):
    agent = _agent(tmp_path)
    before = {k: v.clone() for k, v in agent.base.state_dict().items()}
    assert all(not p.requires_grad for p in agent.base.parameters())
    owned = {id(p) for o in agent.optimizers.values() for g in o.param_groups for p in g["params"]}
    assert not owned & {id(p) for p in agent.base.parameters()}
    for i in range(5):
        agent.update(_batch(agent, seed=i))
    assert all(torch.equal(v, agent.base.state_dict()[k]) for k, v in before.items())
    agent.save(str(tmp_path / "ck.pt"))
    os.remove(tmp_path / "base.pt")  # the original file is not needed again
    again = ResidualSAC.load(str(tmp_path / "ck.pt"), device="cpu")
    assert all(torch.equal(v, again.base.state_dict()[k]) for k, v in before.items())
    obs = np.random.default_rng(1).normal(size=(8, OBS)).astype(np.float32)
    assert np.array_equal(again.act(obs), agent.act(obs))


def test_action_range_expansion_round_trip(tmp_path):
    s = 0.1
    demo = np.array([[-0.8, 0.30], [0.6, 0.32], [0.1, 0.31]], np.float32)
    mid, half = rs.action_limits(demo, s, min_range=0.1)
    assert np.allclose(mid, [-0.1, 0.31]) and np.allclose(half, [0.7 * 1.1, 0.05 * 1.1])  # 2nd: the 0.05 floor
    agent = ResidualSAC(Config(hidden=(8,), action_scale=s), 2, 2, act_mid=mid, act_half=half)
    # the demo range lands on ±1/(1+s): room for the residual up to ±1
    ends = agent.scale_action(torch.tensor([[-0.8, 0.31 - 0.05], [0.6, 0.31 + 0.05]]))
    assert torch.allclose(ends, torch.tensor([[-1 / 1.1, -1 / 1.1], [1 / 1.1, 1 / 1.1]]), atol=1e-6)
    a = torch.linspace(-1, 1, 21).unsqueeze(1).expand(21, 2) * torch.tensor([1.0, 1.0])
    env = agent.act_mid + a * agent.act_half  # the expanded box, where it lies inside the env's
    inside = env.abs().max(1).values <= 1
    assert torch.allclose(agent.scale_action(agent.unscale_action(a))[inside], a[inside], atol=1e-6)
    assert torch.allclose(agent.unscale_action(agent.scale_action(env[inside])), env[inside], atol=1e-6)
    # beyond ±1 the scaled action is clamped first (official unscale), then to the env box
    assert torch.allclose(agent.unscale_action(torch.tensor([[5.0, -5.0]])), agent.unscale_action(torch.tensor([[1.0, -1.0]])))
    assert rs.action_limits(demo, s, expand=False)[1][0] == pytest.approx(0.7)
    # the executed action, computed from the base action plus the clamped change, is unscale(clamp(a))
    lo, hi = agent.act_mid - agent.act_half, agent.act_mid + agent.act_half
    b_env = torch.minimum(torch.maximum(torch.tensor([[0.9, 0.2], [-0.95, 0.33], [0.1, 0.3]]), lo), hi)
    b = agent.scale_action(b_env)
    a = b + torch.tensor([[0.05, -2.0], [1.5, 0.01], [0.0, 0.0]])
    assert torch.allclose(agent.execute(b_env, b, a), agent.unscale_action(a), atol=1e-6)
    assert torch.equal(agent.execute(b_env, b, b), b_env)  # a zero residual: the base action itself


# ------------------------------------------------------------------------------------ n-step rows
def _tr(o, a, r, o2, term=False, trunc=False):
    f = lambda v: np.array([v], np.float32)  # noqa: E731
    return Transition(np.array([[o] * OBS], np.float32), None, f(r), np.array([[o2] * OBS], np.float32),
                      np.array([term]), np.array([trunc]), {"act": np.array([[a]], np.float32), "base_act": np.array([[a / 2]], np.float32)})


@pytest.mark.parametrize("bootstrap_truncation", [False, True])
def test_online_nstep_rows_by_hand(tmp_path, bootstrap_truncation):
    agent = _agent(tmp_path, bootstrap_truncation=bootstrap_truncation)
    buf = rs._buffer(agent, 100, 0, DataTransform())
    sink = rs.NStepSink(buf, agent, agent.cfg)
    g = 0.99
    # episode 1: 5 steps, terminated; episode 2: 4 steps, truncated (time limit)
    for t in range(5):
        sink(_tr(t, 0.1 * t, 1.0 + t, t + 1, term=t == 4))
    assert len(buf) == 5 and not sink.pending
    for t in range(4):
        sink(_tr(10 + t, 0.0, 2.0 ** t, 11 + t, trunc=t == 3))
        assert len(sink.pending) == (0 if t == 3 else min(t + 1, 2))  # rows leave once 3 steps follow
    b = buf.batch(torch.arange(9))
    r = [1, 2, 3, 4, 5]
    want_R = [r[0] + g * r[1] + g**2 * r[2], r[1] + g * r[2] + g**2 * r[3], r[2] + g * r[3] + g**2 * r[4],
              r[3] + g * r[4], r[4], 1 + 2 * g + 4 * g**2, 2 + 4 * g + 8 * g**2, 4 + 8 * g, 8]
    want_next = [3, 4, 5, 5, 5, 13, 14, 14, 14]
    want_k = [3, 3, 3, 2, 1, 3, 3, 2, 1]
    trunc_done = 0.0 if bootstrap_truncation else 1.0
    want_done = [0, 0, 1, 1, 1, 0, trunc_done, trunc_done, trunc_done]
    assert np.allclose(b.rew.numpy(), want_R, rtol=1e-6)
    assert np.allclose(b.next_obs[:, 0].numpy(), want_next)
    assert np.allclose(b.discount.numpy(), [g**k for k in want_k], rtol=1e-6)
    assert np.array_equal(b.done.numpy(), np.array(want_done, np.float32))
    assert np.allclose(b.act[:5, 0].numpy(), [0.0, 0.1, 0.2, 0.3, 0.4]) and np.allclose(b.base_act[:5, 0].numpy(), [0, .05, .1, .15, .2])
    nb = agent.base_action(b.next_obs)
    assert torch.allclose(b.next_base_act, nb * (1 - b.done).unsqueeze(-1), atol=1e-6)  # zero-padded at a done
    assert torch.all(b.next_base_act[b.done > 0] == 0)


def test_demo_rows_store_the_demo_action_and_nstep_targets(tmp_path):
    agent = _agent(tmp_path)
    obs = np.arange(7, dtype=np.float32)[:, None].repeat(OBS, 1)
    ds = Dataset(observations=obs, actions=np.linspace(-0.8, 0.6, 7, dtype=np.float32)[:, None],
                 rewards=np.array([0, 0, 1, 0, 0, 0, 0], np.float32), next_observations=obs + 1,
                 terminals=np.array([0, 0, 1, 0, 0, 0, 0], np.float32),
                 timeouts=np.array([0, 0, 0, 0, 0, 0, 1], np.float32), metadata={"id": "tiny"})
    buf = rs.demo_buffer(agent.cfg, agent, ds, DataTransform())
    b = buf.batch(torch.arange(7))
    g = 0.99
    assert np.allclose(b.rew.numpy(), [g**2, g, 1, 0, 0, 0, 0])
    assert np.array_equal(b.done.numpy(), np.array([1, 1, 1, 0, 1, 1, 1], np.float32))  # the time limit too (official)
    assert np.allclose(b.discount.numpy(), [g**3, g**2, g, g**3, g**3, g**2, g])
    assert np.allclose(b.next_obs[:, 0].numpy(), [3, 3, 3, 6, 7, 7, 7])
    assert torch.allclose(b.act, agent.scale_action(torch.as_tensor(ds.actions)))  # the demo action, scaled
    assert torch.equal(b.base_act, agent.base_action(torch.as_tensor(obs)))
    assert len(buf.state_dict()["data"]) == 0  # rebuilt from the dataset on resume, not saved
    cfg = copy.deepcopy(agent.cfg)
    cfg.bootstrap_truncation = True
    assert rs.demo_buffer(cfg, agent, ds, DataTransform()).batch(torch.arange(7)).done[6].item() == 0.0


# ------------------------------------------------------------------------------------ losses
def test_critic_loss_is_the_square_of_the_mean_abs_error_over_heads():
    q = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 2.0]])  # K = 3 heads, B = 2
    y = torch.tensor([1.0, 1.0])
    # row 1: |0|, |2|, |−1| → mean 1 → 1;  row 2: |1|, |−2|, |1| → mean 4/3 → 16/9
    assert rs.abs_mean_squared_loss(q, y).item() == pytest.approx((1 + 16 / 9) / 2)
    assert ((q - y) ** 2).mean().item() == pytest.approx(11 / 6)  # not the MSE


@pytest.mark.parametrize("warmup", [True, False])
def test_td3_update_by_hand(tmp_path, warmup):
    agent = _agent(tmp_path, "td3")
    with torch.no_grad():  # a nonzero residual so the clamp and the actor matter
        agent.actor.net.net[-1].weight.normal_()
        agent.actor_target.load_state_dict(agent.actor.state_dict())
    before = copy.deepcopy(agent)
    b = _batch(agent)
    torch.manual_seed(7)
    m = agent.update(b, update_actor=True, warmup=warmup)
    torch.manual_seed(7)
    cfg = agent.cfg
    with torch.no_grad():
        d = before.actor_target(torch.cat([b.next_obs, b.next_base_act], -1))
        if not warmup:
            noise = (cfg.stddev * torch.randn_like(d)).clamp(-cfg.stddev_clip, cfg.stddev_clip)
            d = (d + noise).clamp(-1 + 1e-6, 1 - 1e-6)
        q = before.critic_target(b.next_obs, (b.next_base_act + d).clamp(-1, 1))
        heads = torch.randperm(cfg.num_critics)[:2]
        y = b.rew + b.discount * (1 - b.done) * q[heads].min(0).values
        qs = before.critic(b.obs, b.act)
        loss = ((qs - y).abs().mean(0) ** 2).mean()
    assert m["critic_qt"].item() == pytest.approx(y.mean().item(), rel=1e-5)
    assert m["critic_loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    # the actor is scored by the critic after its step: −mean over heads and batch
    with torch.no_grad():
        a = (b.base_act + before.actor(torch.cat([b.obs, b.base_act], -1))).clamp(-1, 1)
        actor_loss = -agent.critic(b.obs, a).mean()
    assert m["actor_loss"].item() == pytest.approx(actor_loss.item(), rel=1e-5)
    assert "alpha" not in m and not all(torch.equal(p, q_) for p, q_ in zip(agent.actor_target.parameters(),
                                                                            before.actor_target.parameters()))


def test_sac_update_and_terminal_rows(tmp_path):
    agent = _agent(tmp_path, init_alpha=0.5)
    before = copy.deepcopy(agent)
    b = _batch(agent)
    torch.manual_seed(3)
    m = agent.update(b)
    torch.manual_seed(3)
    with torch.no_grad():
        u, logp = before.actor.sample(torch.cat([b.next_obs, b.next_base_act], -1))
        q = before.critic_target(b.next_obs, (b.next_base_act + 0.1 * u).clamp(-1, 1))
        heads = torch.randperm(10)[:2]
        y = b.rew + b.discount * (1 - b.done) * (q[heads].min(0).values - 0.5 * logp)
        loss = rs.abs_mean_squared_loss(before.critic(b.obs, b.act), y)
    assert m["critic_loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert m["critic_qt"].item() == pytest.approx(y.mean().item(), rel=1e-5)
    assert torch.equal(y[b.done > 0], b.rew[b.done > 0])  # no bootstrap at a done
    assert m["alpha"].item() == pytest.approx(0.5) and "entropy" in m
    m2 = agent.update(b, update_actor=False)
    assert "actor_loss" not in m2 and "critic_loss" in m2


# ------------------------------------------------------------------------------------ runs
def _base_policy(use_scripted, tmp_path) -> str:
    from offrl.algos import bc

    s = bc.main(["--dataset", SCRIPTED_ID, "--steps", "300", "--hidden", "32", "32", "--eval-every", "0",
                 "--eval-episodes", "2", "--progress", "False", "--threads", "1", "--run-dir", str(tmp_path / "bc")])
    return s["checkpoint"]


RUN = ["--env", "InvertedPendulum-v5", "--demos", SCRIPTED_ID, "--hidden", "16", "16", "--batch-size", "32",
       "--num-critics", "4", "--eval-episodes", "2", "--log-every", "20", "--threads", "1", "--progress", "False"]


def test_cli_smoke_run_mixing_and_errors(use_scripted, tmp_path, monkeypatch):
    base = _base_policy(use_scripted, tmp_path)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "algos", "residual_sac.py"), "--help"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for flag in ("--base-policy", "--demos", "--action-scale", "--residual-actor", "--no-residual",
                 "--critic-warmup-steps", "--n-step", "--critic-loss"):
        assert flag in out.stdout, flag
    sources, flags = [], []
    original = ResidualSAC.update

    def spy(self, batch, update_actor=True, warmup=False):
        sources.append(batch.source.clone())
        flags.append((update_actor, warmup))
        return original(self, batch, update_actor, warmup)

    monkeypatch.setattr(ResidualSAC, "update", spy)
    run_dir = tmp_path / "run"
    env = {**os.environ, "MINARI_DATASETS_PATH": str(use_scripted)}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "algos", "residual_sac.py"), *RUN, "--base-policy", base,
                          "--total-steps", "60", "--learning-starts", "30", "--critic-warmup-steps", "5",
                          "--eval-every", "30", "--run-dir", str(run_dir)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    assert printed == json.load(open(run_dir / "summary.json"))
    assert printed["steps"] == 60 and printed["updates"] == 5 + 4 * 30 and printed["base"]["return_mean"] > 0
    assert printed["zero_residual"]["return_mean"] > 0
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert sorted({r["step"] for r in rows if "eval/return_mean" in r}) == [30, 60]
    assert {r["step"] for r in rows if "train/critic_loss" in r} == {40, 60}
    # in-process: the schedule's flags and exactly 16 + 16 rows from each buffer in every batch
    rs.main([*RUN, "--base-policy", base, "--total-steps", "12", "--learning-starts", "8", "--critic-warmup-steps", "3",
             "--eval-every", "0", "--run-dir", str(tmp_path / "spy")])
    assert flags == [(False, True)] * 3 + [(False, False), (False, False), (False, False), (True, False)] * 4
    assert all(int((s == 0).sum()) == 16 and int((s == 1).sum()) == 16 for s in sources)
    with pytest.raises(OffrlError, match="--base-policy is needed"):
        rs.train(Config(env="InvertedPendulum-v5", demos=SCRIPTED_ID, run_dir=str(tmp_path / "nobase")))
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "algos", "residual_sac.py"), "--action-scale", "0"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("offrl: error: --action-scale")


@pytest.mark.parametrize("actor", ["sac", "td3"])
def test_exact_resume_through_the_cli_restores_the_base(use_scripted, tmp_path, monkeypatch, actor):
    base = _base_policy(use_scripted, tmp_path)
    moved = shutil.copy(base, tmp_path / "base.pt")
    args = [*RUN, "--base-policy", str(moved), "--residual-actor", actor, "--total-steps", "60",
            "--learning-starts", "20", "--critic-warmup-steps", "6", "--eval-every", "30", "--checkpoint-every", "25"]
    rs.main([*args, "--run-dir", str(tmp_path / "full")])
    cut = tmp_path / "cut"
    original = _signal_at(monkeypatch, 6 + 4 * 12 + 2, signal.SIGTERM)  # mid-loop, between two checkpoints
    with pytest.raises(SystemExit) as e:  # the CLI's exit on SIGTERM, after saving
        rs.main([*args, "--run-dir", str(cut)])
    assert e.value.code == 128 + signal.SIGTERM
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["train"]["step"] == 33
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    os.remove(moved)  # the resumed run takes the base from the checkpoint
    rs.main(["--resume", str(cut / "checkpoint.pt"), "--progress", "False", "--threads", "1"])
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 60
    for k, v in a["agent"].items():
        assert torch.equal(v, b["agent"][k]), k
    for k, v in a["frozen"]["base"]["agent"].items():
        assert torch.equal(v, b["frozen"]["base"]["agent"][k]), k
    pa, pb = a["train"]["parts"], b["train"]["parts"]
    assert torch.equal(pa["online"]["data"], pb["online"]["data"])
    assert _rows(tmp_path / "full") == _rows(cut)


def test_no_residual_baseline_runs_without_a_base(use_scripted, tmp_path):
    s = rs.main([*RUN, "--no-residual", "--total-steps", "30", "--learning-starts", "20", "--critic-warmup-steps", "2",
                 "--eval-every", "0", "--run-dir", str(tmp_path / "rlpd")])
    agent = ResidualSAC.load(s["checkpoint"], device="cpu")
    assert agent.base is None and agent.actor.trunk.net[0].in_features == OBS  # the actor sees s only
    assert torch.equal(agent.act_half, torch.ones(ACT)) and s["base"] is None


@pytest.mark.slow
def test_residual_beats_a_weak_base_on_the_pendulum(use_scripted, tmp_path):
    """A 300-step BC base on the 50/50 good/bad scripted data falls at once (return 21 over 10
    episodes); the residual (±0.1 of the scaled box) learns to balance. Measured (1 thread, shared
    CPU, 32-55 s): evaluations 49.4 / 132.4 / 144.2 at 500 / 1000 / 1500 env steps."""
    base = _base_policy(use_scripted, tmp_path)
    s = rs.main(["--env", "InvertedPendulum-v5", "--demos", SCRIPTED_ID, "--base-policy", base, "--total-steps", "1500",
                 "--learning-starts", "300", "--critic-warmup-steps", "100", "--hidden", "64", "64", "--batch-size", "128",
                 "--eval-every", "500", "--eval-episodes", "10", "--threads", "1", "--progress", "False",
                 "--run-dir", str(tmp_path / "learn")])
    assert s["base"]["return_mean"] < 40, s["base"]
    assert s["final_return"] >= 3 * s["base"]["return_mean"] and s["final_return"] >= 90, s


def test_fetch_push_smoke(tmp_path, monkeypatch, data_dirs):
    pytest.importorskip("gymnasium_robotics")
    pytest.importorskip("offrl.envs.robotics")
    from offrl.algos import bc
    from offrl.data import get_info
    from offrl.data import fetch as fetch_data

    fetch_data.build(get_info("offrl/fetch/push-scripted-v0"), force=True, episodes=4)
    s = bc.main(["--dataset", "offrl/fetch/push-scripted-v0", "--steps", "50", "--hidden", "16", "16", "--eval-every", "0",
                 "--eval-episodes", "1", "--progress", "False", "--threads", "1", "--run-dir", str(tmp_path / "bc")])
    r = rs.main(["--env", "offrl/FetchPush-v4", "--base-policy", s["checkpoint"], "--total-steps", "40",
                 "--learning-starts", "20", "--critic-warmup-steps", "2", "--hidden", "16", "16", "--batch-size", "16",
                 "--num-critics", "4", "--eval-every", "0", "--eval-episodes", "2", "--threads", "1", "--progress", "False",
                 "--run-dir", str(tmp_path / "push")])
    assert r["dataset"] == "offrl/fetch/push-scripted-v0" and r["final_success_rate"] is not None
    assert 0.0 <= r["final_success_rate"] <= 1.0 and r["base"]["success_rate"] is not None
    assert r["zero_residual"]["success_rate"] is not None  # the clamped base the residual starts from


def test_gymnasium_robotics_ids_are_aliases_of_the_wrapped_tasks():
    cfg = Config(env="FetchPickAndPlace-v4")
    cfg.resolve(None)
    assert cfg.env == "offrl/FetchPickAndPlace-v4" and cfg.demos == "offrl/fetch/pickandplace-scripted-v0"
    other = Config(env="InvertedPendulum-v5", demos=SCRIPTED_ID)
    other.resolve(None)
    assert other.env == "InvertedPendulum-v5"
