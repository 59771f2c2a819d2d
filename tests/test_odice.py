"""O-DICE: conjugate and weights against hand values, the global orthogonal projection, the
combined V gradient against an independent float64 computation, the ablation losses, the policy
weight from the pre-update residual, learning, resume and CLI."""

import json

import numpy as np
import pytest
import torch
from test_td3_family import np_batch, tiny_batch

from offrl.algos.odice import ODICE, Config, f_star, policy_weight, project_backward


def test_f_star_and_weight_by_hand():
    y = torch.tensor([-5.0, -2.0, -1.0, 0.0, 2.0, 4.0])
    # y ≥ −2: y + y²/4; y < −2: −1
    np.testing.assert_allclose(f_star(y).numpy(), [-1.0, -1.0, -0.75, 0.0, 3.0, 8.0])
    np.testing.assert_allclose(policy_weight(torch.tensor([-3.0, 0.5, 250.0])).numpy(), [0.0, 0.5, 100.0])


def test_projection_is_orthogonal_and_global():
    g = torch.Generator().manual_seed(0)
    g_f = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    g_b = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    combined, c = project_backward(g_f, g_b)
    f = torch.cat([x.reshape(-1) for x in g_f]).double()
    b = torch.cat([x.reshape(-1) for x in g_b]).double()
    assert c.item() == pytest.approx((f @ b / (f @ f)).item(), rel=1e-5)  # one scalar over all tensors
    projected = torch.cat([x.reshape(-1) for x in combined]).double() - f
    assert abs((projected @ f).item()) < 1e-5 * f.norm().item() * b.norm().item()
    np.testing.assert_allclose(projected.numpy(), (b - c.double() * f).numpy(), rtol=1e-5, atol=1e-6)
    zero, c0 = project_backward([torch.zeros(3)], [torch.ones(3)])  # ‖g_f‖² floored at 1e-10
    assert c0.item() == 0.0 and torch.equal(zero[0], torch.ones(3))


def tiny_odice(rule="orthogonal_true_g", seed=0, lam=0.6, eta=0.7):
    torch.manual_seed(seed)
    cfg = Config(hidden=(4,), policy_hidden=(5,), lam=lam, eta=eta, discount=0.9, update_rule=rule,
                 layer_norm=True, twin_v=True)
    cfg.resolve(None)
    return ODICE(cfg, 3, 2)


def reference_value_grads(agent, batch, rule):
    """The V gradient by an independent float64 computation: separate autograd passes on a copy."""
    import copy

    v = copy.deepcopy(agent.value).double()
    vt = copy.deepcopy(agent.value_target).double()
    s, a, r, s2, d = (torch.as_tensor(x) for x in np_batch(batch))
    lam, eta, gamma = agent.cfg.lam, agent.cfg.eta, agent.cfg.discount
    params = list(v.parameters())

    def conj(y):
        w = torch.clamp(y / 2 + 1, min=0)
        return y * w - (w - 1) ** 2

    heads = lambda net, x: net(x)[..., 0]  # noqa: E731
    if rule == "orthogonal_true_g":
        tv, tv2 = heads(vt, s).min(0).values, heads(vt, s2).min(0).values
        fwd = lam * conj(r + gamma * (1 - d) * tv2 - heads(v, s)).mean()
        bwd = lam * eta * conj(r + gamma * (1 - d) * heads(v, s2) - tv).mean()
        lin = (1 - lam) * heads(v, s).mean()
        flat = lambda loss: torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).numpy()  # noqa: E731
        gf, gb, gl = flat(fwd), flat(bwd), flat(lin)
        c = gf @ gb / max(gf @ gf, 1e-10)
        return gl + gf + (gb - c * gf), gf, gl
    v2 = heads(v, s2) if rule == "true_g" else heads(vt, s2).min(0).values
    res = r + gamma * (1 - d) * v2 - heads(v, s)
    loss = ((1 - lam) * heads(v, s) + lam * conj(res)).mean()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).numpy(), None, None


