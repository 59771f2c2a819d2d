"""TD3 core, TD3+BC and PRDC: losses against hand computations (numpy, float64) on tiny nets,
the delayed schedule, the exact nearest-neighbour index, exact resume and learning."""

import json

import numpy as np
import pytest
import torch

from offrl.algos.prdc import PRDC
from offrl.algos.prdc import Config as PRDCConfig
from offrl.algos.td3_bc import TD3BC
from offrl.algos.td3_bc import Config as TD3BCConfig
from offrl.buffer import Batch
from offrl.knn import ExactNN


def np_actor(agent, s):
    layers = [m for m in agent.actor.net.net if isinstance(m, torch.nn.Linear)]
    h = s
    for i, lin in enumerate(layers):
        h = h @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return np.tanh(h)


def np_critic(critic, s, a):
    """[E, B] Q values of an EnsembleCritic, by hand."""
    lins = [m for m in critic.modules() if type(m).__name__ == "EnsembleLinear"]
    out = []
    for e in range(lins[0].weight.shape[0]):
        h = np.concatenate([s, a], 1)
        for i, lin in enumerate(lins):
            h = h @ lin.weight[e].detach().double().numpy() + lin.bias[e].detach().double().numpy()
            if i < len(lins) - 1:
                h = np.maximum(h, 0)
        out.append(h[:, 0])
    return np.stack(out)


def tiny_batch(obs_dim=3, act_dim=2, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, obs_dim, generator=g), torch.rand(b, act_dim, generator=g) * 2 - 1,
                 torch.randn(b, generator=g), torch.randn(b, obs_dim, generator=g),
                 (torch.rand(b, generator=g) < 0.3).float())


def np_batch(batch):
    return [batch[k].double().numpy() for k in ("obs", "act", "rew", "next_obs", "done")]


def test_td3_critic_loss_by_hand():
    torch.manual_seed(0)
    agent = TD3BC(TD3BCConfig(hidden=(5,), discount=0.9), 3, 2)
    batch = tiny_batch()
    s, a, r, s2, d = np_batch(batch)
    q = np_critic(agent.critic, s, a)
    torch.manual_seed(7)
    noise = torch.randn(6, 2).double().numpy()
    a2 = np.clip(np_actor_target(agent, s2) + np.clip(0.2 * noise, -0.5, 0.5), -1, 1)
    y = r + 0.9 * (1 - d) * np_critic(agent.critic_target, s2, a2).min(0)
    expected = ((q[0] - y) ** 2).mean() + ((q[1] - y) ** 2).mean()
    torch.manual_seed(7)
    m = agent.critic_step(batch)
    assert m["critic_loss"].item() == pytest.approx(expected, rel=1e-5)


def np_actor_target(agent, s):
    saved = agent.actor
    agent.actor = agent.actor_target
    try:
        return np_actor(agent, s)
    finally:
        agent.actor = saved


def test_td3_bc_actor_loss_by_hand():
    torch.manual_seed(1)
    agent = TD3BC(TD3BCConfig(hidden=(5,), alpha=2.5), 3, 2)
    batch = tiny_batch()
    s, a = np_batch(batch)[:2]
    pi = np_actor(agent, s)
    q1 = np_critic(agent.critic, s, pi)[0]
    lam = 2.5 / np.abs(q1).mean()
    expected = -lam * q1.mean() + ((pi - a) ** 2).mean()
    loss, m = agent.actor_loss(batch)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["lambda"].item() == pytest.approx(lam, rel=1e-5)
    assert m["bc_loss"].item() == pytest.approx(((pi - a) ** 2).mean(), rel=1e-5)


def test_delayed_actor_and_targets():
    torch.manual_seed(2)
    agent = TD3BC(TD3BCConfig(hidden=(8,), policy_freq=2, tau=0.5), 3, 2)
    batch = tiny_batch()
    actor0 = [p.detach().clone() for p in agent.actor.parameters()]
    target0 = [p.detach().clone() for p in agent.critic_target.parameters()]
    m1 = agent.update(batch)
    assert "actor_loss" not in m1  # no actor step yet
    assert all(torch.equal(p, q) for p, q in zip(agent.actor.parameters(), actor0))
    assert all(torch.equal(p, q) for p, q in zip(agent.critic_target.parameters(), target0))
    critic1 = [p.detach().clone() for p in agent.critic.parameters()]
    agent.update(batch)  # second update: critic, then actor and targets
    critic2 = [p.detach().clone() for p in agent.critic.parameters()]
    assert not all(torch.equal(p, q) for p, q in zip(agent.actor.parameters(), actor0))
    for t, t0, c in zip(agent.critic_target.parameters(), target0, critic2):
        torch.testing.assert_close(t, 0.5 * c + 0.5 * t0)
    m3 = agent.update(batch)  # critic only: the actor metrics are the last actor step's
    assert "actor_loss" in m3 and not all(torch.equal(p, q) for p, q in zip(critic1, critic2))
    assert agent.iteration == 3


