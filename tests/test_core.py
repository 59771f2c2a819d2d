"""The core for every regime: named batches, weighted and mixed sampling, n-step targets, one data
transform for dataset and online rows, the run lifecycle with phases (exact resume across the
offline → online hand-over), frozen policies, starting from another run, the registry, and the
evaluator's info metrics."""

from __future__ import annotations

import json
import math
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_cli import SCRIPTED
from test_signals import _signal_at

from offrl import logger as logger_mod
from offrl.buffer import Batch, DataTransform, MixedSampler, ReplayBuffer, nstep_targets
from offrl.errors import OffrlError, TrainingInterrupted


def _filled(n=1000, obs_dim=3, act_dim=2, seed=0, **kw) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(obs_dim, act_dim, n, seed=seed, **kw)
    extras = {k: rng.normal(size=(n, *s)) for k, s in kw.get("extras", {}).items()}
    buf.add(rng.normal(size=(n, obs_dim)), rng.uniform(-1, 1, (n, act_dim)), np.arange(n, dtype=np.float32),
            rng.normal(size=(n, obs_dim)), np.zeros(n), **extras)
    return buf


# ------------------------------------------------------------------------------------ batches
def test_batch_columns_by_name_and_declared_extras():
    buf = _filled(50, extras={"logp": (), "base_act": (2,)})
    b = buf.sample(8)
    assert isinstance(b, Batch) and b.keys() == ["obs", "act", "rew", "next_obs", "done", "logp", "base_act"]
    assert b.obs.shape == (8, 3) and b.rew.shape == (8,) and b.logp.shape == (8,) and b.base_act.shape == (8, 2)
    idx = b.rew.long()  # rewards are the row numbers: every column comes from the same row
    assert torch.equal(b["base_act"], buf.column("base_act")[idx]) and torch.equal(b.obs, buf.observations[idx])
    with pytest.raises(OffrlError, match="missing"):
        buf.add(np.zeros(3), np.zeros(2), 0.0, np.zeros(3), 0.0)  # the extras are required
    with pytest.raises(OffrlError, match="clashes"):
        ReplayBuffer(3, 2, 10, extras={"rew": ()})


# ------------------------------------------------------------------------------------ weighted
def test_weighted_sampling_matches_its_weights_chi_square():
    buf = _filled(6)
    w = np.array([1.0, 2.0, 0.0, 4.0, 8.0, 1.0])
    buf.set_weights(w)
    n = 60_000
    idx = buf.sample(n).rew.long().numpy()
    counts = np.bincount(idx, minlength=6)
    assert counts[2] == 0  # weight 0 is never drawn
    p = w / w.sum()
    keep = p > 0
    chi2 = (((counts - n * p) ** 2)[keep] / (n * p)[keep]).sum()
    assert chi2 < 20.5  # chi-square, 4 degrees of freedom: P(chi2 > 20.5) < 0.0005
    # weights change in place: only the rows named are updated, and sampling follows at once
    buf.set_weights(torch.tensor([0.0, 0.0]), index=torch.tensor([3, 4]))
    idx = buf.sample(5000).rew.long().numpy()
    assert set(np.unique(idx)) == {0, 1, 5}


def test_weighted_buffer_new_rows_weight_one_and_checkpoint():
    buf = _filled(4)
    buf = ReplayBuffer(3, 2, 10, seed=1)
    buf.add(np.zeros((4, 3)), np.zeros((4, 2)), np.arange(4.0), np.zeros((4, 3)), np.zeros(4))
    buf.set_weights([0.0, 0.0, 0.0, 1.0])
    buf.add(np.zeros((1, 3)), np.zeros((1, 2)), [4.0], np.zeros((1, 3)), [0.0])
    assert set(np.unique(buf.sample(2000).rew.numpy())) == {3.0, 4.0}
    state = buf.state_dict()
    other = ReplayBuffer(3, 2, 10, seed=9)
    other.load_state_dict(state)
    assert torch.equal(other.sample(64).rew, buf.sample(64).rew)  # rows, weights and generator restored
    with pytest.raises(OffrlError, match=">= 0"):
        buf.set_weights([-1.0, 0, 0, 1, 1])


