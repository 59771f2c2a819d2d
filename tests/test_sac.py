"""SAC: losses against hand computation, the collector's truncation handling, exact resume, learning."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from offrl.algos import sac
from offrl.algos.sac import SAC, Config
from offrl.buffer import Batch, ReplayBuffer
from offrl.data.builtin import GAINS
from offrl.collector import Collector, ReplaySink


def _agent(**kw) -> SAC:
    torch.manual_seed(0)
    return SAC(Config(hidden=(8, 8), **kw), obs_dim=3, act_dim=2)


def _batch(n=16, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 3, generator=g), torch.rand(n, 2, generator=g) * 2 - 1, torch.randn(n, generator=g),
                 torch.randn(n, 3, generator=g), (torch.rand(n, generator=g) < 0.3).float())


def test_losses_match_hand_computation():
    agent = _agent(init_alpha=0.5)
    before = copy.deepcopy(agent)
    b = _batch()
    torch.manual_seed(123)
    m = agent.update(b)
    torch.manual_seed(123)  # the same noise, in the same order: next actions, then current actions
    alpha = 0.5
    with torch.no_grad():
        na, nlogp = before.actor.sample(b.next_obs)
        y = b.rew + 0.99 * (1 - b.done) * (before.critic_target(b.next_obs, na).min(0).values - alpha * nlogp)
        q = before.critic(b.obs, b.act)
        critic_loss = ((q[0] - y) ** 2 + (q[1] - y) ** 2).mean()
        a, logp = before.actor.sample(b.obs)
        # the actor is scored by the critic *after* its step this update
        actor_loss = (alpha * logp - agent.critic(b.obs, a).min(0).values).mean()
        alpha_loss = -(np.log(0.5) * (logp + (-2.0))).mean()
    assert m["critic_loss"].item() == pytest.approx(critic_loss.item(), rel=1e-5)
    assert m["actor_loss"].item() == pytest.approx(actor_loss.item(), rel=1e-5)
    assert m["alpha_loss"].item() == pytest.approx(alpha_loss.item(), rel=1e-5)
    assert m["alpha"].item() == pytest.approx(0.5)
    # alpha moves against the entropy gap: entropy above the target (-|A|) lowers alpha
    if m["entropy"].item() > -2.0:
        assert agent.log_alpha.item() < np.log(0.5)


def test_target_entropy_default_and_fixed_alpha():
    agent = _agent(autotune=False)
    assert agent.target_entropy == -2.0
    agent.update(_batch())
    assert agent.log_alpha.item() == pytest.approx(0.0)


def test_collector_truncation_is_not_termination():
    buf = ReplayBuffer(4, 1, 100)
    col = Collector("InvertedPendulum-v5", 1, seed=0, sinks=[ReplaySink(buf)], max_episode_steps=5)
    first_obs = [col.obs[0].copy()]
    for _ in range(12):
        col.step(lambda obs: (np.clip(obs @ GAINS, -1, 1)[:, None].astype(np.float32), {}))
        first_obs.append(col.obs[0].copy())
    col.close()
    b = buf.batch(torch.arange(12))
    assert b.done.sum().item() == 0  # the controller never falls; the time limit is not a termination
    # inside an episode next_obs is the following obs; at the limit it is the true final obs, not the reset obs
    assert torch.allclose(b.next_obs[3], b.obs[4])
    assert not torch.allclose(b.next_obs[4], b.obs[5])
    stats = col.pop_finished()
    assert stats["episodes"] == 2 and stats["episode_length"] == 5


TINY = dict(env="InvertedPendulum-v5", hidden=(32, 32), batch_size=32, eval_episodes=2, log_every=50,
            progress=False, threads=1, learning_starts=100, buffer_size=1000)


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "eval/seconds"} for r in rows]


def test_exact_resume_with_buffer_and_env_state(tmp_path, monkeypatch):
    kw = dict(total_steps=400, eval_every=200, checkpoint_every=250, **TINY)
    sac.train(Config(run_dir=str(tmp_path / "full"), **kw))

    from offrl import logger as logger_mod

    calls = {"n": 0}
    original = logger_mod.MetricAccumulator.add

    def add_then_die(self, metrics):
        calls["n"] += 1
        if calls["n"] > 200:  # after the step-250 checkpoint (150 updates), mid-episode
            raise KeyboardInterrupt
        original(self, metrics)

    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        sac.train(Config(run_dir=str(tmp_path / "cut"), **kw))
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    sac.train(Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))

    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["train"]["step"] == b["train"]["step"] == 400
    for k, v in a["agent"].items():
        assert torch.equal(v, b["agent"][k]), k
    assert torch.equal(a["train"]["parts"]["buffer"]["data"], b["train"]["parts"]["buffer"]["data"])
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")


def test_sac_learns_inverted_pendulum(tmp_path):
    """Random actions keep the pole up for ~5 steps; SAC must learn to balance far longer."""
    summary = sac.train(Config(env="InvertedPendulum-v5", total_steps=3000, learning_starts=500, hidden=(64, 64),
                               eval_every=3000, eval_episodes=5, progress=False, run_dir=str(tmp_path / "learn")))
    assert summary["final_return"] >= 50, summary


def test_script_help_and_cli_run(tmp_path, capsys):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "algos", "sac.py"), "--help"], capture_output=True,
                         text=True, cwd=root)
    assert out.returncode == 0 and "--learning-starts" in out.stdout and "--total-steps" in out.stdout
    from offrl.cli import main

    run_dir = tmp_path / "cli"
    assert main(["train", "sac", "--env", "InvertedPendulum-v5", "--total-steps", "60", "--learning-starts", "30",
                 "--hidden", "16", "16", "--batch-size", "16", "--eval-every", "0", "--eval-episodes", "1",
                 "--log-every", "20", "--progress", "False", "--run-dir", str(run_dir)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 60 and summary["updates"] == 30
    assert (run_dir / "checkpoint.pt").exists() and list(run_dir.glob("events.out.tfevents*"))
    agent = SAC.load(str(run_dir / "checkpoint.pt"), device="cpu")
    assert agent.act(np.zeros(4)).shape == (1,)
    # offrl eval reads the env id from the checkpoint
    assert main(["eval", str(run_dir / "checkpoint.pt"), "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["env_id"] == "InvertedPendulum-v5"
    with pytest.raises(SystemExit) as e:
        main(["train", "sac", "--total-steps", "0"])
    assert e.value.code == 2


def test_record_and_snapshots_do_not_change_training(tmp_path):
    """--record / --snapshots only observe: the same seed gives bit-identical weights and buffer."""
    from offrl.algos import sac

    base = ["--env", "Hopper-v5", "--total-steps", "1100", "--learning-starts", "1000", "--hidden", "16", "16",
            "--batch-size", "16", "--eval-every", "550", "--eval-episodes", "1", "--threads", "1", "--progress", "False"]
    plain = sac.main([*base, "--run-dir", str(tmp_path / "plain")])
    rec = sac.main([*base, "--record", "--snapshots", "--run-dir", str(tmp_path / "rec")])
    a = torch.load(plain["checkpoint"], weights_only=True)
    b = torch.load(rec["checkpoint"], weights_only=True)
    for k in a["agent"]:
        assert torch.equal(a["agent"][k], b["agent"][k]), k
    assert torch.equal(a["train"]["parts"]["buffer"]["data"], b["train"]["parts"]["buffer"]["data"])
    assert "record" in b["train"]["parts"] and len(b["train"]["parts"]["record"]["logp"]) == 1100
    assert sorted(p.name for p in (tmp_path / "rec" / "snapshots").iterdir()) == \
        ["step00000000.pt", "step00000550.pt", "step00001100.pt"]
