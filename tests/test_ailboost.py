"""AILBoost: boosting weights, weighted sampling, the discriminator loss and penalty by hand, rewards
from the current discriminator, absorbing states, exact resume mid-round, the CLI, learning."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from test_signals import _rows, _signal_at

from offrl import logger as logger_mod
from offrl.algos import ailboost
from offrl.algos.ailboost import (AILBoost, Config, Discriminator, absorbing_rows, discriminator_loss,
                                  learner_weights, next_block_weights)
from offrl.buffer import Batch, ReplayBuffer

EXPERT = "offrl/invertedpendulum/test-expert-v0"


@pytest.fixture(autouse=True)
def default_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.fixture
def expert(data_dirs, temp_register):
    """A 2-episode InvertedPendulum-v5 expert: the stabilising controller with small noise (1000-step
    episodes, return 1000 each), registered as EXPERT and built on first use."""
    from offrl.data.builtin import ENV_ID, collect_scripted
    from offrl.data.registry import DatasetInfo

    def build(info, force=False, **kw):
        import gymnasium as gym

        from offrl.data.writer import write_minari_dataset

        episodes = collect_scripted(2000, seed=3, p_good=1.0, noise=0.05)
        return write_minari_dataset(EXPERT, episodes, ENV_ID, action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
                                    ref_min_score=5.0, ref_max_score=1000.0, force=force)

    temp_register(DatasetInfo(id=EXPERT, source="offrl", env_id=ENV_ID, ref_min_score=5.0, ref_max_score=1000.0,
                              obs_dim=4, act_dim=1, builder=build))
    return EXPERT


TINY = dict(env="InvertedPendulum-v5", expert_dataset=EXPERT, hidden=(32, 32), disc_hidden=(16, 16), batch_size=32,
            eval_episodes=2, boosted_eval_episodes=2, log_every=50, progress=False, threads=1, learning_starts=100,
            policy_iter=100, n_samples=50, disc_iters=5, disc_buffer_size=200, updates_per_step=0.5)



# ------------------------------------------------------------------------------------ weights
def _hand_weights(rounds: int, blocks: int, eta: float, when_full: str = "roll") -> tuple[np.ndarray | None, list[int]]:
    """Block weights after ``rounds`` rounds into a ring of ``blocks`` blocks, written out by hand:
    (1 − η)^(m−1) for the oldest block of m, η(1 − η)^j for the block j rounds younger than the newest."""
    m = min(rounds, blocks)
    if m < 2:
        return None, []
    age = [eta * (1 - eta) ** j for j in range(m - 1)] + [(1 - eta) ** (m - 1)]  # newest first
    w = np.zeros(m)
    newest = (rounds - 1) % blocks
    for j, v in enumerate(age):
        w[(newest - j) % blocks] = v
    return w, [(rounds - m + i) % blocks for i in range(m)]


def test_boosting_weights_by_hand_including_a_full_buffer():
    eta = 0.1
    w = None
    seq = []
    for k in range(6):  # 4 blocks of room: rounds 5 and 6 overwrite blocks 0 and 1
        w = next_block_weights(w, min(k + 1, 4), k % 4, eta, "roll")
        seq.append(None if w is None else w.copy())
    assert seq[0] is None
    np.testing.assert_allclose(seq[1], [0.9, 0.1])
    np.testing.assert_allclose(seq[2], [0.81, 0.09, 0.1])
    np.testing.assert_allclose(seq[3], [0.729, 0.081, 0.09, 0.1])
    np.testing.assert_allclose(seq[4], [0.1, 0.729, 0.081, 0.09])  # block 0 holds the newest learner
    np.testing.assert_allclose(seq[5], [0.09, 0.1, 0.729, 0.081])
    for k in range(1, 6):
        np.testing.assert_allclose(seq[k], _hand_weights(k + 1, 4, eta)[0])
        assert seq[k].sum() == pytest.approx(1.0)
    # renormalize: the replaced block gets η, the others share 1 − η in their old proportions
    r = next_block_weights(seq[3], 4, 0, eta, "renormalize")
    np.testing.assert_allclose(r, [0.1, 0.081 * 0.9 / 0.271, 0.09 * 0.9 / 0.271, 0.1 * 0.9 / 0.271])
    assert r.sum() == pytest.approx(1.0)


def test_learner_pairing_official_quirk_and_correct():
    w = np.array([0.729, 0.081, 0.09, 0.1])  # blocks 0..3, block 0 the oldest learner's
    blocks = [0, 1, 2, 3]
    np.testing.assert_allclose(learner_weights(w, blocks, "block"), w)
    # official get_learner_weights: ascending weights paired oldest-first → the newest gets 0.729
    np.testing.assert_allclose(learner_weights(w, blocks, "sorted"), [0.081, 0.09, 0.1, 0.729])
    np.testing.assert_allclose(learner_weights(None, [0], "sorted"), [1.0])
    # after the ring wrapped: learners oldest-first sit in blocks 2, 3, 0, 1
    w2 = np.array([0.1, 0.09, 0.729, 0.081])
    np.testing.assert_allclose(learner_weights(w2, [2, 3, 0, 1], "block"), [0.729, 0.081, 0.1, 0.09])


def test_weighted_sampling_frequencies_match_the_block_weights():
    n, blocks = 25, 4
    buf = ReplayBuffer(2, 1, n * blocks, seed=0)
    buf.add(np.zeros((n * blocks, 2)), np.zeros((n * blocks, 1)), np.arange(n * blocks, dtype=np.float32),
            np.zeros((n * blocks, 2)), np.zeros(n * blocks))
    w = np.array([0.729, 0.081, 0.09, 0.1])
    buf.set_weights(torch.as_tensor(np.repeat(w / n, n), dtype=torch.float32))
    draws = 200_000
    rows = buf.sample(draws).rew.long().numpy()
    freq = np.bincount(rows // n, minlength=blocks) / draws
    np.testing.assert_allclose(freq, w, atol=4 * np.sqrt(w * (1 - w) / draws).max())
    within = np.bincount(rows[rows < n], minlength=n) / (rows < n).sum()  # uniform inside a block
    assert np.abs(within - 1 / n).max() < 0.01


# ------------------------------------------------------------------------------------ discriminator
def _tiny_disc() -> Discriminator:
    d = Discriminator(2, hidden=(3,))
    lin1, lin2 = d.net[0], d.net[2]
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[0.5, -0.3], [0.2, 0.8], [-0.6, 0.1]]))
        lin1.bias.copy_(torch.tensor([0.1, -0.2, 0.05]))
        lin2.weight.copy_(torch.tensor([[0.7, -0.4, 0.9]]))
        lin2.bias.copy_(torch.tensor([0.05]))
    return d


def _np_disc(x):
    w1 = np.array([[0.5, -0.3], [0.2, 0.8], [-0.6, 0.1]])
    b1 = np.array([0.1, -0.2, 0.05])
    w2 = np.array([0.7, -0.4, 0.9])
    pre = x @ w1.T + b1
    f = np.tanh(np.maximum(pre, 0) @ w2 + 0.05)
    grad = (1 - f ** 2)[:, None] * ((pre > 0) * w2) @ w1  # ∂f/∂x per row
    return f, grad


@pytest.mark.parametrize("divergence", ["rkl", "js"])
def test_discriminator_loss_and_gradient_penalty_by_hand(divergence):
    d = _tiny_disc()
    xe = torch.tensor([[0.3, -0.2], [1.0, 0.5]])
    xp = torch.tensor([[-0.4, 0.9], [0.2, 0.1]])
    torch.manual_seed(7)
    loss, gp, fe, fp = discriminator_loss(d, xe, xp, divergence, penalty=10.0)
    torch.manual_seed(7)
    alpha = torch.rand(2, 1).numpy().astype(np.float64)
    e, p = xe.numpy().astype(np.float64), xp.numpy().astype(np.float64)
    f_e, _ = _np_disc(e)
    f_p, _ = _np_disc(p)
    if divergence == "rkl":
        want = np.exp(-f_e).mean() + f_p.mean()
    else:  # BCE with logits, expert label 1, policy 0, summed and divided by B/2
        want = (np.log1p(np.exp(-f_e)).sum() + np.log1p(np.exp(f_p)).sum()) / 2
    _, g = _np_disc(alpha * e + (1 - alpha) * p)
    want_gp = 10.0 * ((np.linalg.norm(g, axis=1) - 1) ** 2).sum() / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert gp.item() == pytest.approx(want_gp, rel=1e-5)
    np.testing.assert_allclose(fe.numpy(), f_e, rtol=1e-5)
    # discriminator steps raise f on expert inputs relative to policy inputs
    agent = _agent(disc_lr=1e-2)
    ex = Batch(torch.randn(64, agent.obs_dim + 1), torch.rand(64, 1) * 2 - 1, None, None, None)
    po = Batch(ex.obs + 1.5, ex.act * 0 + 0.9, None, None, None)
    before = (agent.reward(ex.obs, ex.act) - agent.reward(po.obs, po.act)).mean()
    for _ in range(50):
        agent.disc_step(ex, po)
    assert (agent.reward(ex.obs, ex.act) - agent.reward(po.obs, po.act)).mean() > before + 0.1


def _agent(**kw) -> AILBoost:
    torch.manual_seed(0)
    return AILBoost(Config(hidden=(8, 8), disc_hidden=(8, 8), init_alpha=0.5, **kw), obs_dim=3, act_dim=1)


def _batch(agent, n=16, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.cat([torch.randn(n, 3, generator=g), torch.zeros(n, 1)], 1)
    return Batch(obs, torch.rand(n, 1, generator=g) * 2 - 1, torch.full((n,), 1000.0),
                 torch.cat([torch.randn(n, 3, generator=g), torch.zeros(n, 1)], 1), torch.zeros(n))


def test_rewards_come_from_the_current_discriminator_at_sample_time():
    import copy

    agent = _agent()
    b = _batch(agent)
    before = copy.deepcopy(agent)
    torch.manual_seed(3)
    m = agent.update(b)  # the stored rewards (1000) are ignored
    f = before.discriminator(torch.cat([b.obs, b.act], 1)).squeeze(1).detach()
    assert m["reward"].item() == pytest.approx(f.mean().item(), rel=1e-5)
    torch.manual_seed(3)
    with torch.no_grad():
        na, nlogp = before.actor.sample(b.next_obs)
        y = f + 0.99 * (before.critic_target(b.next_obs, na).min(0).values - 0.5 * nlogp)
        want = (before.critic(b.obs, b.act) - y).square().sum(0).mean()
    assert m["critic_loss"].item() == pytest.approx(want.item(), rel=1e-5)
    # change the discriminator: the next update's rewards follow it, the stored column never matters
    with torch.no_grad():
        agent.discriminator.net[-2].bias.fill_(5.0)
    f2 = agent.discriminator(torch.cat([b.obs, b.act], 1)).squeeze(1)
    assert agent.update(b)["reward"].item() == pytest.approx(f2.mean().item(), rel=1e-5)
    # DAC with stored rewards trains on the buffer's rewards; with current rewards it recomputes them
    dac = _agent(disc_mode="dac")
    w0 = [p.detach().clone() for p in dac.discriminator.parameters()]
    assert dac.update(b)["reward"].item() == pytest.approx(1000.0)
    assert all(torch.equal(x, y) for x, y in zip(w0, dac.discriminator.parameters()))  # no expert set: no disc step
    dac.expert = ReplayBuffer(4, 1, 8)
    dac.expert.add(b.obs[:8], b.act[:8], b.rew[:8], b.next_obs[:8], b.done[:8])
    m = dac.update(b)  # one discriminator step per SAC update, on 8 expert rows and the batch's first 8 rows
    assert "disc_loss" in m and not all(torch.equal(x, y) for x, y in zip(w0, dac.discriminator.parameters()))
    dac_cur = _agent(disc_mode="dac", dac_rewards="current")
    assert abs(dac_cur.update(b)["reward"].item()) < 1.0


def test_divergence_to_the_expert_by_hand():
    """The official ``compute_divergence``: the discriminator loss between all expert rows and the
    evaluation's (s, a) pairs, here with a linear f(x) = x·w so the values follow by hand."""

    class Linear(torch.nn.Module):
        def forward(self, x):
            return x @ torch.tensor([[0.5], [-1.0], [0.25], [2.0], [1.0]])  # s (3), indicator, a

    for divergence in ("rkl", "js"):
        agent = _agent(divergence=divergence)
        agent.discriminator = Linear()
        assert np.isnan(agent.divergence(np.zeros((2, 3)), np.zeros((2, 1))))  # no expert yet
        agent.expert = ReplayBuffer(4, 1, 8)
        e_obs = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 1.0]])  # the second row is absorbing
        e_act = torch.tensor([[0.5], [0.0]])
        agent.expert.add(e_obs, e_act, torch.zeros(2), e_obs, torch.zeros(2))
        obs, act = np.array([[2.0, 1.0, -4.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), np.array([[1.0], [-1.0], [0.5]])
        f_e = np.array([0.5 + 0.5 + 0.5, -1.0 + 2.0 + 0.0])  # [1.5, 1.0]
        f_p = np.array([1.0 - 1.0 - 1.0 + 1.0, -1.0, 0.5 - 1.0 + 0.25 + 0.5])  # padded with indicator 0
        softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
        want = np.exp(-f_e).mean() + f_p.mean() if divergence == "rkl" else softplus(-f_e).mean() + softplus(f_p).mean()
        assert agent.divergence(obs, act) == pytest.approx(want, rel=1e-6)


# ------------------------------------------------------------------------------------ absorbing states
def test_absorbing_rows_at_terminations():
    obs = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    nxt = np.array([[3.0, 4.0], [9.0, 9.0], [7.0, 8.0]])
    act = np.array([[0.5], [-0.5], [0.25]])
    rew = np.array([1.0, 2.0, 3.0])
    term = np.array([0.0, 1.0, 0.0])
    o, a, r, n, d = absorbing_rows(obs, act, rew, nxt, term, absorbing=True)
    s_a = [0.0, 0.0, 1.0]
    np.testing.assert_array_equal(o, [[1, 2, 0], [3, 4, 0], s_a, [5, 6, 0]])
    np.testing.assert_array_equal(n, [[3, 4, 0], s_a, s_a, [7, 8, 0]])  # the terminal's s_T is replaced by s_A
    np.testing.assert_array_equal(a, [[0.5], [-0.5], [0.0], [0.25]])
    np.testing.assert_array_equal(r, [1, 2, 0, 3])
    np.testing.assert_array_equal(d, [0, 0, 0, 0])  # nothing terminates: s_A loops on itself
    o, a, r, n, d = absorbing_rows(obs, act, rew, nxt, term, absorbing=False)
    np.testing.assert_array_equal(o, obs)
    np.testing.assert_array_equal(d, term)
    # a last-row termination and two in a row
    o, a, r, n, d = absorbing_rows(obs, act, rew, nxt, np.array([1.0, 0.0, 1.0]))
    assert len(o) == 5 and o[1].tolist() == s_a and o[4].tolist() == s_a and n[3].tolist() == s_a


# ------------------------------------------------------------------------------------ runs
@pytest.mark.parametrize("variant", ["official", "alternatives"])
def test_a_run_keeps_blocks_weights_learners_and_absorbing_rows(expert, tmp_path, variant):
    """6+ rounds into a 4-block discriminator buffer: block weights, learners and rows as by hand.
    ``alternatives``: --when-full renormalize, --policy-buffer replay, --boosted-pairing block."""
    alt = dict(when_full="renormalize", policy_buffer="replay", boosted_pairing="block") if variant != "official" else {}
    s = ailboost.train(Config(run_dir=str(tmp_path / "r"), total_steps=1000, eval_every=0, **TINY, **alt))
    ck = torch.load(s["checkpoint"], weights_only=True)
    boost = ck["boost"]
    rounds = boost["rounds"]
    assert rounds >= 6  # the ring wrapped
    want, blocks = _hand_weights(rounds, 4, 0.05)
    if alt:  # renormalize: the hand-checked step function (test above), applied round by round
        want = None
        for k in range(rounds):
            want = next_block_weights(want, min(k + 1, 4), k % 4, 0.05, "renormalize")
    np.testing.assert_allclose(boost["weights"].numpy(), want, rtol=1e-6)
    assert boost["blocks"] == blocks and len(boost["learners"]) == 4
    parts = ck["train"]["parts"]
    disc = parts["buffers"]["disc"]
    assert disc["size"] == 200 and disc["ptr"] == (rounds % 4) * 50
    np.testing.assert_allclose(disc["weights"].numpy(), np.repeat(want / 50, 50), rtol=1e-5)
    # the collection steps count toward the budget: training steps + collection steps = global steps
    phase = parts["phase"]
    assert phase["train_steps"] + phase["sample_steps"] == s["steps"] == 1000
    # a round every policy_iter training steps from 100 on; the last one is skipped when it would overrun the budget
    assert rounds in ((phase["train_steps"] - 1) // 100 - 1, (phase["train_steps"] - 1) // 100)
    assert rounds <= phase["sample_steps"] <= 50 * rounds  # ≤ n env steps per block (absorbing rows fill the rest)
    # absorbing rows in the stored data: indicator 1 ⇒ zero action, s_A next; nothing terminates
    policy = parts["buffers"]["policy"]
    stores = [policy["data"]] + ([disc["data"]] if alt else [])  # shared: the policy rows include the blocks
    for data, block in zip(stores, [None if alt else 50, 50]):
        obs, act, nxt = data[:, :5], data[:, 5:6], data[:, 7:12]
        absorbing = obs[:, 4] == 1
        assert absorbing.any()
        assert torch.all(act[absorbing] == 0) and torch.all(nxt[absorbing, 4] == 1) and torch.all(obs[absorbing, :4] == 0)
        assert torch.all(data[:, 12] == 0)  # done
        ends = torch.nonzero((nxt[:-1, 4] == 1) & ~absorbing[:-1]).squeeze(1)  # terminations (s, a, s_A)
        if block:  # a block is cut at exactly n rows, possibly between the two
            ends = ends[(ends + 1) % block != 0]
        assert len(ends) and torch.all(obs[ends + 1, 4] == 1)  # each followed by (s_A, 0, s_A)
    if alt:  # a plain replay of every training step: one row per step plus one absorbing row per termination
        assert policy["size"] == phase["train_steps"] + int((policy["data"][:, 4] == 1).sum())
    else:  # re-pointed after the last round: the 4 blocks, then the training rows since
        assert policy["size"] == 200
    actor = {k[len("actor."):]: v for k, v in ck["agent"].items() if k.startswith("actor.")}
    assert boost["learners"][-1].keys() == actor.keys()  # learners are actor snapshots
    # the final evaluation carries the boosted evaluation; the newest learner's probability shows the pairing
    rows = _rows(tmp_path / "r")
    last = [r for r in rows if "eval/return_mean" in r][-1]
    newest = want[(rounds - 1) % 4] if alt else want.max()  # block: its own weight (η); official: the largest
    assert last["eval/learners"] == 4 and last["eval/newest_learner_probability"] == pytest.approx(newest)
    assert np.isfinite(last["eval/divergence"]) and np.isfinite(last["eval/boosted_divergence"])
    assert s["boosted"]["learners"] == 4 and s["expert"]["episodes"] == 1 and s["expert"]["rows"] == 1000


def _cli(argv, tmp, name):
    return [*argv, "--run-dir", str(tmp / name)]


BASE = ["--env", "InvertedPendulum-v5", "--expert-dataset", EXPERT, "--hidden", "32", "32", "--disc-hidden", "16", "16",
        "--batch-size", "32", "--eval-episodes", "2", "--boosted-eval-episodes", "2", "--log-every", "50",
        "--progress", "False", "--threads", "1", "--learning-starts", "100", "--policy-iter", "100", "--n-samples", "50",
        "--disc-iters", "5", "--disc-buffer-size", "200", "--total-steps", "800", "--eval-every", "300",
        "--checkpoint-every", "100000"]


@pytest.mark.parametrize("mode, where", [("boost", "between"), ("boost", "in_round"), ("dac", "between")])
def test_exact_resume_mid_round_via_the_cli(expert, tmp_path, monkeypatch, capsys, mode, where):
    argv = [*BASE, "--disc-mode", mode]
    full = ailboost.main(_cli(argv, tmp_path, "full"))
    original = logger_mod.MetricAccumulator.add
    original_round = ailboost.BoostingPhase.boosting_round
    if where == "between":  # SIGTERM inside the 80th update: after round 3 (boost), mid-episode
        _signal_at(monkeypatch, 80, signal.SIGTERM)
    else:  # SIGTERM while round 2 collects its block: the run stops at the end of that step

        def round_then_die(self, run):
            if run.agent.rounds == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return original_round(self, run)

        monkeypatch.setattr(ailboost.BoostingPhase, "boosting_round", round_then_die)
    with pytest.raises(SystemExit) as e:
        ailboost.main(_cli(argv, tmp_path, "cut"))
    assert e.value.code == 143
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert 0 < cut["train"]["step"] < 800
    if mode == "boost":
        assert 1 <= cut["boost"]["rounds"] < torch.load(full["checkpoint"], weights_only=True)["boost"]["rounds"]
    if where == "in_round":
        assert cut["boost"]["rounds"] == 2 and cut["train"]["parts"]["phase"]["train_steps"] == 201
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    monkeypatch.setattr(ailboost.BoostingPhase, "boosting_round", original_round)
    resumed = ailboost.main(["--resume", str(tmp_path / "cut" / "checkpoint.pt")])
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 800
    for k, v in a["agent"].items():  # actor, critics, discriminator
        assert torch.equal(v, b["agent"][k]), k
    assert any(k.startswith("discriminator.") for k in a["agent"])
    for name in a["optimizers"]:
        assert torch.equal(a["optimizers"][name]["state"][0]["exp_avg"], b["optimizers"][name]["state"][0]["exp_avg"])
    assert a["boost"]["rounds"] == b["boost"]["rounds"] and a["boost"]["blocks"] == b["boost"]["blocks"]
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a["boost"]["learners"], b["boost"]["learners"]) for k in x)
    if mode == "boost":
        assert torch.equal(a["boost"]["weights"], b["boost"]["weights"])
        assert torch.equal(a["train"]["parts"]["buffers"]["disc"]["weights"], b["train"]["parts"]["buffers"]["disc"]["weights"])
    pa, pb = a["train"]["parts"], b["train"]["parts"]
    assert torch.equal(pa["buffers"]["policy"]["data"], pb["buffers"]["policy"]["data"])
    assert torch.equal(pa["buffers"]["policy"]["generator"], pb["buffers"]["policy"]["generator"])
    assert torch.equal(pa["expert"]["generator"], pb["expert"]["generator"])
    from offrl.errors import json_safe

    assert json_safe(pa["boosted_eval"]) == json_safe(pb["boosted_eval"])
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    assert resumed["boosted"] == full["boosted"] and resumed["final_return"] == full["final_return"]


def test_cli_smoke_help_and_errors(expert, tmp_path, capsys):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "algos", "ailboost.py"), "--help"], capture_output=True,
                         text=True, cwd=root)
    assert out.returncode == 0
    for flag in ("--expert-dataset", "--expert-episodes", "--disc-mode", "--eta", "--n-samples", "--policy-iter",
                 "--boosted-pairing", "--absorbing", "--when-full", "--policy-buffer"):
        assert flag in out.stdout, flag
    capsys.readouterr()
    argv = [*BASE[:-8], "--total-steps", "250", "--eval-every", "0", "--run-dir", str(tmp_path / "cli")]
    from offrl.cli import main

    assert main(["train", "ailboost", *argv]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with open(tmp_path / "cli" / "summary.json") as f:
        assert json.load(f) == printed
    assert printed["steps"] == 250 and printed["algo"] == "ailboost"
    with open(tmp_path / "cli" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows if "time/updates" in r][:2] == [50, 100]  # --log-every 50
    assert rows[-1]["step"] == 250 and any("train/disc_loss" in r for r in rows)
    agent = AILBoost.load(str(tmp_path / "cli" / "checkpoint.pt"), device="cpu")
    assert agent.act(np.zeros(4)).shape == (1,) and len(agent.learners) >= 1
    assert main(["eval", str(tmp_path / "cli" / "checkpoint.pt"), "--episodes", "1", "--json"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        ailboost.main([*argv[:-2], "--disc-buffer-size", "70", "--run-dir", str(tmp_path / "bad")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--disc-buffer-size" in err[0] and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_ailboost_learns_inverted_pendulum_from_one_expert_episode(expert, tmp_path):
    """One scripted expert episode (return 1000); random actions keep the pole up ~5 steps. The
    default algorithm (absorbing states, boosting, rewards f(s, a) only: the env reward is never
    used) with a faster discriminator (lr 1e-3), α₀ 0.1 and one update per step for this short budget.
    Measured on CPU, final deterministic return over 5 episodes: seeds 0, 1, 2 → 144.4, 141.4, 1000.0
    (~170 s each on a loaded 2-core machine); the same run with the reward's sign flipped (−f) ends at 2.0."""
    s = ailboost.train(Config(env="InvertedPendulum-v5", expert_dataset=EXPERT, hidden=(64, 64), batch_size=128,
                              total_steps=8000, learning_starts=500, policy_iter=500, n_samples=500, disc_iters=100,
                              disc_lr=1e-3, init_alpha=0.1, updates_per_step=1.0, eval_every=8000, eval_episodes=5,
                              boosted_eval_episodes=5, buffer_size=20000, progress=False, threads=1,
                              run_dir=str(tmp_path / "learn")))
    assert s["final_return"] >= 25, s  # 5× random