def test_cached_actor_metrics_are_copies():
    # under CUDA graphs a step's outputs are overwritten by the next replay: the cache must not alias them
    agent = TD3BC(TD3BCConfig(hidden=(8,), policy_freq=1), 3, 2)
    outputs = {}

    def step(batch, aux):
        outputs.update(actor_loss=torch.tensor(1.5))
        return outputs

    agent._actor_step = step
    agent.update(tiny_batch())
    outputs["actor_loss"].fill_(-7.0)  # what a later graph replay does to its output buffer
    assert agent._actor_metrics["actor_loss"].item() == 1.5


# ----------------------------------------------------------------------------- nearest neighbour
@pytest.mark.parametrize("method", ["kdtree", "brute"])
def test_exact_nn_matches_brute_force(method):
    g = torch.Generator().manual_seed(0)
    points = torch.randn(5000, 7, generator=g) * torch.tensor([1, 2, 3, 0.5, 1, 1, 10.0]) + 100.0
    queries = points[torch.randint(0, 5000, (300,), generator=g)] + 0.05 * torch.randn(300, 7, generator=g)
    queries = torch.cat([queries, torch.randn(100, 7, generator=g) * 5 + 100.0])
    truth = torch.cdist(queries.double(), points.double()).argmin(1)
    index = ExactNN(points, method=method, chunk=1024, candidates=4)
    assert torch.equal(index.query(queries), truth)


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to TF32 (10 explicit mantissa bits, round to nearest)."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def test_exact_nn_is_exact_under_tf32_matmuls(monkeypatch):
    # a dense cluster of near-identical rows (episode starts) away from the data's centre
    g = torch.Generator().manual_seed(0)
    spread = 10.0 * torch.rand(4000, 23, generator=g)
    cluster = 6.0 + 1e-3 * torch.randn(3000, 23, generator=g)
    points = torch.cat([spread, cluster])
    queries = cluster[:256] + 2e-4 * torch.randn(256, 23, generator=g)
    truth = torch.cdist(queries.double(), points.double()).argmin(1)
    matmul = torch.matmul

    def tf32_matmul(a, b):  # what a GPU does with TF32 on: inputs rounded, fp32 accumulation
        if a.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
            return matmul(_tf32(a).double(), _tf32(b).double()).float()
        return matmul(a, b)

    monkeypatch.setattr(torch, "matmul", tf32_matmul)
    monkeypatch.setattr(torch.Tensor, "__matmul__", tf32_matmul)
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        centred = points - points.double().mean(0).float()
        q = queries - points.double().mean(0).float()
        naive = (q.square().sum(1, keepdim=True) - 2.0 * torch.matmul(q, centred.T)
                 + centred.square().sum(1)).topk(8, dim=1, largest=False).indices
        # the emulation bites: the true neighbour is often not among the naive TF32 candidates
        assert (naive == truth.unsqueeze(1)).any(1).float().mean() < 0.5
        index = ExactNN(points, method="brute", chunk=2048, candidates=8)
        assert torch.equal(index.query(queries), truth)
    finally:
        torch.set_float32_matmul_precision(prev)


def test_exact_nn_rejects_bad_shapes():
    from offrl.errors import OffrlError

    with pytest.raises(OffrlError, match="non-empty"):
        ExactNN(torch.zeros(0, 3))
    with pytest.raises(OffrlError, match="3-dim points"):
        ExactNN(torch.zeros(4, 3), method="brute").query(torch.zeros(2, 5))


def prdc_agent(beta=2.0, alpha=2.5, rows=60, seed=3):
    torch.manual_seed(seed)
    agent = PRDC(PRDCConfig(hidden=(5,), alpha=alpha, beta=beta), 3, 2)
    g = torch.Generator().manual_seed(seed)
    obs, act = torch.randn(rows, 3, generator=g), torch.rand(rows, 2, generator=g) * 2 - 1
    agent.set_dataset(obs, act)
    return agent, obs.double().numpy(), act.double().numpy()


@pytest.mark.parametrize("method", ["kdtree", "brute"])
def test_prdc_actor_loss_by_hand(method):
    agent, ds_obs, ds_act = prdc_agent()
    agent.index = ExactNN(torch.cat([2.0 * torch.as_tensor(ds_obs).float(), torch.as_tensor(ds_act).float()], 1), method)
    batch = tiny_batch()
    s, a = np_batch(batch)[:2]
    pi = np_actor(agent, s)
    keys = np.concatenate([2.0 * ds_obs, ds_act], 1)
    query = np.concatenate([2.0 * s, pi], 1)  # the POLICY's action queries the index
    nn = ((query[:, None] - keys[None]) ** 2).sum(-1).argmin(1)
    wrong = ((np.concatenate([2.0 * s, a], 1)[:, None] - keys[None]) ** 2).sum(-1).argmin(1)
    assert (nn != wrong).any()  # the test would notice querying with the dataset action
    q1 = np_critic(agent.critic, s, pi)[0]  # λ and the Q term from Q1 only
    lam = 2.5 / np.abs(q1).mean()
    expected = -lam * q1.mean() + ((pi - ds_act[nn]) ** 2).mean()  # mean over batch and dims
    loss, m = agent.actor_loss(batch)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["constraint_loss"].item() == pytest.approx(((pi - ds_act[nn]) ** 2).mean(), rel=1e-5)


