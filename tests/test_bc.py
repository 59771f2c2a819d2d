"""BC / any-percent BC: the loss by hand, the trajectory filter on a hand-made dataset, the prepare
hook (kept rows and their state statistics), flags, the CLI, exact resume and learning."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from offrl.algos import bc
from offrl.algos.bc import BC, Config, discounted_returns, keep_best_trajectories, trajectory_bounds
from offrl.data.dataset import Dataset
from offrl.errors import OffrlError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTED = "offrl/invertedpendulum/scripted-v0"


# ----------------------------------------------------------------------------- the loss
def _tiny_agent(**kw) -> BC:
    torch.manual_seed(0)
    return BC(Config(hidden=(5,), **kw), obs_dim=3, act_dim=2)


def _batch(n=6, seed=0):
    """Only the two columns BC reads, by attribute: a namespace has no positional access at all."""
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(obs=torch.randn(n, 3, generator=g), act=torch.rand(n, 2, generator=g) * 2 - 1)


def np_actor(agent, s):
    """tanh(MLP(s)) in float64 numpy from the agent's weights."""
    layers = [m for m in agent.actor.net.net if isinstance(m, torch.nn.Linear)]
    h = s
    for i, lin in enumerate(layers):
        h = h @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return np.tanh(h)


def test_loss_from_explicit_numbers():
    agent = _tiny_agent()
    last = agent.actor.net.net[-1]
    with torch.no_grad():  # π(s) = tanh(atanh(0.5)) = 0.5 in both action dims, whatever s
        last.weight.zero_()
        last.bias.fill_(math.atanh(0.5))
    batch = SimpleNamespace(obs=torch.randn(2, 3), act=torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    m = agent.update(batch)
    # mean over batch AND action dims: ((0.5-1)² + 0.5² + 0.5² + (0.5+1)²) / 4 = 3 / 4
    assert m["actor_loss"].item() == pytest.approx(0.75, rel=1e-6)


def test_update_matches_hand_computation_and_descends():
    agent = _tiny_agent()
    before = copy.deepcopy(agent)
    b = _batch()
    s, a = b.obs.double().numpy(), b.act.double().numpy()
    expected = ((np_actor(agent, s) - a) ** 2).mean()
    m = agent.update(b)
    assert set(m) == {"actor_loss"}
    loss = m["actor_loss"]
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Adam's first step moves every weight by lr · g / (|g| + eps) against its gradient g
    before.actor.zero_grad()
    torch.nn.functional.mse_loss(before.actor(b.obs), b.act).backward()
    for p0, p1 in zip(before.actor.parameters(), agent.actor.parameters()):
        g = p0.grad
        step = 3e-4 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p1.detach(), (p0 - step).detach(), atol=1e-7, rtol=0)
    # ... and the step lowered the loss on that batch
    after = ((np_actor(agent, s) - a) ** 2).mean()
    assert after < expected
    # a few more steps keep lowering it
    for _ in range(20):
        agent.update(b)
    assert ((np_actor(agent, s) - a) ** 2).mean() < after


def test_agent_shape_and_roundtrip(tmp_path):
    agent = BC(Config(), 11, 3)
    lins = [m for m in agent.actor.net.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lins] == [(11, 256), (256, 256), (256, 3)]
    assert agent.optimizers["actor"].param_groups[0]["lr"] == 3e-4
    assert agent.act(np.zeros(11)).shape == (3,)
    acts = agent.act(np.random.default_rng(0).standard_normal((5, 11)) * 100)
    assert acts.shape == (5, 3) and np.abs(acts).max() <= 1.0
    small = _tiny_agent()
    small.update(_batch())
    small.save(str(tmp_path / "a.pt"))
    loaded = BC.load(str(tmp_path / "a.pt"), device="cpu")
    obs = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    assert np.array_equal(small.act(obs), loaded.act(obs)) and loaded.cfg.hidden == (5,)


def test_act_normalizes_with_the_agents_statistics():
    mean, std = np.array([1.0, -2.0, 3.0]), np.array([2.0, 0.5, 4.0])
    torch.manual_seed(0)
    agent = BC(Config(hidden=(5,)), 3, 2, obs_mean=mean, obs_std=std)
    raw = np.random.default_rng(0).standard_normal((4, 3))
    expected = np_actor(agent, (raw - mean) / std)
    assert np.allclose(agent.act(raw), expected, atol=1e-6)


