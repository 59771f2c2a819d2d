"""PPO: the clipped losses against hand computation, the agent-owned normalizers against hand-written
running statistics and against gymnasium's wrappers, presets, save/load, exact resume mid-rollout,
the script, learning."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_signals import _rows, default_handlers  # noqa: F401  (autouse: default signal handlers)

from offrl.algos import ppo
from offrl.algos.ppo import PPO, Config, ObsNormalizer, RewardNormalizer, ppo_losses
from offrl.collector import Collector
from offrl.errors import OffrlError, TrainingInterrupted
from offrl.rollout import RolloutStorage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(env="InvertedPendulum-v5", num_steps=64, num_envs=2, num_minibatches=4, update_epochs=2, hidden=(16, 16),
            total_steps=512, eval_every=256, eval_episodes=2, log_every=64, checkpoint_every=10_000, progress=False,
            threads=1)


# ------------------------------------------------------------------------------------ losses
def test_clipped_surrogate_and_value_loss_match_hand_computation():
    ratio = torch.tensor([1.5, 0.5, 1.1])
    old_logp = torch.tensor([-1.0, 0.3, -2.0])
    new_logp = old_logp + ratio.log()
    adv = torch.tensor([1.0, -1.0, 2.0])
    new_v, old_v, ret = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.5, 2.5, 0.1]), torch.tensor([2.0, 1.0, 0.0])
    m = ppo_losses(new_logp, old_logp, adv, new_v, old_v, ret, clip_coef=0.2, clip_vloss=True, norm_adv=False)
    # per sample max(-A r, -A clip(r, 0.8, 1.2)): max(-1.5, -1.2) = -1.2; max(0.5, 0.8) = 0.8; max(-2.2, -2.2) = -2.2
    assert m["policy_loss"].item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, rel=1e-6)
    # unclipped (v - R)^2: 1, 1, 0; clipped V = 0.5 + 0.2 = 0.7, 2.5 - 0.2 = 2.3, 0.1 - 0.1 = 0.0
    # -> (0.7 - 2)^2 = 1.69, (2.3 - 1)^2 = 1.69, 0; max per sample: 1.69, 1.69, 0; times 1/2
    assert m["value_loss"].item() == pytest.approx(0.5 * (1.69 + 1.69 + 0.0) / 3, rel=1e-6)
    # |r - 1| > 0.2 for 1.5 and 0.5
    assert m["clipfrac"].item() == pytest.approx(2 / 3)
    kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5)) + (0.1 - math.log(1.1))) / 3
    assert m["approx_kl"].item() == pytest.approx(kl, rel=1e-5)
    assert m["old_approx_kl"].item() == pytest.approx(-(math.log(1.5) + math.log(0.5) + math.log(1.1)) / 3, rel=1e-5)

    # per-minibatch advantage normalization: A = 1, 2, 3 -> (A - 2) / (1 + 1e-8) (unbiased std = 1)
    m = ppo_losses(new_logp, old_logp, torch.tensor([1.0, 2.0, 3.0]), new_v, old_v, ret, clip_coef=0.2,
                   clip_vloss=False, norm_adv=True)
    # Â = -1, 0, 1: max(1.5, 1.2) = 1.5; 0; max(-1.1, -1.1) = -1.1
    assert m["policy_loss"].item() == pytest.approx((1.5 + 0.0 - 1.1) / 3, rel=1e-6)
    assert m["value_loss"].item() == pytest.approx(0.5 * (1.0 + 1.0 + 0.0) / 3, rel=1e-6)


def test_agent_architecture_and_acting():
    torch.manual_seed(0)
    agent = PPO(Config(), obs_dim=11, act_dim=3)
    assert [tuple(layer.weight.shape) for layer in agent.actor.mean.net if isinstance(layer, torch.nn.Linear)] == \
        [(64, 11), (64, 64), (3, 64)]
    assert isinstance(agent.critic.net[1], torch.nn.Tanh) and agent.critic.net[-1].weight.shape == (1, 64)
    assert torch.equal(agent.actor.log_std, torch.zeros(3))
    for net, head in ((agent.actor.mean, 0.01), (agent.critic, 1.0)):
        linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
        assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
        w = linears[0].weight  # [64, in]: orthonormal columns times sqrt(2)
        assert torch.allclose(w.T @ w, 2.0 * torch.eye(w.shape[1]), atol=1e-4)
        assert torch.linalg.matrix_norm(linears[-1].weight, ord=2).item() == pytest.approx(head, rel=1e-4)
    obs = np.random.default_rng(0).standard_normal((5, 11)) * 50
    a = agent.act(obs)
    assert a.shape == (5, 3) and np.all(np.abs(a) <= 1)
    assert np.allclose(a, agent.actor.mean(agent.normalize_obs(torch.as_tensor(obs))).clamp(-1, 1).detach().numpy())
    actions, extras = agent.rollout_action(obs[:1])  # the sample is kept unclipped with its log-prob
    assert np.allclose(actions, extras["sample"].clamp(-1, 1).numpy())
    dist = agent.actor.dist(extras["policy_obs"])
    assert torch.allclose(extras["logp"], dist.log_prob(extras["sample"]).sum(-1))


def test_props_repo_actor_mean_ends_in_a_tanh_and_older_checkpoints_keep_none(tmp_path):
    """CleanRL's mean is linear at the output; the PROPS repo's (props-baseline, props) ends in
    nn.Tanh(). A checkpoint saved before the field existed loads without the tanh."""
    from offrl.agent import config_from_dict, config_to_dict

    x = torch.full((4, 11), 30.0)
    for preset, bounded in (("cleanrl", False), ("props-baseline", True)):
        torch.manual_seed(0)
        agent = PPO(Config(preset=preset), obs_dim=11, act_dim=3)
        with torch.no_grad():
            agent.actor.mean.net[-1 if not bounded else -2].weight.mul_(1000.0)  # a head far past ±1
            mu = agent.actor.mean(x)
        assert isinstance(agent.actor.mean.net[-1], torch.nn.Tanh) == bounded
        assert (mu.abs().max().item() < 1.0) == bounded, preset
    old = config_to_dict(agent.cfg)
    del old["mean_tanh"]  # a props-baseline run saved before --mean-tanh
    cfg = config_from_dict(Config, old)
    cfg.resolve(None)
    assert cfg.mean_tanh is False and not isinstance(PPO(cfg, 11, 3).actor.mean.net[-1], torch.nn.Tanh)


# ------------------------------------------------------------------------------------ normalizers
def _prior_stats(samples: np.ndarray, eps: float = 1e-4):
    """Mean and variance of all samples merged with the prior (mean 0, var 1, weight eps), from the
    definition: pooled sums, not the incremental update."""
    n = len(samples)
    xbar = samples.mean(0)
    total = eps + n
    mean = samples.sum(0) / total
    m2 = eps * 1.0 + ((samples - xbar) ** 2).sum(0) + xbar ** 2 * eps * n / total
    return mean, m2 / total, total


def test_obs_normalizer_matches_pooled_statistics():
    rng = np.random.default_rng(0)
    norm = ObsNormalizer(3, clip=10.0)
    seen = []
    batches = [rng.normal([5.0, -2.0, 0.0], [1.0, 3.0, 0.01], size=(k, 3)) for k in (1, 4, 2, 7)]
    masks = [None, np.array([True, False, True, True]), np.array([False, False]), None]
    for x, mask in zip(batches, masks):
        norm.update(torch.as_tensor(x), None if mask is None else torch.as_tensor(mask))
        seen.append(x if mask is None else x[mask])
        mean, var, count = _prior_stats(np.concatenate(seen))
        assert np.allclose(norm.mean.numpy(), mean, rtol=1e-12, atol=1e-12)
        assert np.allclose(norm.var.numpy(), var, rtol=1e-10, atol=1e-12)
        assert norm.count.item() == pytest.approx(count)
    obs = np.array([[5.0, -2.0, 0.0], [5.0, -2.0, 1.0]])
    out = norm(torch.as_tensor(obs)).numpy()
    z = (obs - mean) / np.sqrt(var + 1e-8)
    assert out.dtype == np.float32 and np.allclose(out[0], z[0], rtol=1e-6)
    assert out[1, 2] == 10.0 and z[1, 2] > 10  # far outside: clipped at +10
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    norm.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.bool))  # nothing selected: nothing changes
    assert all(torch.equal(v, norm.state_dict()[k]) for k, v in before.items())


def test_reward_normalizer_matches_hand_loop():
    gamma = 0.9
    rng = np.random.default_rng(1)
    norm = RewardNormalizer(2, gamma, clip=10.0)
    G = np.zeros(2)
    returns = []
    term = np.zeros((12, 2), bool)
    term[3, 0] = term[8, 1] = term[9, 0] = True
    for t in range(12):
        r = rng.normal(1.0, 2.0, size=2)
        if t == 5:
            r[1] = 500.0  # a reward far beyond the return's std: clipped at 10
        G = G * gamma * (1.0 - term[t]) + r  # gymnasium 0.29.1: a termination drops G before adding r
        returns.extend(G.tolist())
        _, var, _ = _prior_stats(np.array(returns))
        expected = np.clip(r / np.sqrt(var + 1e-8), -10, 10)
        out = norm(torch.as_tensor(r), torch.as_tensor(term[t])).numpy()
        assert np.allclose(out, expected, rtol=1e-9), t
        assert np.allclose(norm.ret.numpy(), G)
    assert norm.rms.count.item() == pytest.approx(1e-4 + 24)


def _gymnasium_reference(env_id: str, actions: list[np.ndarray], gamma: float, max_steps: int):
    """CleanRL's wrapper stack (ClipAction, NormalizeObservation, clip ±10, NormalizeReward, clip ±10) in a
    same-step-autoreset vector env, fed the given actions; returns the observations the policy got and the rewards."""
    from offrl.envs import make_env

    def make():
        env = gym.wrappers.ClipAction(make_env(env_id, max_episode_steps=max_steps))
        env = gym.wrappers.NormalizeObservation(env)
        env = gym.wrappers.TransformObservation(env, lambda o: np.clip(o, -10, 10), env.observation_space)
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        return gym.wrappers.TransformReward(env, lambda r: np.clip(r, -10, 10))

    venv = gym.vector.SyncVectorEnv([make], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    obs, _ = venv.reset(seed=[0])
    seen, rewards, dones = [], [], []
    for a in actions:
        seen.append(obs[0].copy())
        obs, r, term, trunc, _ = venv.step(a)
        rewards.append(float(r[0]))
        dones.append(bool(term[0] or trunc[0]))
    venv.close()
    return np.array(seen), np.array(rewards), np.array(dones)


def test_normalization_matches_cleanrl_wrappers_step_by_step():
    """One env: the stored observations and rewards equal what gymnasium's wrappers give the policy,
    across terminations and time-limit truncations (the final observation joins the statistics, the
    running return survives a truncation)."""
    torch.manual_seed(0)
    cfg = Config(env="InvertedPendulum-v5", num_steps=150, num_envs=1, hidden=(8, 8), gamma=0.97)
    agent = PPO(cfg, 4, 1)
    with torch.no_grad():
        agent.actor.log_std.fill_(0.5)  # wild actions: the pole falls within a few steps (terminations)
    storage = RolloutStorage(150, 1, 4, 1)
    col = Collector("InvertedPendulum-v5", 1, seed=0, max_episode_steps=4)  # and a truncation every 4 steps
    col.sinks.append(agent.rollout_sink(storage))
    actions, ends = [], []
    for _ in range(150):
        tr = col.step(agent.rollout_action)
        actions.append(tr.act.copy())
        ends.append((bool(tr.term[0]), bool(tr.trunc[0] and not tr.term[0])))
    col.close()
    assert any(t for t, _ in ends) and any(c for _, c in ends)  # both kinds of episode end happened
    obs, rew, _ = _gymnasium_reference("InvertedPendulum-v5", actions, 0.97, 4)
    assert np.allclose(storage.obs[:, 0].numpy(), obs, rtol=1e-5, atol=1e-5)
    assert np.allclose(storage.rew[:, 0].numpy(), rew, rtol=1e-5, atol=1e-6)
    assert agent.obs_norm.count.item() == pytest.approx(1e-4 + 150 + 1 + sum(t or c for t, c in ends) - ends[-1][0] - ends[-1][1])


# ------------------------------------------------------------------------------------ presets, learn
def test_presets_fill_only_unset_fields():
    c = Config()
    c.resolve(None)
    assert (c.num_steps, c.lr, c.ent_coef, c.target_kl, c.kl_stop, c.mean_tanh, c.se_freq) == \
        (2048, 3e-4, 0.0, None, "epoch", False, 0)
    c = Config(preset="props-baseline", env="Hopper-v5")
    c.resolve(None)
    assert (c.num_steps, c.lr, c.ent_coef, c.target_kl, c.kl_stop, c.mean_tanh) == (2048, 1e-3, 0.01, 0.03, "minibatch", True)
    assert c.se_freq == (1_000_000 // 2048) // 30  # the PROPS script's sampling-error cadence; cleanrl: off
    c = Config(preset="props-baseline", env="HalfCheetah-v5", lr=5e-4, target_kl=0.0)
    c.resolve(None)
    assert (c.num_steps, c.lr, c.target_kl) == (1024, 5e-4, 0.0)  # given values win; 0 turns the KL stop off
    c = Config(preset="props-baseline", env="InvertedPendulum-v5")
    c.resolve(None)
    assert (c.num_steps, c.lr) == (2048, 1e-4)
    from offrl.cli import parse_config

    c = parse_config(Config, ["--preset", "props-baseline", "--env", "Walker2d-v5", "--num-steps", "512"])
    c.resolve(None)
    assert (c.num_steps, c.lr, c.ent_coef) == (512, 1e-3, 0.01)
    with pytest.raises(OffrlError, match="--total-steps 100 is less than one rollout"):
        c = Config(total_steps=100)
        c.resolve(None)
        c.validate()


def _filled_storage(agent: PPO, steps: int, envs: int = 2, seed: int = 0) -> tuple[RolloutStorage, Collector]:
    storage = RolloutStorage(steps, envs, agent.obs_dim, agent.act_dim)
    col = Collector("InvertedPendulum-v5", envs, seed=seed)
    col.sinks.append(agent.rollout_sink(storage))
    for _ in range(steps):
        col.step(agent.rollout_action)
    return storage, col


def _adam_steps(agent: PPO) -> int:
    return int(next(iter(agent.optimizers["ppo"].state.values()))["step"].item())


@pytest.mark.parametrize("kl_stop, steps", [("epoch", 4), ("minibatch", 1)])
def test_learn_metrics_schedule_and_kl_stops(kl_stop, steps):
    torch.manual_seed(0)
    cfg = Config(env="InvertedPendulum-v5", num_steps=32, num_envs=2, num_minibatches=4, update_epochs=3,
                 hidden=(8, 8), total_steps=256, target_kl=1e-12, kl_stop=kl_stop)
    agent = PPO(cfg, 4, 1)
    storage, col = _filled_storage(agent, 32)
    with torch.no_grad():  # θ before the update: the sampling error compares the rollout's actions with it
        mu = agent.actor.mean(storage.obs.flatten(0, 1)).numpy().astype(np.float64)
        std = np.exp(agent.actor.log_std.detach().numpy().astype(np.float64))
    m = agent.learn(storage, agent.state_value(col.obs))
    col.close()
    assert list(m) == ["learning_rate", "value_loss", "policy_loss", "entropy", "old_approx_kl", "approx_kl",
                       "clipfrac", "explained_variance", "sampling_error"]
    z = (storage.act.flatten(0, 1).numpy() - mu) / std
    zm, zs = z.mean(0), z.std(0)  # MLE Gaussian of the standardized actions vs N(0, 1)
    assert m["sampling_error"].item() == pytest.approx(float(np.sum(-np.log(zs) + (zs**2 + zm**2) / 2 - 0.5)), rel=1e-4)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and torch.isfinite(v) for v in m.values())
    # a tiny target KL: after the first epoch (epoch check), or before the second minibatch's step (PROPS)
    assert _adam_steps(agent) == steps
    # one action dim, log-std 0 at the start and moved by a few lr-sized steps: H = 0.5 + 0.5 log(2 pi)
    assert m["entropy"].item() == pytest.approx(0.5 + 0.5 * math.log(2 * math.pi), abs=2e-3)
    assert m["learning_rate"].item() == pytest.approx(3e-4) and agent.learns == 1
    storage2, col = _filled_storage(agent, 32, seed=1)
    m = agent.learn(storage2, agent.state_value(col.obs))
    col.close()
    assert m["learning_rate"].item() == pytest.approx(3e-4 * (1 - 1 / 4))  # K = 256 // 64 = 4 rollouts


def test_learn_without_target_kl_runs_every_minibatch():
    torch.manual_seed(0)
    agent = PPO(Config(env="InvertedPendulum-v5", num_steps=32, num_envs=2, num_minibatches=4, update_epochs=3,
                       hidden=(8, 8), total_steps=256, ent_coef=0.01), 4, 1)
    storage, col = _filled_storage(agent, 32)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    m = agent.learn(storage, agent.state_value(col.obs))
    col.close()
    assert _adam_steps(agent) == 12 and torch.isfinite(m["explained_variance"])
    # learning changes weights only: the normalizers are rollout state
    after = agent.state_dict()
    for k in ("obs_norm.mean", "obs_norm.var", "obs_norm.count", "reward_norm.ret", "reward_norm.rms.var"):
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["actor.log_std"], after["actor.log_std"])


# ------------------------------------------------------------------------------------ save/load, resume
def test_normalization_statistics_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    agent = PPO(Config(env="InvertedPendulum-v5", num_steps=40, num_envs=2, num_minibatches=2, update_epochs=1,
                       hidden=(8, 8), total_steps=80), 4, 1)
    storage, col = _filled_storage(agent, 40)
    agent.learn(storage, agent.state_value(col.obs))
    col.close()
    assert agent.obs_norm.count.item() > 80 and agent.reward_norm.rms.count.item() == pytest.approx(80 + 1e-4)
    obs = np.random.default_rng(0).standard_normal((6, 4)) * 0.3
    agent.save(str(tmp_path / "ckpt.pt"))
    agent.save_policy(str(tmp_path / "policy.pt"))
    for path in ("ckpt.pt", "policy.pt"):
        loaded = PPO.load(str(tmp_path / path), device="cpu")
        assert np.array_equal(loaded.act(obs), agent.act(obs)), path
        assert torch.equal(loaded.obs_norm.var, agent.obs_norm.var)
    loaded = PPO.load(str(tmp_path / "ckpt.pt"), device="cpu")
    assert torch.equal(loaded.reward_norm.ret, agent.reward_norm.ret) and loaded.learns == 1
    assert torch.equal(loaded.generator.get_state(), agent.generator.get_state())
    # acting leaves the statistics alone
    count = agent.obs_norm.count.clone()
    agent.act(obs)
    agent.explore(obs)
    agent.state_value(obs)
    assert torch.equal(agent.obs_norm.count, count)


def test_sigterm_mid_rollout_resumes_exactly(tmp_path, monkeypatch):
    ppo.train(Config(run_dir=str(tmp_path / "full"), **TINY))
    calls = {"n": 0}
    original = PPO.rollout_action

    def rollout_action(self, obs):
        calls["n"] += 1
        if calls["n"] == 150:  # env step 300 of 512: the third rollout (256-384), 22 of its 64 steps stored
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, obs)

    monkeypatch.setattr(PPO, "rollout_action", rollout_action)
    with pytest.raises(TrainingInterrupted) as e:
        ppo.train(Config(run_dir=str(tmp_path / "cut"), **TINY))
    assert e.value.step == 300
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert cut["train"]["parts"]["phase"]["storage"]["ptr"] == 22 and cut["rollout_state"]["learns"] == 2
    monkeypatch.setattr(PPO, "rollout_action", original)
    ppo.train(Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 512
    assert a["agent"].keys() == b["agent"].keys()
    for k, v in a["agent"].items():
        assert torch.equal(v, b["agent"][k]), k
    assert torch.equal(a["rollout_state"]["minibatch_rng"], b["rollout_state"]["minibatch_rng"])
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")


# ------------------------------------------------------------------------------------ script, registry
def test_script_help_and_cli_run(tmp_path, capsys):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "algos", "ppo.py"), "--help"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0 and "--preset" in out.stdout and "--target-kl" in out.stdout and "--num-minibatches" in out.stdout
    run_dir = tmp_path / "cli"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "algos", "ppo.py"), "--env", "InvertedPendulum-v5",
                          "--total-steps", "512", "--num-steps", "128", "--num-minibatches", "4", "--update-epochs", "2",
                          "--eval-every", "256", "--eval-episodes", "2", "--log-every", "128", "--threads", "1",
                          "--progress", "False", "--run-dir", str(run_dir)],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["algo"] == "ppo" and summary["steps"] == 512 and summary["updates"] == 4
    assert summary["final_return"] is not None
    rows = _rows(run_dir)
    assert [r["step"] for r in rows if "train/approx_kl" in r] == [128, 256, 384, 512]
    assert any("rollout/episode_return" in r for r in rows)
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert (config["lr"], config["num_steps"], config["kl_stop"]) == (3e-4, 128, "epoch")  # resolved
    from offrl.cli import main

    assert main(["eval", str(run_dir / "checkpoint.pt"), "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["env_id"] == "InvertedPendulum-v5"


def test_registry_entry_and_bench():
    from offrl import registry
    from offrl.bench import bench_algorithms, bench_update

    entry = registry.get("ppo")
    assert entry.kind == "on-policy" and entry.benchmark is False and entry.agent is PPO
    assert "ppo" not in bench_algorithms()
    with pytest.raises(OffrlError, match="cannot be benchmarked"):
        bench_update("ppo", steps=1)


def test_bench_loop_cli_times_the_whole_ppo_loop(capsys):
    from offrl.cli import main

    assert main(["bench", "loop", "--algo", "ppo", "--env", "InvertedPendulum-v5", "--steps", "96", "--log-every", "32",
                 "--", "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "1"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["algo"] == "ppo" and res["env"] == "InvertedPendulum-v5" and res["steps"] == 96
    assert res["timed_steps"] == 64  # the marks after the first and the last logging interval
    assert res["env_steps_per_s"] > 0 and res["cpu_steps_per_s"] > 0
    assert res["flags"] == ["--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "1"]
    from offrl.bench import bench_loop

    with pytest.raises(OffrlError, match="iql is offline"):
        bench_loop("iql")
    with pytest.raises(OffrlError, match="at least 3"):
        bench_loop("ppo", steps=100, log_every=64)


# ------------------------------------------------------------------------------------ learning
def _learn(tmp_path, seed=0):
    # measured (2-core CPU, 1 thread): 40960 steps ~45 s; final eval 1000 / 1000 / 1000 for seeds 0-2; random ~5
    return ppo.train(Config(env="InvertedPendulum-v5", total_steps=40960, seed=seed, eval_every=0, eval_episodes=5,
                            threads=1, progress=False, run_dir=str(tmp_path / "learn")))


def test_ppo_learns_inverted_pendulum(tmp_path):
    """A uniform-random policy keeps the pole up for ~5 steps; PPO balances it for most of the 1000."""
    summary = _learn(tmp_path)
    assert summary["final_return"] >= 500, summary


@pytest.mark.slow
def test_flipped_advantage_sign_fails(tmp_path, monkeypatch):
    """The contrast that makes the learning test meaningful: ascending −A instead of A (a sign bug) fails it."""
    original = ppo.ppo_losses
    monkeypatch.setattr(ppo, "ppo_losses", lambda new_logp, old_logp, adv, *a, **k: original(new_logp, old_logp, -adv, *a, **k))
    summary = _learn(tmp_path)
    assert summary["final_return"] < 50, summary


def test_cpu_fast_path_of_the_normalizers_equals_the_torch_path():
    # on the CPU the running statistics run in numpy on views of the buffers; elsewhere in torch
    from offrl.algos.ppo import ObsNormalizer, RewardNormalizer

    rng = np.random.default_rng(0)
    fast, ref = ObsNormalizer(3), ObsNormalizer(3)
    rfast, rref = RewardNormalizer(1, 0.99), RewardNormalizer(1, 0.99)
    for t in range(300):
        x = torch.as_tensor(rng.normal(5.0, 3.0, (1, 3)))
        mask = torch.tensor([t % 7 != 0])
        fast.update(x, mask)
        ref._update_torch(x, mask)
        fast.update(x)
        ref._update_torch(x, None)
        rew, term = torch.as_tensor(rng.normal(size=1)), torch.tensor([t % 50 == 49])
        a, b = rfast(rew, term), rref._forward_torch(rew, term)
        assert torch.equal(a, b) and a.dtype == b.dtype == torch.float64
    # one-row updates: bit-identical statistics and normalized observations
    for name in ("mean", "var", "count"):
        assert torch.equal(getattr(fast, name), getattr(ref, name))
        assert torch.equal(getattr(rfast.rms, name), getattr(rref.rms, name))
    x = torch.as_tensor(rng.normal(5.0, 30.0, (500, 3)))
    with torch.no_grad():
        assert torch.equal(fast(x), ref._forward_torch(x))
    # batches: equal up to the summation order of the batch mean
    big = torch.as_tensor(rng.normal(size=(8, 3)))
    fast.update(big)
    ref._update_torch(big, None)
    assert torch.allclose(fast.mean, ref.mean, rtol=1e-12) and torch.allclose(fast.var, ref.var, rtol=1e-12)
    empty = torch.zeros(8, dtype=torch.bool)
    before = fast.mean.clone(), fast.count.clone()
    fast.update(big, empty)
    assert torch.equal(fast.mean, before[0]) and torch.equal(fast.count, before[1])
