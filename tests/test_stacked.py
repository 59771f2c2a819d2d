"""Stacked seeds (offrl.stacked): one process, networks stacked over the seeds, against single runs."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from test_signals import _rows, _signal_at

from offrl import logger as logger_mod
from offrl.algos import iql, prdc, td3_bc
from offrl.data.builtin import SCRIPTED_ID
from offrl.errors import OffrlError
from offrl.nets import EnsembleCritic, GaussianActor
from offrl.stacked import SeedStacked, slice_tree, stack_tree

TINY = ["--dataset", SCRIPTED_ID, "--hidden", "32", "32", "--batch-size", "16", "--steps", "30", "--eval-every", "15",
        "--eval-episodes", "2", "--log-every", "10", "--threads", "1", "--progress", "False"]


def test_seed_stacked_module_runs_each_seed_on_its_own_inputs():
    torch.manual_seed(0)
    nets = [EnsembleCritic(3, 2, 2, (8,)) for _ in range(3)]
    stacked = SeedStacked(nets)
    obs, act = torch.randn(3, 5, 3), torch.randn(3, 5, 2)
    q = stacked(obs, act)
    assert q.shape == (2, 3, 5)  # ensemble dim first, then the seed dim, then the batch
    for s in range(3):
        assert torch.allclose(q[:, s], nets[s](obs[s], act[s]), atol=1e-6)
    # each seed's gradient is its own loss's
    q.square().mean(-1).sum(0).sum().backward()
    for s in range(3):
        nets[s].zero_grad()
        nets[s](obs[s], act[s]).square().mean(-1).sum().backward()
        w = stacked.stacked["net__net__0__weight"].grad[s]
        assert torch.allclose(w, nets[s].net.net[0].weight.grad, atol=1e-6)
    # methods of the wrapped module, and its attributes
    actors = [GaussianActor(3, 2, (8,)) for _ in range(2)]
    sa = SeedStacked(actors)
    lp = sa.log_prob(obs[:2], act[:2])
    assert lp.shape == (2, 5) and torch.allclose(lp[1], actors[1].log_prob(obs[1], act[1]), atol=1e-6)
    assert sa.out_dim == 0 and stacked.ensemble_size == 2
    state = sa.seed_state(1)
    assert set(state) == set(actors[1].state_dict()) and torch.equal(state["log_std"], actors[1].log_std.detach())


def test_slice_and_stack_trees_round_trip():
    tree = {"a": torch.arange(6.0).reshape(3, 2), "b": {"c": torch.tensor([1.0, 2.0, 3.0])}, "n": 7, "t": torch.tensor(4.0)}
    parts = [slice_tree(tree, s, 3) for s in range(3)]
    assert parts[2]["a"].tolist() == [4.0, 5.0] and parts[1]["b"]["c"].item() == 2.0 and parts[0]["n"] == 7
    back = stack_tree(parts)
    assert torch.equal(back["a"], tree["a"]) and torch.equal(back["b"]["c"], tree["b"]["c"]) and back["n"] == 7
    with pytest.raises(OffrlError, match="disagree"):
        stack_tree([{"n": 1}, {"n": 2}])


def _ckpt(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("algo", ["iql", "td3_bc", "prdc"])
def test_stacked_seeds_match_single_runs(algo, use_scripted, tmp_path):
    """Seed 1 of a stacked run of seeds 0 and 1 ends where a single run of seed 1 ends (to float
    rounding): same initial weights, batches and optimizer arithmetic. TD3's target noise is off,
    since one generator draws it for all stacked seeds."""
    mod = {"iql": iql, "td3_bc": td3_bc, "prdc": prdc}[algo]
    extra = ["--policy-noise", "0"] if algo in ("td3_bc", "prdc") else []
    out = mod.main([*TINY, *extra, "--seeds", "0", "1", "--run-dir", str(tmp_path / "stacked")])
    assert out["seeds"] == [0, 1] and [r["run_dir"] for r in out["runs"]] == [str(tmp_path / "stacked" / f"seed{s}") for s in (0, 1)]
    single = mod.main([*TINY, *extra, "--seed", "1", "--run-dir", str(tmp_path / "single")])
    a, b = _ckpt(tmp_path / "stacked" / "seed1" / "checkpoint.pt"), _ckpt(tmp_path / "single" / "checkpoint.pt")
    assert a["agent"].keys() == b["agent"].keys() and a["config"]["seed"] == 1
    for k, v in a["agent"].items():
        assert torch.allclose(v.float(), b["agent"][k].float(), atol=1e-5), k
    for name, opt in a["optimizers"].items():  # the seed's slice of the optimizer state
        for idx, st in opt["state"].items():
            for key, v in st.items():
                assert torch.allclose(v.float(), b["optimizers"][name]["state"][idx][key].float(), atol=1e-5)
    summary = json.load(open(tmp_path / "stacked" / "seed1" / "summary.json"))
    assert summary["steps"] == single["steps"] == 30 and summary["stacked_seeds"] == [0, 1]
    assert summary["final_return"] == pytest.approx(single["final_return"], rel=1e-4)
    rows = [json.loads(line) for line in open(tmp_path / "stacked" / "seed1" / "metrics.jsonl")]
    ref = [json.loads(line) for line in open(tmp_path / "single" / "metrics.jsonl")]
    loss = "train/critic_loss"
    assert [r[loss] for r in rows if loss in r] == pytest.approx([r[loss] for r in ref if loss in r], rel=1e-4)
    # the seeds differ from each other (their own initial weights and batches)
    c = _ckpt(tmp_path / "stacked" / "seed0" / "checkpoint.pt")
    assert not torch.allclose(c["agent"]["critic.net.net.0.weight"], a["agent"]["critic.net.net.0.weight"])


def test_stacked_run_resumes_exactly_and_each_seed_loads_alone(use_scripted, tmp_path, monkeypatch):
    args = [*TINY, "--checkpoint-every", "10", "--seeds", "0", "2"]
    iql.main([*args, "--run-dir", str(tmp_path / "full")])
    original = _signal_at(monkeypatch, 2 * 13 + 1, signal.SIGTERM)  # two seeds' metric adds per step: step 14
    with pytest.raises(SystemExit) as e:
        iql.main([*args, "--run-dir", str(tmp_path / "cut")])
    assert e.value.code == 128 + signal.SIGTERM
    assert _ckpt(tmp_path / "cut" / "seed2" / "checkpoint.pt")["train"]["step"] == 14
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    iql.main(["--seeds", "0", "2", "--resume", str(tmp_path / "cut"), "--progress", "False"])
    for s in (0, 2):
        full, cut = tmp_path / "full" / f"seed{s}", tmp_path / "cut" / f"seed{s}"
        a, b = _ckpt(full / "checkpoint.pt"), _ckpt(cut / "checkpoint.pt")
        for k, v in a["agent"].items():
            assert torch.equal(v, b["agent"][k]), k
        assert _rows(full) == _rows(cut)
        agent = iql.IQL.load(str(full / "checkpoint.pt"), device="cpu")  # an ordinary checkpoint
        assert agent.act([0.0] * agent.obs_dim).shape == (agent.act_dim,)
    with pytest.raises(OffrlError, match="finished stacked run"):
        iql.train(iql.Config(seeds=(0, 2), resume=str(tmp_path / "full")))


def test_stacked_seeds_errors(use_scripted, tmp_path):
    from offrl.algos import cql

    with pytest.raises(OffrlError, match="cannot be trained with stacked seeds"):
        cql.train(cql.Config(dataset=SCRIPTED_ID, seeds=(0, 1), run_dir=str(tmp_path / "a")))
    with pytest.raises(OffrlError, match="offline phase only"):
        iql.train(iql.Config(dataset=SCRIPTED_ID, seeds=(0, 1), online_steps=10, run_dir=str(tmp_path / "b")))
    with pytest.raises(OffrlError, match="distinct"):
        iql.train(iql.Config(dataset=SCRIPTED_ID, seeds=(1, 1), run_dir=str(tmp_path / "c")))
    with pytest.raises(OffrlError, match="stacked run's directory"):
        iql.train(iql.Config(dataset=SCRIPTED_ID, seeds=(0, 1), resume=str(tmp_path / "x.pt")))


def test_sweep_stack_seeds_plans_one_process_per_dataset(tmp_path):
    from offrl.sweep import plan

    runs = plan(["iql", "cql"], [SCRIPTED_ID], [], [0, 1, 2], str(tmp_path / "sw"), steps=10, stack_seeds=True)
    stacked = [r for r in runs if r.algo == "iql"]
    assert len(stacked) == 1 and stacked[0].seeds == [0, 1, 2]  # IQL stacks
    assert [r.seed for r in runs if r.algo == "cql"] == [0, 1, 2]  # CQL cannot: one process per seed
    cmd = stacked[0].command()
    assert cmd[cmd.index("--seeds") + 1: cmd.index("--seeds") + 4] == ["0", "1", "2"]
    assert cmd[cmd.index("--run-dir") + 1] == os.path.join(str(tmp_path / "sw"), "iql", SCRIPTED_ID.replace("/", "_"))
    assert stacked[0].state() == "new"
    for s in (0, 1, 2):  # every seed checkpointed: partial, resumed as a stacked run
        d = os.path.join(stacked[0].run_dir, f"seed{s}")
        os.makedirs(d)
        open(os.path.join(d, "checkpoint.pt"), "w").close()
    assert stacked[0].state() == "partial" and stacked[0].command()[-2:] == ["--resume", stacked[0].run_dir]


def test_a2pr_stacks_its_critic_step_matches_and_its_vae_noise_is_per_seed():
    """A2PR's VAE samples inside the update, so a stacked run cannot match single runs past the first
    VAE draw; the first update's critic step (no target noise) still does, and the run trains."""
    import numpy as np

    from offrl.algos.a2pr import A2PR, Config
    from offrl.buffer import ReplayBuffer
    from offrl.stacked import Stack
    from offrl.utils import set_seed

    cfg = Config(hidden=(16, 16), actor_hidden=(16, 16), vae_hidden=(16, 16), policy_noise=0.0, batch_size=8)
    cfg.resolve(None)

    def build(seed):
        set_seed(seed)
        return A2PR(cfg, 3, 2)

    singles, for_stack = [build(s) for s in (0, 1)], [build(s) for s in (0, 1)]
    stack = Stack(build(0), for_stack)
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(3, 2, 64)
    buf.add(rng.standard_normal((64, 3)), rng.uniform(-1, 1, (64, 2)), rng.standard_normal(64),
            rng.standard_normal((64, 3)), rng.uniform(size=64) < 0.1)
    idx = torch.arange(16).reshape(2, 8)
    flat = buf.batch(idx.reshape(-1))
    metrics = stack.agent.update(flat.replace(**{k: v.reshape(2, 8, *v.shape[1:]) for k, v in flat.__dict__.items()}))
    assert metrics["critic_loss"].shape == (2,) and metrics["vae_loss"].shape == (2,)
    for s, agent in enumerate(singles):
        agent.update(buf.batch(idx[s]))
        stack.unstack_into(s, for_stack[s])
        for k, v in agent.critic.state_dict().items():
            assert torch.allclose(v, for_stack[s].critic.state_dict()[k], atol=1e-6), k
    for _ in range(5):  # actor steps too (policy_freq 2): finite per-seed metrics
        m = stack.agent.update(flat.replace(**{k: v.reshape(2, 8, *v.shape[1:]) for k, v in flat.__dict__.items()}))
    assert all(torch.isfinite(v).all() for v in m.values()) and m["constraint_loss"].shape == (2,)