# ----------------------------------------------------------------------------- trajectory filter
def _hand_dataset() -> Dataset:
    """11 rows, 3 dataset episodes; with max_episode_steps = 3 and γ = 0.5, five trajectories:

    rows 0-2  (episode A, cut at 3 rows)   r = 1, 2, 4   G = 1 + 1 + 1       = 3.0
    rows 3-5  (episode A, cut at 3 rows)   r = 0, 0, 8   G = 0 + 0 + 8/4     = 2.0  (undiscounted: 8, the best)
    row  6    (episode A ends: timeout)    r = 2.5       G                   = 2.5
    rows 7-8  (episode B: terminal)        r = 5, -2     G = 5 − 1           = 4.0
    rows 9-10 (episode C: end of the data) r = 1, 1      G = 1 + 0.5         = 1.5
    """
    n = 11
    rewards = np.array([1, 2, 4, 0, 0, 8, 2.5, 5, -2, 1, 1], dtype=np.float32)
    terminals = np.zeros(n)
    terminals[8] = 1
    timeouts = np.zeros(n)
    timeouts[6] = 1
    obs = np.stack([np.arange(n), np.arange(n) ** 2], 1).astype(np.float32)
    return Dataset(observations=obs, actions=np.tanh(obs[:, :1] / 10), rewards=rewards, next_observations=obs + 1,
                   terminals=terminals, timeouts=timeouts, metadata={"id": "hand", "env_id": None})


def test_trajectory_bounds_cut_at_terminals_timeouts_and_max_steps():
    starts, ends = trajectory_bounds(_hand_dataset(), max_episode_steps=3)
    assert starts.tolist() == [0, 3, 6, 7, 9]
    assert ends.tolist() == [2, 5, 6, 8, 10]
    # a long limit only cuts at the episode ends
    starts, ends = trajectory_bounds(_hand_dataset(), max_episode_steps=1000)
    assert starts.tolist() == [0, 7, 9] and ends.tolist() == [6, 8, 10]


def test_discounted_returns_by_hand():
    ds = _hand_dataset()
    starts, ends = trajectory_bounds(ds, 3)
    assert discounted_returns(ds.rewards, starts, ends, 0.5).tolist() == pytest.approx([3.0, 2.0, 2.5, 4.0, 1.5])
    assert discounted_returns(ds.rewards, starts, ends, 1.0).tolist() == pytest.approx([7.0, 8.0, 2.5, 3.0, 2.0])
    # γ = 0: the first reward of each trajectory only
    assert discounted_returns(ds.rewards, starts, ends, 0.0).tolist() == pytest.approx([1.0, 0.0, 2.5, 5.0, 1.0])


@pytest.mark.parametrize("frac, rows", [
    (1.0, list(range(11))),              # plain BC: every row
    (0.6, [0, 1, 2, 6, 7, 8]),           # int(0.6 · 5) = 3: G = 4.0, 3.0, 2.5
    (0.5, [0, 1, 2, 7, 8]),              # int(2.5) = 2: G = 4.0, 3.0
    (0.4, [0, 1, 2, 7, 8]),              # int(2.0) = 2
    (0.3, [7, 8]),                       # int(1.5) = 1: the terminal episode B
    (0.01, [7, 8]),                      # max(1, int(0.05)): exactly one trajectory
])
def test_keep_best_trajectories(frac, rows):
    kept = keep_best_trajectories(_hand_dataset(), frac, discount=0.5, max_episode_steps=3)
    assert kept.tolist() == rows


def test_discount_changes_the_ranking():
    # undiscounted, rows 3-5 (G = 8) are the best trajectory; discounted (γ = 0.5) the worst but one
    assert keep_best_trajectories(_hand_dataset(), 0.01, 1.0, 3).tolist() == [3, 4, 5]
    assert keep_best_trajectories(_hand_dataset(), 0.01, 0.5, 3).tolist() == [7, 8]


def test_ties_keep_the_earlier_trajectory():
    ds = _hand_dataset()
    ds.rewards[:] = 1.0  # trajectories of 3 rows tie (G = 1.75); rows 0-2 come first
    assert keep_best_trajectories(ds, 0.01, 0.5, 3).tolist() == [0, 1, 2]
    assert keep_best_trajectories(ds, 0.4, 0.5, 3).tolist() == [0, 1, 2, 3, 4, 5]