# ------------------------------------------------------------------------------------ mixed
def test_mixed_sampler_ratio_is_exact_per_batch():
    demos, online = _filled(100, seed=0), _filled(300, seed=1)
    mix = MixedSampler([demos, online], [0.5, 0.5])
    for bs in (256, 257, 3):
        b = mix.sample(bs)
        src = b.source.numpy()
        assert len(src) == bs and abs((src == 0).sum() - (src == 1).sum()) <= 1
    b = MixedSampler([demos, online], [1, 3]).sample(200)
    assert ((b.source == 0).sum().item(), (b.source == 1).sum().item()) == (50, 150)
    empty = ReplayBuffer(3, 2, 10)
    assert (MixedSampler([empty, online], [0.5, 0.5]).sample(32).source == 1).all()  # an empty buffer gives way


# ------------------------------------------------------------------------------------ n-step
def test_nstep_targets_by_hand():
    # episode A: rows 0-3, terminates at 3; episode B: rows 4-6, cut by a time limit at 6
    r = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0])
    term = np.array([0, 0, 0, 1, 0, 0, 0.0])
    ends = np.array([3, 6])
    g = 0.5
    ret, last, disc = nstep_targets(r, term, ends, g, 3)
    assert ret.tolist() == [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3 + 0.25 * 4, 3 + 0.5 * 4, 4.0,
                            10 + 0.5 * 20 + 0.25 * 30, 20 + 0.5 * 30, 30.0]
    assert last.tolist() == [2, 3, 3, 3, 6, 6, 6]
    assert np.allclose(disc, [g ** 3, g ** 3, g ** 2, g, g ** 3, g ** 2, g])
    one = nstep_targets(r, term, ends, g, 1)
    assert np.array_equal(one[0], r.astype(np.float32)) and one[1].tolist() == list(range(7))


def test_nstep_buffer_from_dataset(use_scripted):
    from offrl.data import load_dataset

    ds = load_dataset(SCRIPTED)
    buf = ReplayBuffer.from_dataset(ds, n_step=3, discount=0.9)
    assert "discount" in buf.columns
    t = int(ds.episode_starts()[1])  # inside the second episode, far from its end
    row = buf.batch(torch.tensor([t]))
    r = ds.rewards
    assert row.rew.item() == pytest.approx(r[t] + 0.9 * r[t + 1] + 0.81 * r[t + 2], rel=1e-6)
    assert torch.equal(row.next_obs[0], torch.as_tensor(ds.next_observations[t + 2]))
    assert row.discount.item() == pytest.approx(0.9 ** 3)


# ------------------------------------------------------------------------------------ transform
def test_one_coordinate_system_for_dataset_and_online_rows(use_scripted):
    from offrl.data import load_dataset

    ds = load_dataset(SCRIPTED)
    mean, std = ds.state_stats()
    t = DataTransform(mean, std, lambda r: r * 2.0)
    buf = ReplayBuffer.from_dataset(ds, capacity=len(ds) + 1, transform=t)
    raw = ds.subset(np.arange(1))
    buf.add(raw.observations, raw.actions, raw.rewards, raw.next_observations, raw.terminals)  # an "online" row
    first, added = buf.batch(torch.tensor([0, len(ds)])).obs
    assert torch.equal(first, added)  # the same raw row lands on the same normalized coordinates
    assert torch.allclose(first, torch.as_tensor((ds.observations[0] - mean) / std))
    assert buf.column("rew")[len(ds)].item() == buf.column("rew")[0].item() == pytest.approx(2.0 * ds.rewards[0])


# ------------------------------------------------------------------------------------ phases
O2O = dict(dataset=SCRIPTED, hidden=(32, 32), batch_size=32, eval_episodes=2, log_every=10, progress=False,
           threads=1, steps=30, online_steps=40, eval_every=20, checkpoint_every=1000)


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "eval/seconds"} for r in rows]


