"""PROPS: the behaviour loss by hand, φ reset to θ, the buffer's order and the excluded oldest m
steps, the stale-θ quirk, on-policy sampling with ε_P = 0 and a huge λ, presets, exact resume
after SIGTERM, the script, learning."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_signals import _rows, default_handlers  # noqa: F401  (autouse: default signal handlers)

from offrl.algos import props
from offrl.algos.props import PROPS, Config, gaussian_kl, props_loss, sampling_error
from offrl.collector import Collector, Transition
from offrl.errors import OffrlError, TrainingInterrupted
from offrl.rollout import RolloutStorage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(env="InvertedPendulum-v5", num_steps=64, props_steps=32, num_envs=2, num_minibatches=4,
            props_num_minibatches=4, props_epochs=2, update_epochs=2, hidden=(16, 16), total_steps=512,
            eval_every=256, eval_episodes=2, log_every=64, checkpoint_every=10_000, progress=False, threads=1, se_epochs=3)


# ------------------------------------------------------------------------------------ loss
def test_props_loss_matches_hand_computation_and_clip_stops_push_down():
    # one action dim; θ: N(0, 1) at both states; φ means chosen so that ρ = 1.5, 0.5 (< 1 − 0.3), 1.1
    mu_t, std_t = torch.zeros(3, 1), torch.ones(3, 1)
    a = torch.tensor([[1.0], [1.0], [1.0]])
    logp_t = -0.5 * a.square().sum(-1) - 0.5 * math.log(2 * math.pi)
    ratios = torch.tensor([1.5, 0.5, 1.1])
    # log N(1; μ, 1) − log N(1; 0, 1) = (1 − (1 − μ)²)/2 = log r  →  μ = 1 − sqrt(1 − 2 log r)
    mu_p = (1.0 - torch.sqrt(1.0 - 2.0 * ratios.log()))[:, None].requires_grad_(True)
    std_p = torch.ones(3, 1)
    logp_p = (-0.5 * (a - mu_p).square() - 0.5 * math.log(2 * math.pi)).sum(-1)
    m = props_loss(logp_p, logp_t, mu_p, std_p, mu_t, std_t, clip=0.3, lam=0.3)
    # max(r, clip(r, 0.7, 1.3)): 1.5, 0.7, 1.1
    assert m["surrogate"].item() == pytest.approx((1.5 + 0.7 + 1.1) / 3, rel=1e-5)
    kl = (mu_p.detach().squeeze(-1) ** 2 / 2).mean()  # equal stds: KL = (μ_p − μ_q)² / 2
    assert m["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert m["loss"].item() == pytest.approx((1.5 + 0.7 + 1.1) / 3 + 0.3 * kl.item(), rel=1e-5)
    approx = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.1)) / 3
    assert m["approx_kl"].item() == pytest.approx(approx, rel=1e-5)
    assert m["clipfrac"].item() == pytest.approx(2 / 3)
    # the surrogate's gradient: ρ (1 − μ) / 3 per sample where unclipped, 0 for ρ = 0.5 < 0.7
    m["surrogate"].backward()
    g = mu_p.grad.squeeze(-1)
    expected = ratios * (1.0 - mu_p.detach().squeeze(-1)) / 3
    assert g[1].item() == 0.0
    assert torch.allclose(g[[0, 2]], expected[[0, 2]], rtol=1e-5)
    # ROS: −mean log ρ
    m = props_loss(logp_p.detach(), logp_t, mu_p.detach(), std_p, mu_t, std_t, clip=0.3, lam=0.0, ros=True)
    assert m["loss"].item() == pytest.approx(-ratios.log().mean().item(), rel=1e-5)
    # KL with different stds: log(σq/σp) + (σp² + Δμ²)/(2σq²) − 1/2
    v = gaussian_kl(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(0.0), torch.tensor(0.5))
    assert v.item() == pytest.approx(math.log(0.25) + (4 + 1) / 0.5 - 0.5, rel=1e-6)


def test_sampling_error_estimate():
    mu, std = torch.full((4, 1), 2.0), torch.full((4, 1), 0.5)
    act = torch.tensor([[2.5], [1.5], [2.5], [1.5]])  # z = ±1: m = 0, s = 1  →  0
    assert sampling_error(act, mu, std).item() == pytest.approx(0.0, abs=1e-7)
    act = torch.tensor([[3.0], [2.0], [3.0], [2.0]])  # z = 2, 0: m = 1, s = 1  →  1/2
    assert sampling_error(act, mu, std).item() == pytest.approx(0.5, rel=1e-6)


def test_paper_sampling_error_one_adam_step_by_hand():
    """The paper's compute_se with one epoch of one minibatch: the MLE copy takes one Adam step, which
    moves every trainable parameter by −lr·sign(grad) (Adam's first step), the first two weight
    matrices stay frozen; the result is mean(|Â_norm| (log π_MLE − log π_θ)) with log σ clamped to [−3, 1]."""
    from offrl.algos.ppo import GaussianPolicy, paper_sampling_error

    torch.manual_seed(0)
    actor = GaussianPolicy(3, 2, (8, 8), mean_tanh=True)
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([-4.0, 0.2]))  # the first is clamped to −3
    obs, act, adv = torch.randn(10, 3), torch.randn(10, 2), torch.randn(10)
    theta = {k: v.clone() for k, v in actor.state_dict().items()}
    lr = 1e-2

    def logp(params, o, a):  # by hand: 3 → 8 → 8 → 2 with tanh everywhere, Normal log-density
        h = torch.tanh(o @ params["mean.net.0.weight"].T + params["mean.net.0.bias"])
        h = torch.tanh(h @ params["mean.net.2.weight"].T + params["mean.net.2.bias"])
        mean = torch.tanh(h @ params["mean.net.4.weight"].T + params["mean.net.4.bias"])
        log_std = params["log_std"].clamp(-3.0, 1.0)
        return (-((a - mean) ** 2) / (2 * torch.exp(2 * log_std)) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    p = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    (-logp(p, obs, act).mean()).backward()
    frozen = {"mean.net.0.weight", "mean.net.2.weight"}
    mle = {k: (v.detach() if k in frozen else v.detach() - lr * torch.sign(v.grad)) for k, v in p.items()}
    a_norm = ((adv - adv.mean()) / (adv.std() + 1e-8)).abs()
    want = (a_norm * (logp(mle, obs, act) - logp(theta, obs, act))).mean()
    got = paper_sampling_error(actor, obs, act, adv, epochs=1, lr=lr, minibatch=10, generator=torch.Generator().manual_seed(0))
    assert got.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)
    assert all(torch.equal(v, theta[k]) for k, v in actor.state_dict().items())  # θ untouched
    assert paper_sampling_error(actor, obs, act, adv, 0, lr, 10, torch.Generator()).item() == 0.0  # no fit: π_MLE = θ
    # data from a policy whose mean is shifted: the fitted π_MLE explains it better than θ
    with torch.no_grad():
        off = torch.normal(actor.mean(obs.repeat(40, 1)) + 0.8, 0.5)
    big = paper_sampling_error(actor, obs.repeat(40, 1), off, torch.randn(400), 50, 1e-2, 100, torch.Generator().manual_seed(1))
    assert big.item() > 0.1


def test_paper_sampling_error_is_logged_and_leaves_training_alone(tmp_path):
    """--se-freq 1 logs train/sampling_error_paper at every PPO update; the run's weights and its other
    metrics are those of --se-freq 0 (the estimator has its own generator)."""
    on = props.train(Config(run_dir=str(tmp_path / "on"), se_freq=1, **TINY))
    off = props.train(Config(run_dir=str(tmp_path / "off"), se_freq=0, **TINY))
    a = torch.load(on["checkpoint"], weights_only=True)["agent"]
    b = torch.load(off["checkpoint"], weights_only=True)["agent"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    rows_on, rows_off = _rows(tmp_path / "on"), _rows(tmp_path / "off")
    se = [r["train/sampling_error_paper"] for r in rows_on if "train/sampling_error_paper" in r]
    assert len(se) >= 2 and all(math.isfinite(x) for x in se)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train/sampling_error_paper"} for r in rows]  # noqa: E731
    assert strip(rows_on) == strip(rows_off)


# ------------------------------------------------------------------------------------ presets
def test_presets_and_validation():
    c = Config(env="Hopper-v5")
    c.resolve(None)
    assert (c.num_steps, c.props_steps, c.lr, c.props_lr, c.props_target_kl, c.props_lambda,
            c.props_num_minibatches) == (2048, 256, 1e-3, 1e-3, 0.05, 0.3, 16)
    assert (c.ent_coef, c.target_kl, c.kl_stop, c.buffer_rollouts, c.props_clip, c.props_epochs) == \
        (0.01, 0.03, "minibatch", 2, 0.3, 16)
    c = Config(env="Walker2d-v5", props_lambda=1.0)
    c.resolve(None)
    assert (c.num_steps, c.props_steps, c.props_target_kl, c.props_lambda, c.props_num_minibatches) == \
        (2048, 256, 0.1, 1.0, 32)
    c = Config(env="InvertedPendulum-v5")
    c.resolve(None)
    assert (c.num_steps, c.props_steps, c.lr, c.props_lr, c.props_target_kl, c.props_lambda) == \
        (2048, 1024, 1e-4, 1e-4, 0.05, 0.3)
    assert c.mean_tanh is True  # the PROPS repo's Agent.actor_mean ends in nn.Tanh(): target and behaviour
    agent = PROPS(c, obs_dim=4, act_dim=1)
    assert isinstance(agent.actor.mean.net[-1], torch.nn.Tanh) and isinstance(agent.behavior.mean.net[-1], torch.nn.Tanh)
    with pytest.raises(OffrlError, match="multiple of --props-steps"):
        c = Config(num_steps=100, props_steps=30)
        c.resolve(None)
        c.validate()


# ------------------------------------------------------------------------------------ buffer
def _tr(t: int, N: int = 1) -> Transition:
    obs = np.full((N, 4), float(t))
    return Transition(obs, np.zeros((N, 1)), np.full(N, float(t)), obs + 1, np.zeros(N, bool), np.zeros(N, bool),
                      {"sample": torch.full((N, 1), float(t))})


def test_ring_order_and_oldest_m_excluded_once_full():
    cfg = Config(env="InvertedPendulum-v5", num_steps=4, props_steps=2, num_envs=1, hidden=(8,), total_steps=64)
    agent = PROPS(cfg, 4, 1)
    for t in range(6):  # 6 of the 8 rows: not full, all used
        agent.store(_tr(t))
    order = agent.buffer_order()
    assert agent.buf_obs[order, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert agent.behaviour_indices().tolist() == [0, 1, 2, 3, 4, 5]
    for t in range(6, 11):  # 11 steps: rows hold 3..10, oldest first
        agent.store(_tr(t))
    order = agent.buffer_order()
    assert agent.buf_obs[order, 0, 0].tolist() == [3, 4, 5, 6, 7, 8, 9, 10]
    assert agent.buf_rew[order, 0].tolist() == [3, 4, 5, 6, 7, 8, 9, 10]
    assert agent.buf_obs[order][agent.behaviour_indices(), 0, 0].tolist() == [5, 6, 7, 8, 9, 10]  # oldest m = 2 out


def _spy(monkeypatch):
    """Record the inputs of every props_loss call (the behaviour minibatches)."""
    calls = []
    original = props.props_loss

    def spy(logp_phi, logp_theta, *args, **kwargs):
        calls.append((logp_phi.detach().clone(), logp_theta.clone()))
        return original(logp_phi, logp_theta, *args, **kwargs)

    monkeypatch.setattr(props, "props_loss", spy)
    return calls


def _collect(agent, storage, col, steps):
    for _ in range(steps):
        col.step(agent.rollout_action)


@pytest.mark.parametrize("stale", [True, False])
def test_phi_reset_to_theta_and_stale_theta_quirk(monkeypatch, stale):
    torch.manual_seed(0)
    cfg = Config(env="InvertedPendulum-v5", num_steps=32, props_steps=16, num_envs=1, num_minibatches=2,
                 props_num_minibatches=2, props_epochs=3, update_epochs=2, hidden=(8, 8), total_steps=256,
                 lr=1e-2, props_lr=1e-2, props_target_kl=0.0, target_kl=0.0, stale_theta=stale)
    agent = PROPS(cfg, 4, 1)
    storage = RolloutStorage(16, 1, 4, 1)
    col = Collector("InvertedPendulum-v5", 1, seed=0)
    col.sinks.append(agent.rollout_sink(storage))
    calls = _spy(monkeypatch)
    _collect(agent, storage, col, 16)
    with torch.no_grad():
        agent.behavior.log_std.add_(0.7)  # φ far from θ before the update: it must be reset
    agent.learn(storage, agent.state_value(col.obs))  # call 1: behaviour update only
    storage.reset()
    assert torch.allclose(calls[0][0], calls[0][1], atol=1e-6)  # first minibatch: ρ = 1, so φ = θ
    assert len(calls) == 3 * 1  # 16 rows, minibatch (2·32 − 16) // 2 = 24 → one per epoch
    assert not torch.allclose(calls[-1][0], calls[-1][1])  # φ moved
    calls.clear()
    _collect(agent, storage, col, 16)
    agent.learn(storage, agent.state_value(col.obs))  # call 2: PPO update of θ, then the behaviour update
    col.close()
    first_phi, first_theta = calls[0]
    # φ starts at the updated θ; stale: compared with θ's statistics from before the PPO update
    assert torch.allclose(first_phi, first_theta, atol=1e-6) is (not stale)


def test_eps_zero_huge_lambda_keeps_phi_at_theta():
    torch.manual_seed(0)
    cfg = Config(env="InvertedPendulum-v5", num_steps=64, props_steps=32, num_envs=1, num_minibatches=4,
                 props_num_minibatches=4, hidden=(8, 8), total_steps=256, props_clip=0.0, props_lambda=1e6,
                 props_target_kl=0.0, props_lr=1e-4)
    agent = PROPS(cfg, 4, 1)
    storage = RolloutStorage(32, 1, 4, 1)
    col = Collector("InvertedPendulum-v5", 1, seed=0)
    col.sinks.append(agent.rollout_sink(storage))
    _collect(agent, storage, col, 32)
    m = agent.learn(storage, agent.state_value(col.obs))
    col.close()
    assert m["props_steps"].item() == 16 * 2  # 32 rows, minibatches of (128 − 32) // 4 = 24: two per epoch, no early stop
    diff = max((p - q).abs().max().item() for p, q in zip(agent.behavior.parameters(), agent.actor.parameters()))
    assert diff < 1e-3, diff  # within a few Adam steps of lr 1e-4
    assert m["props_kl_behaviour_target"].item() < 1e-6


def test_without_the_behaviour_update_phi_is_theta_and_the_buffer_is_the_same():
    """--no-behaviour-update: PPO over the same b-rollout buffer, sampled on-policy (φ = θ after
    every learn call), no behaviour metrics; the PPO update itself is PROPS's."""
    torch.manual_seed(0)
    kw = dict(env="InvertedPendulum-v5", num_steps=64, props_steps=32, num_envs=1, num_minibatches=4,
              props_num_minibatches=4, hidden=(8, 8), total_steps=256)
    cfg = Config(**kw, behaviour_update=False)
    agent = PROPS(cfg, 4, 1)
    storage = RolloutStorage(32, 1, 4, 1)
    col = Collector("InvertedPendulum-v5", 1, seed=0)
    col.sinks.append(agent.rollout_sink(storage))
    for _ in range(4):  # two PPO updates
        _collect(agent, storage, col, 32)
        m = agent.learn(storage, agent.state_value(col.obs))
        storage.reset()
        for p, q in zip(agent.behavior.parameters(), agent.actor.parameters()):
            assert torch.equal(p, q)
        assert not any(k.startswith("props_") for k in m) and "sampling_error" in m
    col.close()
    assert agent.buf_size == 128 and "policy_loss" in m


# ------------------------------------------------------------------------------------ resume, script
def test_sigterm_mid_run_resumes_exactly(tmp_path, monkeypatch):
    props.train(Config(run_dir=str(tmp_path / "full"), **TINY))
    calls = {"n": 0}
    original = PROPS.rollout_action

    def rollout_action(self, obs):
        calls["n"] += 1
        if calls["n"] == 150:  # env step 300 of 512: ring partly overwritten, in the middle of an m chunk
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, obs)

    monkeypatch.setattr(PROPS, "rollout_action", rollout_action)
    with pytest.raises(TrainingInterrupted) as e:
        props.train(Config(run_dir=str(tmp_path / "cut"), **TINY))
    assert e.value.step == 300
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert cut["props_state"] == {"buf_ptr": 150 % 128, "buf_size": 128, "calls": 4}
    assert cut["train"]["parts"]["phase"]["storage"]["ptr"] == 150 - 4 * 32
    monkeypatch.setattr(PROPS, "rollout_action", original)
    props.train(Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 512
    assert a["agent"].keys() == b["agent"].keys() and "behavior.log_std" in a["agent"] and "buf_obs" in a["agent"]
    for k, v in a["agent"].items():
        assert torch.equal(v, b["agent"][k]), k
    assert a["props_state"] == b["props_state"]
    sa, sb = a["optimizers"]["props"]["state"], b["optimizers"]["props"]["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")


def test_script_cli_run_and_registry(tmp_path):
    run_dir = tmp_path / "cli"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "algos", "props.py"), "--env", "InvertedPendulum-v5",
                          "--total-steps", "512", "--num-steps", "128", "--props-steps", "64", "--num-minibatches", "4",
                          "--props-num-minibatches", "4", "--props-epochs", "2", "--update-epochs", "2",
                          "--eval-every", "256", "--eval-episodes", "2", "--log-every", "128", "--threads", "1",
                          "--progress", "False", "--run-dir", str(run_dir)],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algo"] == "props" and summary["steps"] == 512 and summary["updates"] == 8
    assert summary["final_return"] is not None
    rows = _rows(run_dir)
    assert [r["step"] for r in rows if "train/approx_kl" in r] == [128, 256, 384, 512]
    assert all("train/sampling_error" in r and "train/props_approx_kl" in r for r in rows if "train/approx_kl" in r)
    from offrl import registry

    entry = registry.get("props")
    assert entry.kind == "on-policy" and entry.benchmark is False and entry.agent is PROPS