def _corl_walk(rewards, ends_flag, frac, discount, max_steps):
    """CORL's keep_best_trajectories loop, with ``ends_flag`` (terminal or timeout) as ``done``."""
    ids, returns, cur, ret, scale = [], [], [], 0.0, 1.0
    for i, (r, done) in enumerate(zip(rewards, ends_flag)):
        ret += scale * float(r)
        cur.append(i)
        scale *= discount
        if done or len(cur) == max_steps:
            ids.append(cur)
            returns.append(ret)
            cur, ret, scale = [], 0.0, 1.0
    order = np.argsort(-np.asarray(returns), kind="stable")[: max(1, int(frac * len(returns)))]
    return sorted(i for k in order for i in ids[k])


@pytest.mark.parametrize("seed", range(5))
def test_matches_corls_loop_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = 400
    terminals = (rng.random(n) < 0.03).astype(np.float32)
    timeouts = ((rng.random(n) < 0.02) & (terminals == 0)).astype(np.float32)
    terminals[-1], timeouts[-1] = 1.0, 0.0  # the data ends on a terminal: CORL then keeps the tail too
    obs = rng.standard_normal((n, 2)).astype(np.float32)
    ds = Dataset(obs, rng.uniform(-1, 1, (n, 1)), rng.standard_normal(n), obs, terminals, timeouts)
    for frac in (1.0, 0.5, 0.1, 0.001):
        for max_steps in (7, 1000):
            ours = keep_best_trajectories(ds, frac, 0.9, max_steps).tolist()
            assert ours == _corl_walk(ds.rewards, (terminals + timeouts) > 0, frac, 0.9, max_steps)


def test_prepare_keeps_rows_and_normalizes_by_them():
    ds = _hand_dataset()
    prep = bc.prepare(Config(frac=0.4, discount=0.5, max_episode_steps=3), ds)
    sub = prep.dataset
    assert np.array_equal(sub.observations, ds.observations[[0, 1, 2, 7, 8]])
    # the kept trajectories are the subset's episodes: rows 0-2 (cut at 3 rows, now a timeout), 7-8 (terminal)
    assert sub.episode_lengths().tolist() == [3, 2]
    assert sub.timeouts.tolist() == [0, 0, 1, 0, 0] and sub.terminals.tolist() == [0, 0, 0, 0, 1]
    # statistics of the kept rows (population std + 1e-3), not of the whole dataset
    kept = ds.observations[[0, 1, 2, 7, 8]].astype(np.float64)
    assert np.allclose(prep.obs_mean, kept.mean(0)) and np.allclose(prep.obs_std, kept.std(0) + 1e-3)
    assert not np.allclose(prep.obs_mean, ds.observations.mean(0))
    assert prep.rewards is None and prep.actions is None
    # the original dataset is untouched
    assert ds.timeouts.tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]


def test_prepare_plain_bc_uses_the_whole_dataset():
    ds = _hand_dataset()
    prep = bc.prepare(Config(), ds)
    assert prep.dataset is None
    mean, std = ds.state_stats()
    assert np.array_equal(prep.obs_mean, mean) and np.array_equal(prep.obs_std, std)
    prep = bc.prepare(Config(normalize_states=False), ds)
    assert prep.obs_mean is None and prep.obs_std is None


@pytest.mark.parametrize("kw, msg", [
    ({"frac": 0.0}, "--frac"), ({"frac": 1.5}, "--frac"), ({"frac": -0.1}, "--frac"), ({"frac": float("nan")}, "--frac"),
    ({"discount": -0.1}, "--discount"), ({"discount": 1.01}, "--discount"),
    ({"max_episode_steps": 0}, "--max-episode-steps"), ({"actor_lr": 0.0}, "--actor-lr"),
    ({"hidden": ()}, "--hidden"), ({"steps": 0}, "--steps"),
])
def test_config_validation(kw, msg):
    with pytest.raises(OffrlError, match=msg):
        Config(**kw).validate()


def test_bad_flag_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        bc.main(["--frac", "0", "--dataset", SCRIPTED])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "offrl: error: --frac must be in (0, 1], got 0.0"


# ----------------------------------------------------------------------------- runs
TINY = ["--dataset", SCRIPTED, "--hidden", "32", "32", "--batch-size", "32", "--eval-episodes", "1",
        "--log-every", "5", "--progress", "False", "--threads", "1"]