@pytest.fixture
def default_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_offline_to_online_resume_is_exact_across_the_hand_over(use_scripted, tmp_path, monkeypatch, default_handlers):
    from offrl.algos import iql

    full = iql.train(iql.Config(run_dir=str(tmp_path / "full"), **O2O))
    assert [(p["name"], p["steps"], p["updates"]) for p in full["phases"]] == [("offline", 30, 30), ("online", 40, 40)]
    assert full["steps"] == 70 and full["updates"] == 70
    rows = _rows(tmp_path / "full")
    assert {r["phase"] for r in rows} == {"offline", "online"}
    assert [r["step"] for r in rows if "eval/return_mean" in r] == [20, 30, 40, 60, 70]  # phase ends evaluated
    assert any("rollout/episode_return" in r for r in rows if r["phase"] == "online")

    cut = tmp_path / "cut"
    original = _signal_at(monkeypatch, 17, signal.SIGTERM)  # killed in the offline phase
    with pytest.raises(TrainingInterrupted) as e:
        iql.train(iql.Config(run_dir=str(cut), **O2O))
    assert e.value.step == 17
    _signal_at(monkeypatch, 33, signal.SIGTERM)  # then online: 13 offline + 20 online updates = step 50
    with pytest.raises(TrainingInterrupted) as e:
        iql.train(iql.Config(resume=str(cut / "checkpoint.pt"), progress=False, threads=1))
    assert e.value.step == 50
    ck = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert (ck["train"]["phase"], ck["train"]["phases"]) == (1, ["offline", "online"])
    assert set(ck["train"]["parts"]) >= {"buffer", "metrics", "rng", "evaluator", "phase"}
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    resumed = iql.train(iql.Config(resume=str(cut / "checkpoint.pt"), progress=False, threads=1))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(v, b["agent"][k]) for k, v in a["agent"].items())
    assert torch.equal(a["train"]["parts"]["buffer"]["data"], b["train"]["parts"]["buffer"]["data"])
    assert _rows(tmp_path / "full") == _rows(cut)
    assert resumed["best_return"] == full["best_return"] and resumed["phases"] == full["phases"]


def test_offline_to_online_summary_reports_both_phases_and_the_regret(use_scripted, tmp_path):
    from offrl.algos import iql

    s = iql.train(iql.Config(run_dir=str(tmp_path / "r"), **O2O))
    rows = _rows(tmp_path / "r")
    scores = {r["step"]: r["eval/normalized_score"] for r in rows if "eval/normalized_score" in r}
    assert sorted(scores) == [20, 30, 40, 60, 70] and all(math.isfinite(v) for v in scores.values())
    online = [scores[k] for k in (40, 60, 70)]  # evaluations after the hand-over at step 30
    regret = sum(1 - v / 100 for v in online) / 3
    assert s["offline_normalized_score"] == pytest.approx(scores[30])
    assert s["online_normalized_score"] == pytest.approx(scores[70]) == s["final_normalized_score"]
    assert s["normalized_regret"] == pytest.approx(regret)
    off, on = s["phases"]
    assert off["evaluations"] == 2 and on["evaluations"] == 3 and "normalized_regret" not in off
    assert off["mean_normalized_score"] == pytest.approx((scores[20] + scores[30]) / 2)
    assert on["normalized_regret"] == pytest.approx(regret)
    # logged as a running mean over the online evaluations so far
    logged = {r["step"]: r["eval/normalized_regret"] for r in rows if "eval/normalized_regret" in r}
    assert sorted(logged) == [40, 60, 70]
    assert logged[40] == pytest.approx(1 - scores[40] / 100)
    assert logged[60] == pytest.approx(1 - (scores[40] + scores[60]) / 200)
    # an offline-only run has none of the offline-to-online keys
    only = iql.train(iql.Config(run_dir=str(tmp_path / "o"), **{**O2O, "online_steps": 0}))
    assert "normalized_regret" not in only and "offline_normalized_score" not in only


