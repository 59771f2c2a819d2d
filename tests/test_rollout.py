"""RolloutStorage: GAE against a hand-written CleanRL-style loop, minibatches, checkpoints, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offrl.errors import OffrlError
from offrl.rollout import RolloutStorage

T, N, OBS, ACT = 6, 2, 3, 2
GAMMA, LAM = 0.9, 0.8

# a tiny trajectory: env 0 terminates at step 2, env 1 is truncated (time limit) at step 3
REW = [[1.0, 0.5], [0.0, -1.0], [2.0, 0.25], [-0.5, 1.5], [1.0, 0.0], [0.75, 2.0]]
VALUE = [[0.3, -0.2], [0.1, 0.4], [0.7, 0.0], [-0.4, 0.9], [0.2, 0.6], [0.5, -0.3]]
TERM = [[0, 0], [0, 0], [1, 0], [0, 0], [0, 0], [0, 0]]
TRUNC = [[0, 0], [0, 0], [0, 0], [0, 1], [0, 0], [0, 0]]
FINAL_VALUE = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 5.0], [0.0, 0.0], [0.0, 0.0]]
LAST_VALUE = [0.35, -0.15]


def reference_gae(bootstrap: bool) -> tuple[list[list[float]], list[list[float]]]:
    """CleanRL's loop, verbatim in plain floats: dones[t] is the done flag *returned with obs t*, so
    the flag of the step taken at t sits at dones[t+1]; a truncation bootstrap is folded into the
    reward (r_t + gamma * V(final obs)), the usual gymnasium recipe."""
    dones = [[0.0] * N] + [[float(TERM[t][n] or TRUNC[t][n]) for n in range(N)] for t in range(T - 1)]
    next_done = [float(TERM[T - 1][n] or TRUNC[T - 1][n]) for n in range(N)]
    rewards = [[REW[t][n] + (GAMMA * FINAL_VALUE[t][n] if bootstrap and TRUNC[t][n] and not TERM[t][n] else 0.0)
                for n in range(N)] for t in range(T)]
    adv = [[0.0] * N for _ in range(T)]
    for n in range(N):
        lastgaelam = 0.0
        for t in reversed(range(T)):
            if t == T - 1:
                nextnonterminal, nextvalues = 1.0 - next_done[n], LAST_VALUE[n]
            else:
                nextnonterminal, nextvalues = 1.0 - dones[t + 1][n], VALUE[t + 1][n]
            delta = rewards[t][n] + GAMMA * nextvalues * nextnonterminal - VALUE[t][n]
            lastgaelam = delta + GAMMA * LAM * nextnonterminal * lastgaelam
            adv[t][n] = lastgaelam
    ret = [[adv[t][n] + VALUE[t][n] for n in range(N)] for t in range(T)]
    return adv, ret


def ids(t: int) -> np.ndarray:
    return np.array([t * N + n for n in range(N)], dtype=np.float32)  # unique sample id of (t, n)


def filled(extras=None, steps: int = T, **kw) -> RolloutStorage:
    """Storage holding the tiny trajectory; obs[..., 0], act[..., 0], logp and the extras carry sample ids."""
    s = RolloutStorage(T, N, OBS, ACT, extras=extras, **kw)
    for t in range(steps):
        i = ids(t)
        ex = {k: (i if w == 0 else np.stack([i, i + 100, i + 200], 1)) for k, w in (extras or {}).items()}
        s.add(np.stack([i, -i, i * 2], 1), np.stack([i, i + 0.5], 1), -i, np.array(VALUE[t]), np.array(REW[t]),
              np.array(TERM[t], dtype=bool), np.array(TRUNC[t], dtype=bool), np.array(FINAL_VALUE[t]), **ex)
    return s


@pytest.mark.parametrize("bootstrap", [False, True])
def test_gae_matches_hand_loop(bootstrap):
    s = filled()
    s.compute_returns(np.array(LAST_VALUE), GAMMA, LAM, bootstrap_truncation=bootstrap)
    adv, ret = reference_gae(bootstrap)
    torch.testing.assert_close(s.adv, torch.tensor(adv), rtol=0, atol=1e-5)
    torch.testing.assert_close(s.ret, torch.tensor(ret), rtol=0, atol=1e-5)
    torch.testing.assert_close(s.ret, s.adv + s.value)


def test_gae_hand_values_at_the_episode_ends():
    s = filled()
    s.compute_returns(torch.tensor(LAST_VALUE), GAMMA, LAM)
    # termination: A = r - V, no bootstrap and no carry from the next episode
    assert s.adv[2, 0].item() == pytest.approx(2.0 - 0.7)
    # truncation without bootstrap: same as a termination (CleanRL)
    assert s.adv[3, 1].item() == pytest.approx(1.5 - 0.9)
    # last step: bootstraps last_value; step 4 -> 5 is a plain one-step chain
    a5 = 2.0 + GAMMA * -0.15 - -0.3
    assert s.adv[5, 1].item() == pytest.approx(a5)
    assert s.adv[4, 1].item() == pytest.approx(0.0 + GAMMA * -0.3 - 0.6 + GAMMA * LAM * a5)


def test_bootstrap_truncation_uses_final_value_only_in_the_truncated_episode():
    off, on = filled(), filled()
    off.compute_returns(LAST_VALUE, GAMMA, LAM, bootstrap_truncation=False)
    on.compute_returns(LAST_VALUE, GAMMA, LAM, bootstrap_truncation=True)
    assert on.adv[3, 1].item() == pytest.approx(1.5 + GAMMA * 5.0 - 0.9)
    diff = (on.adv - off.adv).abs() > 1e-6
    expected = torch.zeros(T, N, dtype=torch.bool)
    expected[:4, 1] = True  # env 1, steps 0..3 (the truncated episode); env 0 and env 1's next episode unchanged
    assert torch.equal(diff, expected)


def test_final_value_ignored_where_not_a_pure_truncation():
    s = RolloutStorage(2, 3, 1, 1)
    for _ in range(2):  # env 0: nothing ended; env 1: term & trunc together; env 2: terminated
        s.add(np.zeros((3, 1)), np.zeros((3, 1)), np.zeros(3), np.zeros(3), np.ones(3),
              [False, True, True], [False, True, False], final_value=np.full(3, 7.0))
    assert torch.equal(s.final_value, torch.zeros(2, 3))
    s.compute_returns(np.zeros(3), 0.99, 0.95, bootstrap_truncation=True)
    torch.testing.assert_close(s.adv[1], torch.ones(3))


@pytest.mark.parametrize("num_minibatches,sizes", [(4, [3, 3, 3, 3]), (1, [12]), (12, [1] * 12),
                                                   (5, [2] * 6), (7, [1] * 12)])
def test_minibatches_cover_every_sample_once_with_cleanrl_sizes(num_minibatches, sizes):
    s = filled(extras={"mask": 0, "h": 3})
    s.compute_returns(LAST_VALUE, GAMMA, LAM)
    flat_adv, flat_value = s.adv.reshape(-1), s.value.reshape(-1)
    batches = list(s.minibatches(num_minibatches, torch.Generator().manual_seed(0)))
    assert [len(b.obs) for b in batches] == sizes
    seen = torch.cat([b.obs[:, 0] for b in batches]).long()
    assert sorted(seen.tolist()) == list(range(T * N))
    for b in batches:  # every column of a minibatch refers to the same samples
        i = b.obs[:, 0].long()
        torch.testing.assert_close(b.act[:, 0], i.float())
        torch.testing.assert_close(b.logp, -i.float())
        torch.testing.assert_close(b.adv, flat_adv[i])
        torch.testing.assert_close(b.value, flat_value[i])
        torch.testing.assert_close(b.ret, b.adv + b.value)
        torch.testing.assert_close(b.mask, i.float())
        torch.testing.assert_close(b.h, torch.stack([i, i + 100, i + 200], 1).float())


def test_minibatches_seeded_order():
    s = filled()
    s.compute_returns(LAST_VALUE, GAMMA, LAM)

    def order(seed=None, gen=None):
        gen = gen if gen is not None else torch.Generator().manual_seed(seed)
        return torch.cat([b.obs[:, 0] for b in s.minibatches(3, gen)]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    g = torch.Generator().manual_seed(1)
    assert order(gen=g) != order(gen=g)  # a fresh permutation per call


def test_minibatches_need_returns_and_a_valid_count():
    s = filled()
    with pytest.raises(OffrlError, match="compute_returns"):
        next(s.minibatches(2))
    s.compute_returns(LAST_VALUE, GAMMA, LAM)
    for bad in (0, T * N + 1):
        with pytest.raises(OffrlError, match="num_minibatches"):
            next(s.minibatches(bad))


def test_state_dict_round_trip_and_continue():
    extras = {"mask": 0, "h": 3}
    s = filled(extras=extras, steps=3)
    state = s.state_dict()
    assert state["ptr"] == 3
    assert all(v.device.type == "cpu" for v in state["columns"].values())
    fresh = RolloutStorage(T, N, OBS, ACT, extras=extras)
    fresh.load_state_dict(state)
    assert fresh.ptr == 3 and not fresh.full
    for k in ("obs", "act", "logp", "value", "rew", "term", "trunc", "final_value", "adv", "ret", "mask", "h"):
        assert torch.equal(getattr(fresh, k), getattr(s, k)), k
        assert getattr(fresh, k).dtype == getattr(s, k).dtype, k
    s.obs.add_(1.0)  # the state is a copy, not a view of the live storage
    assert not torch.equal(state["columns"]["obs"], s.obs)
    # add after load continues at step 3 and ends with the same data as an uninterrupted rollout
    for t in range(3, T):
        i = ids(t)
        fresh.add(np.stack([i, -i, i * 2], 1), np.stack([i, i + 0.5], 1), -i, VALUE[t], REW[t], TERM[t], TRUNC[t],
                  FINAL_VALUE[t], mask=i, h=np.stack([i, i + 100, i + 200], 1))
    whole = filled(extras=extras)
    assert fresh.full
    for k in ("obs", "act", "logp", "value", "rew", "term", "trunc", "final_value", "mask", "h"):
        assert torch.equal(getattr(fresh, k), getattr(whole, k)), k


def test_state_dict_after_returns_and_geometry_mismatch():
    s = filled()
    s.compute_returns(LAST_VALUE, GAMMA, LAM)
    fresh = RolloutStorage(T, N, OBS, ACT)
    fresh.load_state_dict(s.state_dict())
    assert torch.equal(fresh.adv, s.adv) and torch.equal(fresh.ret, s.ret)
    assert len(list(fresh.minibatches(2))) == 2
    with pytest.raises(OffrlError, match="geometry"):
        RolloutStorage(T, N + 1, OBS, ACT).load_state_dict(s.state_dict())
    with pytest.raises(OffrlError, match="geometry"):
        RolloutStorage(T, N, OBS, ACT, extras={"mask": 0}).load_state_dict(s.state_dict())


def test_add_rejects_wrong_shapes():
    s = RolloutStorage(T, N, OBS, ACT, extras={"h": 3})
    good = dict(obs=np.zeros((N, OBS)), act=np.zeros((N, ACT)), logp=np.zeros(N), value=np.zeros(N),
                rew=np.zeros(N), term=np.zeros(N, bool), trunc=np.zeros(N, bool), final_value=np.zeros(N),
                h=np.zeros((N, 3)))
    bad = {"obs": np.zeros((N, OBS + 1)), "act": np.zeros(N), "logp": np.zeros((N, 1)), "value": np.zeros((N, 1)),
           "rew": np.zeros(N + 1), "term": np.zeros((1, N), bool), "trunc": np.zeros(N - 1, bool),
           "final_value": np.zeros((N, 2)), "h": np.zeros(N)}
    for name, value in bad.items():
        with pytest.raises(OffrlError, match=name):
            s.add(**{**good, name: value})
    with pytest.raises(OffrlError, match="extras"):
        s.add(**{k: v for k, v in good.items() if k != "h"})
    with pytest.raises(OffrlError, match="extras"):
        s.add(**good, other=np.zeros(N))
    assert s.ptr == 0  # nothing was written by a rejected add
    with pytest.raises(OffrlError, match="last_value"):
        for _ in range(T):
            s.add(**good)
        s.compute_returns(np.zeros(N + 1), GAMMA, LAM)


def test_full_storage_and_reset():
    s = filled()
    assert s.full
    with pytest.raises(OffrlError, match="full"):
        s.add(np.zeros((N, OBS)), np.zeros((N, ACT)), np.zeros(N), np.zeros(N), np.zeros(N), [0, 0], [0, 0])
    s.reset()
    assert s.ptr == 0 and not s.full
    with pytest.raises(OffrlError, match="full rollout"):
        s.compute_returns(LAST_VALUE, GAMMA, LAM)
    s.add(torch.ones(N, OBS), torch.ones(N, ACT), torch.zeros(N), torch.zeros(N), torch.zeros(N),
          torch.tensor([True, False]), torch.zeros(N, dtype=torch.bool))
    assert s.ptr == 1 and torch.equal(s.obs[0], torch.ones(N, OBS)) and s.term[0].tolist() == [True, False]


def test_extras_round_trip():
    s = filled(extras={"mask": 0, "h": 3})
    assert s.mask.shape == (T, N) and s.h.shape == (T, N, 3)
    for t in range(T):
        i = torch.from_numpy(ids(t))
        assert torch.equal(s.mask[t], i)
        assert torch.equal(s.h[t], torch.stack([i, i + 100, i + 200], 1))
    fresh = RolloutStorage(T, N, OBS, ACT, extras={"mask": 0, "h": 3})
    fresh.load_state_dict(s.state_dict())
    assert torch.equal(fresh.mask, s.mask) and torch.equal(fresh.h, s.h)


def test_constructor_validation():
    with pytest.raises(OffrlError):
        RolloutStorage(0, N, OBS, ACT)
    with pytest.raises(OffrlError, match="reserved"):
        RolloutStorage(T, N, OBS, ACT, extras={"adv": 0})
    with pytest.raises(OffrlError, match="width"):
        RolloutStorage(T, N, OBS, ACT, extras={"h": -1})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_add_and_compute_returns_do_not_sync():
    s = RolloutStorage(8, 4, OBS, ACT, device="cuda", extras={"h": 2})
    d = torch.device("cuda")
    cols = [torch.randn(4, OBS, device=d), torch.randn(4, ACT, device=d)] + [torch.randn(4, device=d)] * 3
    flags = [torch.rand(4, device=d) < 0.2, torch.rand(4, device=d) < 0.2]
    last_value = torch.randn(4, device=d)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(8):
            s.add(*cols, *flags, torch.randn(4, device=d), h=torch.randn(4, 2, device=d))
        s.compute_returns(last_value, 0.99, 0.95, bootstrap_truncation=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert s.adv.device.type == "cuda"
    cpu = RolloutStorage(8, 4, OBS, ACT, extras={"h": 2})
    cpu.load_state_dict(s.state_dict())
    cpu.compute_returns(last_value.cpu(), 0.99, 0.95, bootstrap_truncation=True)
    torch.testing.assert_close(cpu.adv, s.adv.cpu())