@pytest.mark.parametrize("rule", ["orthogonal_true_g", "true_g", "semi_g"])
def test_combined_value_gradient_matches_reference(rule, monkeypatch):
    agent = tiny_odice(rule)
    with torch.no_grad():  # distinct targets, so forward and backward residuals differ
        for p in agent.value_target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = tiny_batch()
    expected, gf, gl = reference_value_grads(agent, batch, rule)
    monkeypatch.setattr(agent.optimizers["value"], "step", lambda *a, **k: None)  # keep the gradient to inspect
    agent.value_step(batch)
    got = torch.cat([p.grad.reshape(-1) for p in agent.value.parameters()]).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    if gf is not None:  # what is left after the forward and linear parts is orthogonal to g_f
        assert abs((got - gl - gf) @ gf) < 1e-4 * np.linalg.norm(gf) * np.linalg.norm(got - gl - gf) + 1e-9


def test_policy_weight_uses_residual_before_the_value_step():
    agent = tiny_odice(seed=3)
    batch = tiny_batch(seed=4)
    s, a, r, s2, d = (torch.as_tensor(x) for x in np_batch(batch))
    with torch.no_grad():
        tv2 = agent.value_target(batch.next_obs).squeeze(-1).min(0).values.double()
        fwd = r + 0.9 * (1 - d) * tv2 - agent.v_heads(batch.obs).double()  # [2, B]
        w = fwd.clamp(0, 100)
    theta = [p.detach().clone() for p in agent.actor.parameters()]
    nll = -agent.actor.log_prob(batch.obs, batch.act).double().detach()
    expected = (w * nll).mean().item()  # weights [2, B] × nll [B], mean over both heads
    m = agent.update(batch)
    assert m["policy_loss"].item() == pytest.approx(expected, rel=1e-5)
    assert m["weight_mean"].item() == pytest.approx(w.mean().item(), rel=1e-5)
    assert not all(torch.equal(p, q) for p, q in zip(agent.actor.parameters(), theta))


def test_presets():
    cfg = Config(dataset="antmaze-large-play-v2")
    cfg.resolve(None)
    assert (cfg.layer_norm, cfg.twin_v) == (False, False)
    cfg = Config(dataset="offrl/hopper/medium-v0")
    cfg.resolve(None)
    assert (cfg.layer_norm, cfg.twin_v) == (True, True)
    agent = ODICE(cfg, 11, 3)
    assert [m.out_features for m in agent.actor.modules() if isinstance(m, torch.nn.Linear)] == [1024, 1024, 3]
    assert agent.optimizers["actor"].param_groups[0]["weight_decay"] == 1e-4


TINY = ["--dataset", "offrl/invertedpendulum/scripted-v0", "--hidden", "32", "32", "--policy-hidden", "32", "32", "--batch-size", "32", "--eval-episodes", "1",
        "--log-every", "1", "--progress", "False", "--threads", "1"]