def test_o2o_scores_take_the_last_offline_stage_before_the_hand_over():
    from offrl.run import o2o_scores

    def ph(name, kind, score, regret=None):
        return {"name": name, "kind": kind, "final_normalized_score": score,
                **({"normalized_regret": regret} if regret is not None else {})}

    # a Uni-O4-like pipeline: the policy handed over is the one at the end of the last offline stage
    stages = [ph("critic", "offline", 1.0), ph("dynamics", "offline", 2.0), ph("bc", "offline", 30.0),
              ph("improve", "offline", 35.0), ph("value", "offline", 34.0), ph("online", "online", 50.0, 0.6)]
    assert o2o_scores(stages) == {"offline_normalized_score": 34.0, "online_normalized_score": 50.0,
                                  "normalized_regret": 0.6}
    # an on-policy phase (PPO after Uni-O4's offline stages) is an env phase as well
    on_policy = [*stages[:-1], {**stages[-1], "kind": "on-policy"}]
    assert o2o_scores(on_policy) == o2o_scores(stages)
    two = [ph("offline", "offline", 20.0), ph("online", "online", 25.0, 0.8)]
    assert o2o_scores(two)["offline_normalized_score"] == 20.0
    assert o2o_scores([ph("offline", "offline", 20.0)]) == {}  # no hand-over
    assert o2o_scores([ph("online", "online", 20.0, 0.8)]) == {}  # online only
    # an online phase before an offline one is not a hand-over from it
    assert o2o_scores([ph("online", "online", 5.0, 0.9), ph("offline", "offline", 20.0)]) == {}


def test_resume_at_the_hand_over_starts_the_online_phase(use_scripted, tmp_path, monkeypatch, default_handlers):
    from offrl.algos import iql

    iql.train(iql.Config(run_dir=str(tmp_path / "full"), **O2O))
    original = _signal_at(monkeypatch, 30, signal.SIGTERM)  # the last offline update
    with pytest.raises(TrainingInterrupted) as e:
        iql.train(iql.Config(run_dir=str(tmp_path / "cut"), **O2O))
    assert e.value.step == 30
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert (ck["train"]["phase"], ck["train"]["phase_done"]) == (0, True)  # saved at the offline phase's end
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    iql.train(iql.Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")


def test_a_finished_offline_run_continues_online(use_scripted, tmp_path):
    from offrl.algos import iql

    kw = {**O2O, "online_steps": 0}
    off = iql.train(iql.Config(run_dir=str(tmp_path / "r"), **kw))
    assert [p["name"] for p in off["phases"]] == ["offline"]
    both = iql.train(iql.Config(resume=str(tmp_path / "r" / "checkpoint.pt"), online_steps=20, progress=False, threads=1))
    assert [(p["name"], p["steps"]) for p in both["phases"]] == [("offline", 30), ("online", 20)]
    assert both["steps"] == 50 and both["updates"] == 50


def test_iql_actor_lr_is_phase_aware(use_scripted, tmp_path):
    from offrl.algos import iql

    iql.train(iql.Config(run_dir=str(tmp_path / "r"), **{**O2O, "log_every": 1, "eval_every": 0}))
    rows = [r for r in _rows(tmp_path / "r") if "train/actor_lr" in r]
    off = [r["train/actor_lr"] for r in rows if r["phase"] == "offline"]
    on = [r["train/actor_lr"] for r in rows if r["phase"] == "online"]
    import math

    # the offline cosine runs over the offline phase: its last update uses t = 29 of T = 30
    assert off[-1] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 29 / 30)), rel=1e-5)
    assert on and all(v == pytest.approx(3e-4) for v in on)  # not left at 0 online


def test_online_steps_need_an_online_continuation(use_scripted, tmp_path, capsys):
    from offrl.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "td3_bc", "--dataset", SCRIPTED, "--online-steps", "10", "--run-dir", str(tmp_path / "x")])
    assert e.value.code == 2 and "no online continuation" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ agents
