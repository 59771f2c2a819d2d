"""ReplayBuffer: packed layout, sampling determinism, ring overwrite, checkpoint state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offrl.buffer import Batch, DataTransform, ReplayBuffer
from offrl.data import Dataset
from offrl.errors import OffrlError

OBS, ACT = 3, 2


def make_dataset(n: int = 50, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n)
    terminals[9::10] = 1.0
    return Dataset(
        observations=rng.standard_normal((n, OBS)),
        actions=rng.uniform(-1, 1, (n, ACT)),
        rewards=rng.standard_normal(n),
        next_observations=rng.standard_normal((n, OBS)),
        terminals=terminals,
        timeouts=np.zeros(n),
        metadata={"id": "test/buffer-v0"},
    )


def rows(start: int, n: int, obs_dim: int = OBS, act_dim: int = ACT) -> tuple[np.ndarray, ...]:
    """``n`` transitions whose every field holds its transition number ``start + i``."""
    k = np.arange(start, start + n, dtype=np.float32)
    return (np.repeat(k[:, None], obs_dim, 1), np.repeat(k[:, None], act_dim, 1), k,
            np.repeat(k[:, None], obs_dim, 1) + 0.5, (k % 2 == 0).astype(np.float32))


def test_from_dataset_layout_round_trips_exactly():
    ds = make_dataset()
    buf = ReplayBuffer.from_dataset(ds)
    assert len(buf) == len(ds) == buf.capacity
    assert buf.data.shape == (len(ds), 2 * OBS + ACT + 2)
    idx = torch.tensor([0, 7, 9, 49, 7])
    b = buf.batch(idx)
    assert isinstance(b, Batch)
    i = idx.numpy()
    np.testing.assert_array_equal(b.obs.numpy(), ds.observations[i])
    np.testing.assert_array_equal(b.act.numpy(), ds.actions[i])
    np.testing.assert_array_equal(b.rew.numpy(), ds.rewards[i])
    np.testing.assert_array_equal(b.next_obs.numpy(), ds.next_observations[i])
    np.testing.assert_array_equal(b.done.numpy(), ds.terminals[i])
    np.testing.assert_array_equal(buf.observations.numpy(), ds.observations)
    np.testing.assert_array_equal(buf.actions.numpy(), ds.actions)


def test_from_dataset_extra_capacity():
    ds = make_dataset(20)
    buf = ReplayBuffer.from_dataset(ds, capacity=100)
    assert buf.capacity == 100 and len(buf) == 20 and buf.ptr == 20
    assert ReplayBuffer.from_dataset(ds, capacity=5).capacity == 20  # never smaller than the data


def test_sample_shapes_dtypes_device():
    buf = ReplayBuffer.from_dataset(make_dataset(), device="cpu")
    b = buf.sample(32)
    assert b.obs.shape == (32, OBS) and b.next_obs.shape == (32, OBS)
    assert b.act.shape == (32, ACT)
    assert b.rew.shape == (32,) and b.done.shape == (32,)
    for t in (b[k] for k in b.keys()):
        assert t.dtype == torch.float32 and t.device == torch.device("cpu")
    assert set(b.done.unique().tolist()) <= {0.0, 1.0}


def test_sampling_is_deterministic_per_seed():
    ds = make_dataset()
    a = [ReplayBuffer.from_dataset(ds, seed=3).sample(16) for _ in range(2)]
    for k in a[0].keys():
        assert torch.equal(a[0][k], a[1][k])
    c = ReplayBuffer.from_dataset(ds, seed=4).sample(16)
    assert not torch.equal(a[0].obs, c.obs)
    # the global torch RNG plays no part
    torch.manual_seed(0)
    d1 = ReplayBuffer.from_dataset(ds, seed=3).sample(16)
    torch.manual_seed(1)
    d2 = ReplayBuffer.from_dataset(ds, seed=3).sample(16)
    assert torch.equal(d1.obs, d2.obs)


def test_sample_covers_only_filled_rows():
    buf = ReplayBuffer(OBS, ACT, capacity=100)
    buf.add(*rows(0, 5))
    ids = buf.sample(1000).rew
    assert set(ids.unique().tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}


def test_ring_buffer_overwrites_oldest():
    buf = ReplayBuffer(OBS, ACT, capacity=5)
    buf.add(*rows(0, 3))
    assert (len(buf), buf.ptr) == (3, 3)
    buf.add(*rows(3, 4))  # 3, 4 fill the end; 5, 6 overwrite 0, 1
    assert (len(buf), buf.ptr) == (5, 2)
    assert buf.data[:, OBS + ACT].tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    b = buf.batch(torch.arange(5))
    np.testing.assert_array_equal(b.obs.numpy(), np.repeat(np.array([5, 6, 2, 3, 4.0])[:, None], OBS, 1))
    np.testing.assert_array_equal(b.next_obs.numpy()[:, 0], [5.5, 6.5, 2.5, 3.5, 4.5])
    np.testing.assert_array_equal(b.done.numpy(), [0, 1, 1, 0, 1])


def test_add_more_than_capacity_at_once_keeps_latest():
    buf = ReplayBuffer(OBS, ACT, capacity=4)
    buf.add(*rows(0, 1))
    buf.add(*rows(1, 10))  # 1..10: only the last four (7..10) survive
    assert (len(buf), buf.ptr) == (4, 1)
    assert sorted(buf.data[:, OBS + ACT].tolist()) == [7.0, 8.0, 9.0, 10.0]
    # ring order: the slot at ptr holds the oldest survivor
    assert buf.data[buf.ptr, OBS + ACT].item() == 7.0
    buf.add(*rows(11, 1))
    assert sorted(buf.data[:, OBS + ACT].tolist()) == [8.0, 9.0, 10.0, 11.0]


def test_single_transition_add():
    buf = ReplayBuffer(OBS, ACT, capacity=3)
    buf.add(np.array([1.0, 2.0, 3.0]), np.array([0.5, -0.5]), 2.5, np.array([4.0, 5.0, 6.0]), True)
    assert len(buf) == 1
    b = buf.batch(torch.tensor([0]))
    assert b.obs.tolist() == [[1.0, 2.0, 3.0]]
    assert b.act.tolist() == [[0.5, -0.5]]
    assert b.rew.tolist() == [2.5]
    assert b.next_obs.tolist() == [[4.0, 5.0, 6.0]]
    assert b.done.tolist() == [1.0]
    buf.add(torch.zeros(OBS), torch.zeros(ACT), torch.tensor(1.0), torch.ones(OBS), torch.tensor(0.0))
    assert len(buf) == 2 and buf.batch(torch.tensor([1])).rew.item() == 1.0


def test_dims_mismatch_raises():
    buf = ReplayBuffer(OBS, ACT, capacity=10)
    with pytest.raises(OffrlError, match="observation has 4 dims, the buffer expects 3"):
        buf.add(np.zeros((2, 4)), np.zeros((2, ACT)), np.zeros(2), np.zeros((2, 4)), np.zeros(2))
    with pytest.raises(OffrlError, match="action has 3 dims, the buffer expects 2"):
        buf.add(np.zeros((2, OBS)), np.zeros((2, 3)), np.zeros(2), np.zeros((2, OBS)), np.zeros(2))
    with pytest.raises(OffrlError, match="observation has 5 dims"):
        buf.add(np.zeros(5), np.zeros(ACT), 0.0, np.zeros(5), 0.0)
    assert len(buf) == 0


def test_bad_capacity_and_empty_sample_raise():
    with pytest.raises(OffrlError, match="capacity must be positive"):
        ReplayBuffer(OBS, ACT, capacity=0)
    with pytest.raises(OffrlError, match="empty replay buffer"):
        ReplayBuffer(OBS, ACT, capacity=4).sample(2)


def test_state_round_trip_without_data_continues_sampling():
    ds = make_dataset()
    buf = ReplayBuffer.from_dataset(ds, seed=7)
    buf.sample(8)
    state = buf.state_dict(include_data=False)
    assert "data" not in state
    expected = [buf.sample(8) for _ in range(3)]
    other = ReplayBuffer.from_dataset(ds, seed=99)  # offline resume: rows rebuilt from the dataset
    other.load_state_dict(state)
    for want in expected:
        got = other.sample(8)
        for x, y in zip(want, got):
            assert torch.equal(x, y)


def test_state_round_trip_with_data_continues_sampling_and_adding():
    buf = ReplayBuffer(OBS, ACT, capacity=6, seed=1)
    buf.add(*rows(0, 4))
    buf.add(*rows(4, 4))  # wrapped: full, ptr 2
    buf.sample(4)
    state = buf.state_dict()
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    expected = [buf.sample(5) for _ in range(2)]
    buf.add(*rows(100, 1))
    other = ReplayBuffer(OBS, ACT, capacity=6, seed=123)
    other.load_state_dict(state)
    assert (len(other), other.ptr) == (6, 2)
    for want in expected:
        got = other.sample(5)
        for x, y in zip(want, got):
            assert torch.equal(x, y)
    other.add(*rows(100, 1))
    assert torch.equal(other.data, buf.data)


def test_state_round_trip_partial_buffer():
    buf = ReplayBuffer(OBS, ACT, capacity=10, seed=2)
    buf.add(*rows(0, 4))
    state = buf.state_dict()
    assert state["data"].shape == (4, buf.width)
    other = ReplayBuffer(OBS, ACT, capacity=10)
    other.load_state_dict(state)
    assert (len(other), other.ptr) == (4, 4)
    assert torch.equal(other.sample(20).rew, buf.sample(20).rew)


def test_saved_state_holds_only_the_filled_rows():
    import io

    buf = ReplayBuffer(OBS, ACT, capacity=100_000, seed=0)
    buf.add(*rows(0, 10))
    f = io.BytesIO()
    torch.save(buf.state_dict(), f)
    # 10 rows of 10 float32 are 400 bytes; the preallocated storage would be 4 MB.
    assert f.tell() < 20_000
    f.seek(0)
    other = ReplayBuffer(OBS, ACT, capacity=100_000)
    other.load_state_dict(torch.load(f))
    assert torch.equal(other.data[:10], buf.data[:10])


def test_load_state_mismatch_raises():
    ds = make_dataset(30)
    state = ReplayBuffer.from_dataset(ds).state_dict(include_data=False)
    with pytest.raises(OffrlError, match="30 transitions"):
        ReplayBuffer.from_dataset(make_dataset(20)).load_state_dict(state)
    wide = ReplayBuffer(OBS + 1, ACT, capacity=4)
    wide.add(*rows(0, 2, obs_dim=OBS + 1))
    with pytest.raises(OffrlError, match="width"):
        ReplayBuffer(OBS, ACT, capacity=4).load_state_dict(wide.state_dict())


def test_from_dataset_overrides():
    ds = make_dataset()
    rewards = ds.rewards * 10 + 1
    actions = np.clip(ds.actions, -0.5, 0.5)
    mean = ds.observations.mean(0)
    std = ds.observations.std(0) + 1e-3
    buf = ReplayBuffer.from_dataset(ds, rewards=rewards, actions=actions, transform=DataTransform(mean, std))
    b = buf.batch(torch.arange(len(ds)))
    np.testing.assert_allclose(b.rew.numpy(), rewards, rtol=1e-6)
    np.testing.assert_allclose(b.act.numpy(), actions)
    np.testing.assert_allclose(b.obs.numpy(), (ds.observations - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.next_obs.numpy(), (ds.next_observations - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.done.numpy(), ds.terminals)
    # the dataset itself is left untouched
    np.testing.assert_array_equal(ReplayBuffer.from_dataset(ds).observations.numpy(), ds.observations)