# ------------------------------------------------------------------------------------ learning
def test_props_learns_inverted_pendulum(tmp_path):
    """A uniform-random policy keeps the pole up for ~5 steps."""
    summary = props.train(Config(env="InvertedPendulum-v5", total_steps=40960, lr=3e-4, props_lr=1e-4,
                                 seed=0, eval_every=0, eval_episodes=5, threads=1, progress=False,
                                 run_dir=str(tmp_path / "learn")))
    assert summary["final_return"] >= 500, summary


@pytest.mark.slow
def test_props_lowers_the_sampling_error_of_a_fixed_target(tmp_path):
    """The paper's premise, with θ held fixed (lr 1e-12) so only the sampling differs: PROPS's
    behaviour updates bring the buffer's actions closer to π_θ than on-policy sampling of the same
    buffer. Measured, Hopper-v5, steps 10k-20k, quick estimator: PROPS / on-policy = 0.58, 0.47, 0.43
    for seeds 0, 1, 2 (a behaviour update that leaves φ = θ gives 1 in expectation)."""
    def mean_se(behaviour_update):
        run = tmp_path / ("props" if behaviour_update else "onpolicy")
        props.train(Config(env="Hopper-v5", total_steps=20480, lr=1e-12, behaviour_update=behaviour_update, seed=0,
                           eval_every=0, se_freq=0, threads=1, progress=False, run_dir=str(run)))
        return np.mean([r["train/sampling_error"] for r in _rows(run) if "train/sampling_error" in r and r["step"] > 10240])
    with_props, on_policy = mean_se(True), mean_se(False)
    assert with_props < 0.8 * on_policy, (with_props, on_policy)