def _iql_ckpt(tmp_path, seed=0):
    from offrl.algos.iql import IQL, Config

    cfg = Config(hidden=(16, 16), expectile=0.7, beta=3.0, actor_dropout=0.0, seed=seed)
    torch.manual_seed(seed)
    agent = IQL(cfg, 4, 1, obs_mean=np.arange(4.0), obs_std=np.full(4, 2.0))
    path = str(tmp_path / f"iql{seed}.pt")
    agent.save(path, dataset=SCRIPTED)
    return path, agent


def test_frozen_policy_is_untouched_by_training_and_restored(tmp_path):
    from offrl.algos.cdsa import CDSA, Config

    path, base = _iql_ckpt(tmp_path)
    agent = CDSA(Config(checkpoint=path, hidden=(16, 16)), 4, 1)
    assert not any(p.requires_grad for p in agent.base.parameters())
    assert all(not any(p is q for q in agent.base.parameters()) for g in agent.optimizers["models"].param_groups
               for p in g["params"])
    before = {k: v.clone() for k, v in agent.base.agent.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(32, 4, generator=g), torch.rand(32, 1, generator=g) * 2 - 1, torch.zeros(32),
                  torch.randn(32, 4, generator=g), torch.zeros(32))
    agent.train()
    for _ in range(5):
        agent.update(batch)
    assert not agent.base.training and not agent.base.agent.training
    assert all(torch.equal(v, agent.base.agent.state_dict()[k]) for k, v in before.items())
    assert not any(k.startswith("base.") for k in agent.state_dict())  # saved as a policy file, not as weights
    agent.save(str(tmp_path / "cdsa.pt"))
    os.remove(path)  # the original base file is not needed again
    loaded = CDSA.load(str(tmp_path / "cdsa.pt"), device="cpu")
    obs = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    assert np.array_equal(loaded.base(torch.as_tensor(obs)).numpy(), base.act(obs))
    assert np.array_equal(loaded.act(obs), agent.act(obs))
    agent.save_policy(str(tmp_path / "cdsa_policy.pt"))  # a policy file carries the base too
    assert np.array_equal(CDSA.load(str(tmp_path / "cdsa_policy.pt"), device="cpu").act(obs), agent.act(obs))


def test_init_from_copies_the_named_parts(tmp_path):
    path, src = _iql_ckpt(tmp_path, seed=0)
    _, dst = _iql_ckpt(tmp_path, seed=1)
    dst.init_from(path, parts=("actor", "obs_stats"))
    assert all(torch.equal(v, src.actor.state_dict()[k]) for k, v in dst.actor.state_dict().items())
    assert torch.equal(dst.obs_mean, src.obs_mean)
    assert any(not torch.equal(v, src.critic.state_dict()[k]) for k, v in dst.critic.state_dict().items())  # not copied
    obs = np.ones((3, 4), np.float32)
    assert np.array_equal(dst.act(obs), src.act(obs))
    with pytest.raises(OffrlError, match="cannot take 'vae'"):
        dst.init_from(path, parts=("vae",))


def test_registry_knows_every_algorithm_file():
    from pathlib import Path

    from offrl import registry

    files = {p.stem for p in (Path(__file__).resolve().parent.parent / "algos").glob("*.py") if not p.stem.startswith("_")}
    known = registry.algorithms()
    assert set(known) == files
    for name, algo in known.items():
        assert algo.agent.algo == name and algo.agent.Config is algo.config
    assert registry.get("cdsa").benchmark is False
    with pytest.raises(OffrlError, match="did you mean: iql"):
        registry.get("iqll")


