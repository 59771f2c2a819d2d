"""The collector's two env backends (Gymnasium's SyncVectorEnv and the batched MuJoCo stepper) give the
same transitions, episode statistics, random actions and checkpoints for the same seed; a collector
resumes exactly on either backend, also from a checkpoint of the other one; PPO trains identically."""

from __future__ import annotations

import io
import os
import signal

import numpy as np
import pytest
import torch
from test_signals import _rows, default_handlers  # noqa: F401  (autouse: default signal handlers)

from offrl.collector import Collector, ReplaySink, resolve_backend
from offrl.errors import OffrlError, TrainingInterrupted

FIELDS = ("obs", "act", "rew", "next_obs", "term", "trunc")


def _actions(rng, n, act_dim, t):
    """Mostly random actions, some outside [-1, 1] (MuJoCo clamps the controls, the cost sees them)."""
    return (rng.uniform(-1.3, 1.3, size=(n, act_dim))).astype(np.float32)


def _same_transition(ta, tb):
    for k in FIELDS:
        x, y = getattr(ta, k), getattr(tb, k)
        assert x.dtype == y.dtype and x.shape == y.shape, k
        np.testing.assert_array_equal(x, y, err_msg=k)


def _roundtrip(state):
    """Through torch.save / torch.load(weights_only=True), as a checkpoint."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("env_id,steps", [("Hopper-v5", 300), ("Walker2d-v5", 300), ("HalfCheetah-v5", 200)])
def test_backends_give_identical_transitions(env_id, steps):
    """Several episodes per copy with terminations (Hopper, Walker2d) and time-limit truncations
    (a 20-step limit): every field, the collector's observations, random actions, the physics and
    the finished-episode statistics are equal."""
    a = Collector(env_id, 3, seed=11, backend="gymnasium", max_episode_steps=20)
    b = Collector(env_id, 3, seed=11, backend="batched", max_episode_steps=20)
    assert (a.backend, b.backend) == ("gymnasium", "batched")
    np.testing.assert_array_equal(a.obs, b.obs)
    rng = np.random.default_rng(0)
    act_dim = a.action_space.shape[1]
    ends = {"term": 0, "trunc": 0}
    for t in range(steps):
        if t % 4 == 0:  # the collectors' own uniform actions (OnlinePhase's warm-up)
            act = a.random_actions()
            np.testing.assert_array_equal(act, b.random_actions())
        else:
            act = _actions(rng, 3, act_dim, t)
        ta, tb = a.step(lambda o: (act, {})), b.step(lambda o: (act, {}))
        _same_transition(ta, tb)
        np.testing.assert_array_equal(a.obs, b.obs)
        for x, y in zip(a.physics(), b.physics()):
            np.testing.assert_array_equal(x, y)
        ends["term"] += int(ta.term.sum())
        ends["trunc"] += int((ta.trunc & ~ta.term).sum())
        if t % 50 == 49:
            assert a.pop_finished() == b.pop_finished()
    assert a.pop_finished() == b.pop_finished()
    assert ends["trunc"] >= 10
    if env_id != "HalfCheetah-v5":
        assert ends["term"] >= 10
    a.close(), b.close()


def test_backends_feed_sinks_the_same_rows():
    """A ReplaySink fed by each backend holds the same rows (done = termination only)."""
    from offrl.buffer import ReplayBuffer

    bufs = [ReplayBuffer(11, 3, 500, "cpu", seed=0) for _ in range(2)]
    cols = [Collector("Hopper-v5", 2, seed=3, sinks=[ReplaySink(buf)], backend=k, max_episode_steps=30)
            for buf, k in zip(bufs, ("gymnasium", "batched"))]
    rng = np.random.default_rng(1)
    for t in range(200):
        act = _actions(rng, 2, 3, t)
        for c in cols:
            c.step(lambda o: (act, {}))
    assert len(bufs[0]) == len(bufs[1]) == 400
    assert torch.equal(bufs[0].data[:400], bufs[1].data[:400])


@pytest.mark.parametrize("first,second", [("batched", "batched"), ("gymnasium", "batched"), ("batched", "gymnasium")])
def test_state_dict_resumes_exactly(first, second):
    """Collect K steps, save, load into a new collector (of the same or the other backend), go on:
    the same as not stopping, including episode counters, time-limit counters (a 25-step limit
    crossed after the resume), the RNGs of resets and random actions, and pending episode stats."""
    rng = np.random.default_rng(2)
    acts = [_actions(rng, 3, 3, t) for t in range(160)]
    ref = Collector("Hopper-v5", 3, seed=4, backend=first, max_episode_steps=25)
    trs = [ref.step(lambda o, a=a: (a, {})) for a in acts[:67]]
    state = _roundtrip(ref.state_dict())
    rest = [ref.step(lambda o, a=a: (a, {})) for a in acts[67:]]
    rand_ref = ref.random_actions()
    stats_ref = ref.pop_finished()

    new = Collector("Hopper-v5", 3, seed=999, backend=second, max_episode_steps=25)  # another seed: all state is loaded
    new.load_state_dict(state)
    assert new.backend == second and trs
    for a, tr in zip(acts[67:], rest):
        _same_transition(tr, new.step(lambda o, a=a: (a, {})))
    np.testing.assert_array_equal(rand_ref, new.random_actions())
    assert stats_ref == new.pop_finished() and stats_ref["episodes"] >= 6


def test_state_dict_rejects_another_number_of_copies():
    state = Collector("Hopper-v5", 2, seed=0, backend="batched").state_dict()
    for backend in ("batched", "gymnasium"):
        with pytest.raises(OffrlError, match="copies"):
            Collector("Hopper-v5", 3, seed=0, backend=backend).load_state_dict(state)


def test_backend_choice():
    assert resolve_backend("Hopper-v5", 1) == "batched"  # auto: the batched stepper wherever it applies
    assert resolve_backend("Walker2d-v5", 8, max_episode_steps=50) == "batched"
    assert resolve_backend("HalfCheetah-v5", 4, backend="gymnasium") == "gymnasium"
    assert resolve_backend("InvertedPendulum-v5", 4) == "gymnasium"  # other envs: Gymnasium
    assert resolve_backend("Hopper-v5", 1, wrap=lambda e: e) == "gymnasium"  # a per-copy wrapper (--record)
    assert resolve_backend("Hopper-v5", 1, exclude_current_positions_from_observation=False) == "gymnasium"
    with pytest.raises(OffrlError, match="supports"):
        resolve_backend("InvertedPendulum-v5", 1, backend="batched")
    with pytest.raises(OffrlError, match="wrapper"):
        resolve_backend("Hopper-v5", 1, backend="batched", wrap=lambda e: e)
    with pytest.raises(OffrlError, match="must be one of"):
        resolve_backend("Hopper-v5", 1, backend="mjx")
    assert Collector("Hopper-v5", 1, seed=0).backend == "batched"
    assert Collector("InvertedPendulum-v5", 1, seed=0).backend == "gymnasium"


def test_config_flag():
    from offrl.online import OnlineConfig

    OnlineConfig(env_backend="gymnasium").validate()
    with pytest.raises(OffrlError, match="env-backend"):
        OnlineConfig(env_backend="fast").validate()
    with pytest.raises(OffrlError, match="--record"):
        OnlineConfig(record=True, env_backend="batched").validate()


# ------------------------------------------------------------------------------------ whole runs
TINY = dict(env="Hopper-v5", num_steps=64, num_envs=2, num_minibatches=4, update_epochs=2, hidden=(16, 16),
            total_steps=384, eval_every=0, eval_episodes=1, log_every=64, checkpoint_every=10_000, progress=False,
            threads=1)


def _weights(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["agent"]


def test_ppo_runs_identically_on_both_backends_and_resumes_across_them(tmp_path, monkeypatch):
    """PPO on Hopper (terminations every few dozen steps): the gymnasium and batched runs have the
    same weights and metrics rows; a batched run stopped by SIGTERM mid-rollout and resumed with
    --env-backend gymnasium ends identical too."""
    from offrl.algos import ppo
    from offrl.algos.ppo import PPO, Config

    used, init = [], Collector.__init__

    def record_backend(self, *args, **kwargs):
        init(self, *args, **kwargs)
        used.append(self.backend)

    monkeypatch.setattr(Collector, "__init__", record_backend)
    ppo.train(Config(run_dir=str(tmp_path / "gym"), env_backend="gymnasium", **TINY))
    ppo.train(Config(run_dir=str(tmp_path / "batched"), **TINY))  # auto: batched for Hopper
    a, b = _weights(tmp_path / "gym"), _weights(tmp_path / "batched")
    assert a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())
    rows = _rows(tmp_path / "gym")
    assert rows == _rows(tmp_path / "batched")
    assert sum(r.get("rollout/episodes", 0) for r in rows) >= 5

    calls = {"n": 0}
    original = PPO.rollout_action

    def rollout_action(self, obs):
        calls["n"] += 1
        if calls["n"] == 100:  # env step 200 of 384, inside the fourth rollout
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, obs)

    monkeypatch.setattr(PPO, "rollout_action", rollout_action)
    with pytest.raises(TrainingInterrupted):
        ppo.train(Config(run_dir=str(tmp_path / "cut"), env_backend="batched", **TINY))
    monkeypatch.setattr(PPO, "rollout_action", original)
    ppo.train(Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), env_backend="gymnasium", progress=False,
                     threads=1))
    assert used == ["gymnasium", "batched", "batched", "gymnasium"]
    c = _weights(tmp_path / "cut")
    assert all(torch.equal(v, c[k]) for k, v in a.items())
    assert _rows(tmp_path / "cut") == rows