def test_exact_resume_cli_eval_and_bench(use_scripted, tmp_path, capsys):
    from offrl.algos import odice
    from offrl.cli import main

    full = odice.main([*TINY, "--steps", "14", "--eval-every", "0", "--checkpoint-every", "7", "--run-dir", str(tmp_path / "a")])
    odice.main([*TINY, "--steps", "7", "--eval-every", "0", "--checkpoint-every", "7", "--run-dir", str(tmp_path / "b")])
    assert main(["train", "odice", "--resume", str(tmp_path / "b" / "checkpoint.pt"), "--steps", "14"]) == 0
    a = torch.load(full["checkpoint"], weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for k in a["agent"]:
        assert torch.equal(a["agent"][k], b["agent"][k]), k
    rows = lambda p: [r for r in map(json.loads, open(p / "metrics.jsonl")) if "train/policy_loss" in r]  # noqa: E731
    assert rows(tmp_path / "a") == rows(tmp_path / "b") and len(rows(tmp_path / "a")) == 14
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "b" / "checkpoint.pt"), "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["env_id"] == "InvertedPendulum-v5"
    assert main(["bench", "update", "--algo", "odice", "--steps", "3", "--warmup", "1", "--rows", "1000"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics_finite"]


def test_learns_scripted(use_scripted, tmp_path):
    """Behaviour 12.5, cloning ≈ 28; measured: O-DICE balances for the full 1000 steps from 2000 updates."""
    from offrl.algos import odice

    s = odice.main(["--dataset", "offrl/invertedpendulum/scripted-v0", "--steps", "2000", "--hidden", "64", "64", "--policy-hidden", "256", "256", "--eval-every", "0",
                    "--eval-episodes", "5", "--progress", "False", "--run-dir", str(tmp_path / "run")])
    assert s["final_return"] >= 150.0, s


# ----------------------------------------------------------------------------- offline imitation
@pytest.fixture
def expert_root(scripted_root, tmp_path, monkeypatch, temp_register):
    """A Minari root with the scripted union data and a 3-episode expert dataset (the stabilising controller)."""
    import shutil

    import gymnasium as gym

    from offrl.data import DatasetInfo
    from offrl.data.builtin import collect_scripted
    from offrl.data.writer import write_minari_dataset

    root = tmp_path / "minari"
    shutil.copytree(scripted_root, root)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    episodes = collect_scripted(3000, seed=5, p_good=1.0)
    write_minari_dataset("offrl/invertedpendulum/expert-test-v0", episodes, "InvertedPendulum-v5",
                         gym.spaces.Box(-1.0, 1.0, (1,), np.float32), ref_min_score=4.89, ref_max_score=1000.0)
    temp_register(DatasetInfo(id="offrl/invertedpendulum/expert-test-v0", source="offrl", env_id="InvertedPendulum-v5",
                              ref_min_score=4.89, ref_max_score=1000.0, obs_dim=4, act_dim=1))
    return root


def test_imitation_dataset_rows_rewards_and_presets(expert_root):
    from offrl.algos.odice import imitation_dataset
    from offrl.data import load_dataset

    union = load_dataset("offrl/invertedpendulum/scripted-v0")
    cfg = Config(expert_dataset="offrl/invertedpendulum/expert-test-v0", expert_episodes=2)
    cfg.resolve(None)
    assert (cfg.lam, cfg.value_lr, cfg.tanh_mean, cfg.normalize_states, cfg.layer_norm, cfg.weight_decay) == \
           (0.4, 1e-4, True, True, False, 1e-5)
    ds, n_expert = imitation_dataset(cfg, union)
    assert n_expert == 2000 and len(ds.observations) == 2000 + len(union.observations)
    assert ds.rewards[:2000].tolist() == [1.0] * 2000 and not ds.rewards[2000:].any()
    assert ds.timeouts[999] == 1 and ds.timeouts[1999] == 1 and ds.metadata["env_id"] == "InvertedPendulum-v5"
    np.testing.assert_array_equal(ds.observations[2000:], union.observations)
    cfg = Config(expert_dataset="offrl/invertedpendulum/expert-test-v0", expert_episodes=9)
    from offrl.errors import OffrlError

    with pytest.raises(OffrlError, match="fewer than --expert-episodes 9"):
        imitation_dataset(cfg, union)


def test_imitation_learns_from_one_expert_trajectory(expert_root, tmp_path):
    """The official IL setting (one expert trajectory, rewards 0): measured 261 after 2000 updates."""
    from offrl.algos import odice

    s = odice.main(["--dataset", "offrl/invertedpendulum/scripted-v0",
                    "--expert-dataset", "offrl/invertedpendulum/expert-test-v0", "--no-union", "--il-reward", "zero",
                    "--steps", "2000", "--hidden", "64", "64", "--policy-hidden", "256", "256", "--eval-every", "0",
                    "--eval-episodes", "5", "--progress", "False", "--run-dir", str(tmp_path / "run")])
    assert s["final_return"] >= 100.0, s