# ------------------------------------------------------------------------------------ evaluator
class _Goal(gym.Env):
    """Reaches its goal (info["is_success"]) after 3 steps when the action is positive."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.sign = 1.0 if self.np_random.uniform() < 0.5 else -1.0
        return np.array([self.sign], np.float32), {}

    def step(self, action):
        self.t += 1
        ok = bool(action[0] * self.sign > 0) and self.t >= 3
        return np.array([self.sign], np.float32), float(ok), ok, self.t >= 5, {"is_success": ok}


def test_evaluator_success_rate_and_best():
    from offrl.evaluation import Evaluator

    gym.register("OffrlTestGoal-v0", entry_point=_Goal, max_episode_steps=5)
    try:
        ev = Evaluator("OffrlTestGoal-v0", episodes=12, seed=3)
        always_right = ev(lambda obs, deterministic=True: obs)  # follows the sign: every episode succeeds
        assert always_right["success_rate"] == 1.0
        never = ev(lambda obs, deterministic=True: -obs)
        assert never["success_rate"] == 0.0 and ev.best_return == always_right["return_mean"]
        half = ev(lambda obs, deterministic=True: np.ones_like(obs))  # right only where the sign is +1
        signs = [1.0 if np.random.Generator(np.random.PCG64(s)).uniform() < 0.5 else -1.0 for s in range(3, 15)]
        assert half["success_rate"] == pytest.approx(np.mean(np.array(signs) > 0))
        assert ev.last["successes"] == [int(s > 0) for s in signs]
    finally:
        gym.registry.pop("OffrlTestGoal-v0")


# ------------------------------------------------------------------------------------ on-policy
class _OnPolicyToy:
    """A minimal on-policy agent for the phase: linear-Gaussian policy, linear value, one SGD step
    per rollout on the GAE advantages (enough to exercise the lifecycle, not a method)."""

    def __new__(cls, *a, **k):
        from offrl.agent import Agent

        class Toy(Agent):
            algo = "toy"

            def __init__(self, cfg, obs_dim, act_dim):
                super().__init__(cfg, obs_dim, act_dim)
                self.pi = torch.nn.Linear(obs_dim, act_dim)
                self.v = torch.nn.Linear(obs_dim, 1)
                self.optimizers = {"all": torch.optim.SGD(self.parameters(), lr=1e-3)}
                self.learned: list[int] = []

            def policy(self, obs, deterministic=True):
                return self.pi(obs).tanh()

            def rollout_action(self, obs):
                x = torch.as_tensor(np.asarray(obs, np.float32))
                with torch.no_grad():
                    mean = self.pi(x)
                    a = (mean + 0.3 * torch.randn_like(mean)).clamp(-1, 1)
                    logp = -((a - mean) ** 2).sum(-1)
                    v = self.v(x).squeeze(-1)
                return a.numpy(), {"logp": logp.numpy(), "value": v.numpy()}

            def state_value(self, obs):
                with torch.no_grad():
                    return self.v(torch.as_tensor(np.asarray(obs, np.float32))).squeeze(-1).numpy()

            def learn(self, storage, last_value):
                storage.compute_returns(torch.as_tensor(last_value), 0.99, 0.95, bootstrap_truncation=True)
                cut = storage.trunc & ~storage.term
                self.learned.append((int(cut.sum()), int((storage.final_value != 0).sum()), int((storage.final_value[~cut] != 0).sum())))
                loss = torch.zeros(())
                for mb in storage.minibatches(2):
                    loss = (self.v(mb.obs).squeeze(-1) - mb.ret).square().mean()
                    self.optimizers["all"].zero_grad()
                    loss.backward()
                    self.optimizers["all"].step()
                return {"value_loss": loss.detach()}

        return Toy(*a, **k)


def _on_policy_run(run_dir, resume=None):
    from offrl.collector import Collector
    from offrl.config import RunConfig
    from offrl.evaluation import Evaluator
    from offrl.rollout import RolloutStorage
    from offrl.run import OnPolicyPhase, Run

    torch.manual_seed(0)
    cfg = RunConfig(log_every=16, checkpoint_every=1000, progress=False, eval_every=0, resume=resume)
    agent = _OnPolicyToy(cfg, 4, 1)
    storage = RolloutStorage(8, 2, 4, 1)
    phase = OnPolicyPhase(64, storage, lambda: Collector("InvertedPendulum-v5", 2, seed=0, max_episode_steps=6))
    ckpt = torch.load(resume, weights_only=True) if resume else None
    run = Run(cfg, agent, [phase], Evaluator(None, 1, 0), str(run_dir), {"algo": "toy", "env_id": "InvertedPendulum-v5"},
              ckpt=ckpt)
    return run, agent


def test_on_policy_phase_fills_rollouts_and_resumes_exactly(tmp_path, monkeypatch, default_handlers):
    from offrl import registry

    run, agent = _on_policy_run(tmp_path / "full")
    registry.register(registry.Algorithm("toy", type(agent), object))  # checkpoints name the algorithm
    try:
        _on_policy_checks(run, agent, tmp_path, monkeypatch)
    finally:
        registry._ALGORITHMS.pop("toy")


def _on_policy_checks(run, agent, tmp_path, monkeypatch):
    summary = run.execute()
    assert summary["steps"] == 64 and summary["updates"] == 4  # 4 rollouts of 8 steps x 2 envs
    # truncated episodes (time limit 6) reach the storage with the value of their true final observation
    assert sum(n for n, _, _ in agent.learned) >= 2
    assert all(n == nonzero and outside == 0 for n, nonzero, outside in agent.learned), agent.learned
    rows = _rows(tmp_path / "full")
    assert [r["step"] for r in rows if "train/value_loss" in r] == [16, 32, 48, 64]
    assert any("rollout/episode_length" in r and r["rollout/episode_length"] == 6 for r in rows)

    original = _signal_at(monkeypatch, 2, signal.SIGTERM)  # after the 2nd rollout: mid-phase, storage empty
    run, _ = _on_policy_run(tmp_path / "cut")
    with pytest.raises(TrainingInterrupted):
        run.execute()
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    run, _ = _on_policy_run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint.pt"))
    run.execute()
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(v, b["agent"][k]) for k, v in a["agent"].items())
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")


def test_unwritable_run_dir_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    """A --run-dir whose parent cannot be created fails at once: no dataset is loaded or built."""
    from offrl import data
    from offrl.cli import main

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("the dataset was loaded"))
    for argv in (["train", "iql", "--run-dir", str(blocker / "run")],
                 ["train", "sac", "--run-dir", str(blocker / "run"), "--total-steps", "10"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("offrl: error: --run-dir ")
        assert "not a directory" in err[0]
    assert not (blocker.parent / "runs").exists()


def test_buffer_state_from_another_device_kind_is_one_clear_error():
    buf = _filled(10)
    state = buf.state_dict()
    state["generator_device"] = "cuda"  # as a CUDA run would have saved it
    with pytest.raises(OffrlError, match="saved on cuda, this run samples on cpu: resume with --device cuda"):
        _filled(10).load_state_dict(state)


def test_a_resumed_run_takes_frozen_parts_from_its_checkpoint(tmp_path):
    from offrl.agent import restoring_frozen
    from offrl.algos.sac import SAC
    from offrl.algos.sac import Config as SACConfig

    torch.manual_seed(0)
    base = SAC(SACConfig(hidden=(8,)), 3, 2)
    base.save_policy(str(tmp_path / "base.pt"))
    saved = torch.load(tmp_path / "base.pt", weights_only=True)
    agent = SAC(SACConfig(hidden=(8,)), 3, 2)
    with pytest.raises(Exception):
        agent.frozen_policy("base", str(tmp_path / "gone.pt"))  # outside a resume: the file must exist
    with restoring_frozen({"frozen": {"base": saved}}):
        part = agent.frozen_policy("base", str(tmp_path / "gone.pt"))
    obs = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    with torch.no_grad():
        assert np.array_equal(part(torch.as_tensor(obs)).numpy(), base.act(obs))
    with restoring_frozen(None):  # a fresh run: the source is used
        assert agent.frozen_policy("base", str(tmp_path / "base.pt")) is not None