def test_prdc_constraint_gradient_flows_through_policy_only():
    agent, ds_obs, ds_act = prdc_agent(alpha=0.0)  # α = 0: the loss is the constraint alone
    batch = tiny_batch()
    obs = batch.obs
    pi = agent.actor(obs)
    target = agent.nearest_actions(obs, pi)
    assert not target.requires_grad
    loss, _ = agent.actor_loss(batch)
    grads = torch.autograd.grad(loss, list(agent.actor.parameters()))
    pi = agent.actor(obs)
    manual = torch.autograd.grad(((pi - target) ** 2).mean(), list(agent.actor.parameters()))
    for g1, g2 in zip(grads, manual):
        torch.testing.assert_close(g1, g2)


def test_prdc_presets():
    from offrl.algos.prdc import preset_for

    assert preset_for("halfcheetah-medium-v2")[:2] == (40.0, 2.0)
    assert preset_for("offrl/hopper/medium-replay-v0")[:2] == (2.5, 2.0)
    assert preset_for("antmaze-umaze-v2") == (7.5, 7.5, 10000.0, -1.0)
    cfg = PRDCConfig(dataset="offrl/halfcheetah/medium-v0", alpha=3.0)
    cfg.resolve(None)
    assert (cfg.alpha, cfg.beta, cfg.reward_scale) == (3.0, 2.0, 1.0)


# ----------------------------------------------------------------------------- runs
TINY = ["--dataset", "offrl/invertedpendulum/scripted-v0", "--hidden", "32", "32", "--batch-size", "32", "--eval-episodes", "1", "--log-every", "1", "--progress", "False", "--threads", "1"]


@pytest.mark.parametrize("algo", ["td3_bc", "prdc", "a2pr"])
def test_exact_resume(algo, use_scripted, tmp_path):
    import importlib

    mod = importlib.import_module(f"offrl.algos.{algo}")
    full = mod.main([*TINY, "--steps", "21", "--eval-every", "0", "--checkpoint-every", "11", "--run-dir", str(tmp_path / "a")])
    mod.main([*TINY, "--steps", "11", "--eval-every", "0", "--checkpoint-every", "11", "--run-dir", str(tmp_path / "b")])
    mod.main(["--resume", str(tmp_path / "b" / "checkpoint.pt"), "--steps", "21"])
    a = torch.load(full["checkpoint"], weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 21
    for k in a["agent"]:
        assert torch.equal(a["agent"][k], b["agent"][k]), k
    rows = lambda p: [json.loads(x) for x in open(p / "metrics.jsonl")]  # noqa: E731
    keep = lambda p: [r for r in rows(p) if "step" in r and not any(k.startswith(("eval/", "time/")) for k in r)]  # noqa: E731
    assert keep(tmp_path / "a") == keep(tmp_path / "b")  # time/ rows hold wall-clock speeds


SMALL = {"a2pr": ["--actor-hidden", "64", "64", "--vae-hidden", "128", "128"]}


@pytest.mark.parametrize("algo, threshold", [("td3_bc", 80.0), ("prdc", 150.0), ("a2pr", 100.0)])
def test_learns_scripted(algo, threshold, use_scripted, tmp_path):
    """Behaviour mean return 12.5, cloning it ≈ 28 (IQL with β = 0): each must recover much of the
    stabilising mode in 2000 updates (measured: TD3+BC 153, PRDC 1000, A2PR 146 with the OR weight)."""
    import importlib

    mod = importlib.import_module(f"offrl.algos.{algo}")
    s = mod.main(["--dataset", "offrl/invertedpendulum/scripted-v0", "--steps", "2000", "--hidden", "64", "64", *SMALL.get(algo, []), "--eval-every", "0",
                  "--eval-episodes", "5", "--progress", "False", "--run-dir", str(tmp_path / "run")])
    assert s["final_return"] >= threshold, s


@pytest.mark.parametrize("algo", ["td3_bc", "prdc", "a2pr"])
def test_script_cli_eval_and_bench(algo, use_scripted, tmp_path, capsys):
    import os
    import subprocess
    import sys

    from offrl.cli import main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "algos", f"{algo}.py"), "--help"], capture_output=True,
                         text=True, cwd=root)
    assert out.returncode == 0 and "--alpha" in out.stdout and "--policy-freq" in out.stdout
    run_dir = tmp_path / "run"
    assert main(["train", algo, *TINY, *SMALL.get(algo, []), "--steps", "30", "--eval-every", "0",
                 "--run-dir", str(run_dir)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 30
    assert main(["eval", str(run_dir / "checkpoint.pt"), "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["env_id"] == "InvertedPendulum-v5"
    assert main(["bench", "update", "--algo", algo, "--steps", "3", "--warmup", "1", "--rows", "2000"]) == 0
    bench = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bench["algo"] == algo and bench["metrics_finite"] and bench["rows"] == 2000