def test_script_smoke_run(use_scripted, tmp_path):
    """``python algos/bc.py`` in a subprocess: 10 % BC, periodic evaluation, every output file."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, os.path.join(ROOT, "algos", "bc.py"), "--dataset", SCRIPTED, "--steps", "200",
           "--eval-every", "100", "--eval-episodes", "2", "--frac", "0.1", "--log-every", "50",
           "--progress", "False", "--threads", "1", "--run-dir", str(run_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    with open(run_dir / "summary.json") as f:
        summary = json.load(f)
    assert printed == summary
    assert summary["algo"] == "bc" and summary["steps"] == 200 and summary["dataset"] == SCRIPTED
    assert summary["final_return"] is not None and summary["final_return"] > 0
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows if "train/actor_loss" in r] == [50, 100, 150, 200]
    assert [r["step"] for r in rows if "eval/return_mean" in r] == [100, 200]
    assert all(math.isfinite(r["train/actor_loss"]) for r in rows if "train/actor_loss" in r)
    # the run trained on the kept 10 %: config.json's dataset block describes the subset
    with open(run_dir / "config.json") as f:
        config = json.load(f)
    assert config["config"]["frac"] == 0.1 and config["env_id"] == "InvertedPendulum-v5"
    from offrl.data import load_dataset

    full = load_dataset(SCRIPTED)
    kept = keep_best_trajectories(full, 0.1, 0.99, 1000)
    assert config["dataset"]["transitions"] == len(kept) < len(full)
    assert config["dataset"]["episodes"] == max(1, int(0.1 * len(full.episode_ends())))
    # the checkpoint holds the kept rows' statistics
    agent = BC.load(str(run_dir / "checkpoint.pt"), device="cpu")
    mean, std = full.subset(kept).state_stats()
    assert np.allclose(agent.obs_mean.numpy(), mean) and np.allclose(agent.obs_std.numpy(), std)


def test_help_cli_eval_and_bench(use_scripted, tmp_path, capsys):
    from offrl.cli import main

    out = subprocess.run([sys.executable, os.path.join(ROOT, "algos", "bc.py"), "--help"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0
    assert all(flag in out.stdout for flag in ("--frac", "--discount", "--max-episode-steps", "--actor-lr"))
    run_dir = tmp_path / "run"
    assert main(["train", "bc", *TINY, "--steps", "30", "--eval-every", "0", "--run-dir", str(run_dir)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 30
    assert main(["eval", str(run_dir / "checkpoint.pt"), "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["env_id"] == "InvertedPendulum-v5"
    assert main(["bench", "update", "--algo", "bc", "--steps", "3", "--warmup", "1", "--rows", "2000"]) == 0
    bench = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bench["algo"] == "bc" and bench["metrics_finite"]


def test_exact_resume(use_scripted, tmp_path, monkeypatch):
    """A 10 %-BC run killed after its step-20 checkpoint and resumed equals the uninterrupted run
    (the filter is recomputed on resume and must pick the same rows)."""
    from offrl import logger as logger_mod

    kw = dict(dataset=SCRIPTED, frac=0.2, steps=40, eval_every=10, eval_episodes=1, checkpoint_every=20,
              hidden=(32, 32), batch_size=32, log_every=5, progress=False, threads=1)
    bc.train(Config(run_dir=str(tmp_path / "full"), **kw))

    calls = {"n": 0}
    original = logger_mod.MetricAccumulator.add

    def add_then_die(self, metrics):
        calls["n"] += 1
        if calls["n"] > 25:
            raise KeyboardInterrupt
        original(self, metrics)

    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        bc.train(Config(run_dir=str(tmp_path / "cut"), **kw))
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    summary = bc.train(Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))
    assert summary["run_dir"] == str(tmp_path / "cut")

    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 40
    for k, v in a["agent"].items():
        assert torch.equal(v, b["agent"][k]), k

    def rows(run_dir):  # the training and evaluation values (not wall-clock timings)
        out = []
        for r in map(json.loads, open(run_dir / "metrics.jsonl")):
            vals = {k: v for k, v in r.items() if k.startswith(("train/", "eval/")) and k != "eval/seconds"}
            if vals:
                out.append({"step": r["step"], **vals})
        return out

    full_rows = rows(tmp_path / "full")
    assert any(r["step"] == 40 and "train/actor_loss" in r for r in full_rows)
    assert full_rows == rows(tmp_path / "cut")


# Measured on the 20k-step scripted dataset (2-core CPU, one thread, 2000 steps, 10 episodes,
# seeds 0-4): untrained actor 6-10; plain BC (--frac 1) 13.3, 20.2, 13.9, 13.8, 77.9; 10 % BC
# (--frac 0.1) 28.7, 51.9, 66.7, 38.4, 69.1. About 4 s per run.
def test_ten_percent_bc_learns_scripted_pendulum(use_scripted, tmp_path):
    """The best 10 % of the episodes (the longest: every reward is 1) hold mostly stabilising
    actions; cloning them must balance the pole clearly longer than an untrained actor."""
    from offrl.evaluation import evaluate

    finals, untrained = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        untrained.append(evaluate(BC(Config(), 4, 1).act, "InvertedPendulum-v5", 10, seed=seed + 10_000)["return_mean"])
        s = bc.train(Config(dataset=SCRIPTED, steps=2000, frac=0.1, eval_every=0, eval_episodes=10, seed=seed,
                            progress=False, threads=1, run_dir=str(tmp_path / f"s{seed}")))
        finals.append(s["final_return"])
    assert np.mean(finals) >= 30 and np.mean(finals) >= 3 * np.mean(untrained), (finals, untrained)


# ----------------------------------------------------------------------------- --episodes and --chunk
def test_defaults_are_plain_bc():
    """--episodes 0 and --chunk 1 are the defaults and leave BC as it was: the same actor shape
    and initial weights, no replaced rows, no chunk table, the plain MSE update."""
    cfg = Config()
    assert cfg.episodes == 0 and cfg.chunk == 1
    torch.manual_seed(0)
    a = BC(Config(hidden=(5,)), 3, 2)
    torch.manual_seed(0)
    b = BC(Config(hidden=(5,), episodes=0, chunk=1), 3, 2)
    assert a.actor.net.net[-1].out_features == 2
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    ds = _hand_dataset()
    prep = bc.prepare(Config(), ds)
    assert prep.dataset is None and prep.rewards is None and prep.actions is None
    a.setup_data(None)  # a no-op at --chunk 1
    assert a._chunk_act is None
    batch = _batch()
    ma, mb = a.update(batch), b.update(batch)
    assert torch.equal(ma["actor_loss"], mb["actor_loss"])


def test_first_episodes_and_prepare_with_episodes():
    ds = _hand_dataset()  # episodes: rows 0-6 (timeout), 7-8 (terminal), 9-10 (end of data)
    assert np.array_equal(bc.first_episodes(ds, 1).observations, ds.observations[:7])
    assert len(bc.first_episodes(ds, 2)) == 9 and bc.first_episodes(ds, 5) is ds
    prep = bc.prepare(Config(episodes=2), ds)
    assert len(prep.dataset) == 9 and prep.dataset.episode_lengths().tolist() == [7, 2]
    mean, std = ds.subset(np.arange(9)).state_stats()
    assert np.array_equal(prep.obs_mean, mean) and np.array_equal(prep.obs_std, std)
    # --episodes first, then --frac ranks the trajectories of those episodes only
    prep = bc.prepare(Config(episodes=2, frac=0.4, discount=0.5, max_episode_steps=3), ds)
    assert np.array_equal(prep.dataset.observations, ds.observations[[7, 8]])  # G = 4 is the best of 4
    with pytest.raises(OffrlError, match="--episodes"):
        Config(episodes=-1).validate()
    with pytest.raises(OffrlError, match="--chunk"):
        Config(chunk=0).validate()


def test_chunk_targets_and_episode_ends_by_hand():
    acts = torch.arange(6, dtype=torch.float32).reshape(6, 1) * torch.tensor([[1.0, -1.0]])
    obs = torch.arange(6, dtype=torch.float32).reshape(6, 1)
    nxt = obs + 1
    nxt[2] = 99.0   # row 3 does not continue row 2: an episode ends at row 2 (a timeout)
    done = torch.zeros(6)
    done[4] = 1.0   # row 4 terminates
    ends = bc.buffer_episode_ends(obs, nxt, done)
    assert ends.tolist() == [2, 2, 2, 4, 4, 5]
    targets, mask = bc.chunk_targets(acts, ends, 3)
    # row 1: a_1, a_2, then a_2 repeated (past its episode's end) and masked
    assert targets[1].tolist() == [1, -1, 2, -2, 2, -2] and mask[1].tolist() == [1, 1, 1, 1, 0, 0]
    assert targets[3].tolist() == [3, -3, 4, -4, 4, -4] and mask[3].tolist() == [1, 1, 1, 1, 0, 0]
    assert targets[5].tolist() == [5, -5] * 3 and mask[5].tolist() == [1, 1, 0, 0, 0, 0]
    assert targets[0].tolist() == [0, 0, 1, -1, 2, -2] and mask[0].sum() == 6


def test_chunk_loss_by_hand_and_acting_executes_the_first_action(tmp_path):
    from offrl.buffer import ReplayBuffer

    hand = _hand_dataset()
    nxt = np.concatenate([hand.observations[1:], hand.observations[-1:] + 1])  # rows continue each other ...
    nxt[[6, 8]] += 0.5                                                         # ... except at episode ends
    ds = Dataset(observations=hand.observations, actions=hand.actions, rewards=hand.rewards, next_observations=nxt,
                 terminals=hand.terminals, timeouts=hand.timeouts, metadata=hand.metadata)
    cfg = Config(hidden=(5,), chunk=3)
    prep = bc.prepare(cfg, ds)
    assert prep.rewards is None  # the rewards stay the dataset's
    assert prep.extras["row"].tolist() == list(range(11))  # the row index, for gathering the chunk
    buf = ReplayBuffer.from_dataset(ds, extras=prep.extras)
    assert buf.column("rew").tolist() == ds.rewards.tolist()
    torch.manual_seed(0)
    agent = BC(cfg, 2, 1)
    assert agent.actor.net.net[-1].out_features == 3
    agent.setup_data(buf)
    rows = torch.tensor([0, 5, 6, 8, 10])
    batch = buf.batch(rows)
    # by hand: episode ends 6, 8, 10; row r's targets a_r, a_{r+1}, a_{r+2} while inside its episode
    a = ds.actions[:, 0].astype(np.float64)
    ends = {0: 6, 5: 6, 6: 6, 8: 8, 10: 10}
    pred = np_actor(agent, batch.obs.double().numpy())
    sq, count = 0.0, 0
    for i, r in enumerate(rows.tolist()):
        for k in range(3):
            if r + k <= ends[r]:
                sq += (pred[i, k] - a[r + k]) ** 2
                count += 1
    m = agent.update(batch)
    assert count == 3 + 2 + 1 + 1 + 1
    assert m["actor_loss"].item() == pytest.approx(sq / count, rel=1e-6)
    # acting: the first action of the predicted chunk, act_dim wide
    obs = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    chunk = agent.policy_chunk(torch.as_tensor(obs))
    assert chunk.shape == (4, 3, 1)
    assert np.allclose(agent.act(obs), chunk[:, 0].detach().numpy(), atol=1e-7)
    # a policy file of a chunked BC acts as a frozen base with act_dim outputs
    agent.save_policy(str(tmp_path / "base.pt"), {"note": "test"})
    holder = BC(Config(hidden=(5,)), 2, 1)
    base = holder.frozen_policy("base", str(tmp_path / "base.pt"))
    out = base(torch.as_tensor(obs))
    assert out.shape == (4, 1) and torch.allclose(out, torch.as_tensor(agent.act(obs)))
    assert not any(p.requires_grad for p in base.parameters())


def test_chunked_run_resumes_exactly(use_scripted, tmp_path, monkeypatch):
    """--chunk 3 --episodes 20: the chunk table is rebuilt from the buffer on resume; the resumed
    run equals the uninterrupted one."""
    from offrl import logger as logger_mod

    kw = dict(dataset=SCRIPTED, chunk=3, episodes=20, steps=30, eval_every=15, eval_episodes=1,
              checkpoint_every=15, hidden=(32, 32), batch_size=32, log_every=5, progress=False, threads=1)
    full = bc.train(Config(run_dir=str(tmp_path / "full"), **kw))
    assert math.isfinite(full["final_return"])
    calls = {"n": 0}
    original = logger_mod.MetricAccumulator.add

    def add_then_die(self, metrics):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        original(self, metrics)

    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        bc.train(Config(run_dir=str(tmp_path / "cut"), **kw))
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    bc.train(Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    for k, v in a["agent"].items():
        assert torch.equal(v, b["agent"][k]), k
    with open(tmp_path / "full" / "config.json") as f:
        config = json.load(f)
    assert config["dataset"]["episodes"] == 20 and config["config"]["chunk"] == 3
