"""D4RL hdf5 reader: qlearning_dataset convention, dtype handling and user-facing errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from offrl.data import Dataset, DatasetInfo, load_dataset
from offrl.data.d4rl import qlearning_arrays, v0_timeouts
from offrl.errors import OffrlError

pytestmark = pytest.mark.usefixtures("data_dirs")

OBS_DIM, ACT_DIM = 3, 2
SCALE = np.array([1.0, 10.0, 100.0])


def tiny_arrays(n: int = 10) -> dict[str, np.ndarray]:
    """Three episodes: rows 0-3 end in a timeout, rows 4-6 in a terminal, rows 7-9 run off the end.

    Observation i is ``i * (1, 10, 100)`` so every row can be recognised; stored next observations
    are ``obs + 0.5`` so they are distinguishable from ``observations[i + 1]``.
    """
    obs = np.arange(n, dtype=np.float64)[:, None] * SCALE
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[3] = True
    terminals[6] = True
    return {
        "observations": obs,  # float64 on purpose
        "next_observations": (obs + 0.5).astype(np.float32),
        "actions": np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float64) / n,
        "rewards": np.arange(n, dtype=np.float32) + 0.25,
        "terminals": terminals,
        "timeouts": timeouts,
    }


def write_d4rl(path: Path, arrays: dict[str, np.ndarray], with_extras: bool = True) -> Path:
    """Write arrays in the D4RL layout (gzip datasets, infos/* and metadata/* groups)."""
    n = len(arrays["observations"])
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, compression="gzip")
        if with_extras:
            f.create_dataset("infos/qpos", data=np.random.default_rng(0).normal(size=(n, 6)), compression="gzip")
            f.create_dataset("infos/qvel", data=np.zeros((n, 6)), compression="gzip")
            f.create_dataset("infos/action_log_probs", data=np.zeros(n, dtype=np.float32))
            f["metadata/algorithm"] = np.bytes_(b"SAC")
            f["metadata/iteration"] = np.int32(42)
            f.create_dataset("metadata/policy/fc0/weight", data=np.zeros((4, 3), dtype=np.float32))
    return path


@pytest.fixture
def tiny(temp_register, data_dirs):
    """Register ``tiny-medium-v2`` (a D4RL-source id with no URL) and return its file path."""
    info = temp_register(
        DatasetInfo(
            id="tiny-medium-v2", source="d4rl", env_id=None, ref_min_score=-1.0, ref_max_score=9.0,
            obs_dim=OBS_DIM, act_dim=ACT_DIM, filename="tiny_medium-v2.hdf5", description="test file",
        )
    )
    return data_dirs.d4rl / info.filename


def load_tiny() -> Dataset:
    return load_dataset("tiny-medium-v2", download=False)


def test_stored_next_observations(tiny):
    raw = tiny_arrays()
    write_d4rl(tiny, raw)
    ds = load_tiny()
    keep = [0, 1, 2, 4, 5, 6, 7, 8, 9]  # row 3 is a timeout row and is dropped
    assert len(ds) == len(keep)
    for name in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts"):
        assert getattr(ds, name).dtype == np.float32, name
    np.testing.assert_allclose(ds.observations, raw["observations"][keep])
    np.testing.assert_allclose(ds.next_observations, raw["observations"][keep] + 0.5)
    np.testing.assert_allclose(ds.actions, raw["actions"][keep], rtol=1e-6)
    np.testing.assert_allclose(ds.rewards, raw["rewards"][keep])
    # row 2 now ends its episode (its successor was dropped), row 6 terminates, row 9 ends the data
    np.testing.assert_array_equal(ds.terminals, [0, 0, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(ds.timeouts, [0, 0, 1, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(ds.episode_lengths(), [3, 3, 3])
    assert ds.metadata["source"] == "d4rl"
    assert ds.metadata["id"] == "tiny-medium-v2"
    assert (ds.metadata["ref_min_score"], ds.metadata["ref_max_score"]) == (-1.0, 9.0)
    assert ds.metadata["path"] == str(tiny)
    assert ds.metadata["file_metadata"] == {"algorithm": "SAC", "iteration": 42}


def test_next_observations_from_following_row(tiny):
    raw = tiny_arrays()
    del raw["next_observations"]
    write_d4rl(tiny, raw)
    ds = load_tiny()
    keep = np.array([0, 1, 2, 4, 5, 6, 7, 8])  # timeout row 3 and the last row are dropped
    np.testing.assert_allclose(ds.observations, raw["observations"][keep])
    np.testing.assert_allclose(ds.next_observations, raw["observations"][keep + 1])
    np.testing.assert_array_equal(ds.terminals, [0, 0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(ds.timeouts, [0, 0, 1, 0, 0, 0, 0, 1])


def test_v0_file_without_timeouts(tiny):
    n = 2300
    raw = {
        "observations": np.arange(n, dtype=np.float32)[:, None] * SCALE.astype(np.float32),
        "actions": np.zeros((n, ACT_DIM), dtype=np.float32),
        "rewards": np.ones((n, 1), dtype=np.float64),  # (N, 1) is accepted
        "terminals": np.zeros(n, dtype=np.float32),  # float terminals, as some v0 files have
    }
    raw["terminals"][1500] = 1.0
    write_d4rl(tiny, raw, with_extras=False)
    ds = load_tiny()
    # step 1000 of the first episode (row 999) and the last row are dropped
    assert len(ds) == n - 2
    assert 999.0 not in ds.observations[:, 0]
    assert ds.observations[-1, 0] == n - 2
    assert np.flatnonzero(ds.terminals).tolist() == [1499]
    assert np.flatnonzero(ds.timeouts).tolist() == [998, n - 3]
    assert ds.rewards.shape == (n - 2,)


def reference_qlearning(terminals: np.ndarray, timeouts: np.ndarray | None, max_steps: int) -> list[int]:
    """Rows kept by d4rl.qlearning_dataset(terminate_on_end=False), as a plain per-row loop.

    One deliberate difference from d4rl's loop: the step counter of the episode after a terminal
    starts at 0 here (d4rl's starts at 1, ending such episodes one step early); see docs/datasets.md.
    """
    kept, episode_step = [], 0
    for i in range(len(terminals) - 1):
        final = timeouts[i] if timeouts is not None else episode_step == max_steps - 1
        if final:
            episode_step = 0
            continue
        if terminals[i]:
            episode_step = 0
        else:
            episode_step += 1
        kept.append(i)
    return kept


@pytest.mark.parametrize("use_timeouts", [True, False])
def test_matches_reference_loop(use_timeouts):
    rng = np.random.default_rng(1)
    n, max_steps = 400, 7
    terminals = rng.random(n) < 0.05
    timeouts = (rng.random(n) < 0.05) & ~terminals
    arrays = {
        "observations": rng.normal(size=(n, 2)),
        "actions": rng.normal(size=(n, 1)),
        "rewards": rng.normal(size=n),
        "terminals": terminals,
    }
    if use_timeouts:
        arrays["timeouts"] = timeouts
    out = qlearning_arrays(arrays, max_episode_steps=max_steps)
    kept = reference_qlearning(terminals, timeouts if use_timeouts else None, max_steps)
    np.testing.assert_allclose(out["observations"], arrays["observations"][kept].astype(np.float32))
    np.testing.assert_allclose(out["next_observations"], arrays["observations"][np.array(kept) + 1].astype(np.float32))
    np.testing.assert_array_equal(out["terminals"], terminals[kept])
    assert not np.any((out["terminals"] > 0) & (out["timeouts"] > 0))


def test_v0_timeouts_restart_after_terminal():
    terminals = np.zeros(12, dtype=bool)
    terminals[2] = True
    assert np.flatnonzero(v0_timeouts(terminals, 4)).tolist() == [6, 10]


def test_builtin_id_reads_from_cache_dir(data_dirs):
    n = 20
    rng = np.random.default_rng(0)
    raw = {
        "observations": rng.normal(size=(n, 11)).astype(np.float32),
        "next_observations": rng.normal(size=(n, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.zeros(n, dtype=bool),
    }
    write_d4rl(data_dirs.d4rl / "hopper_medium-v2.hdf5", raw)
    ds = load_dataset("hopper-medium-v2")
    assert len(ds) == n
    assert ds.env_id == "Hopper-v5"
    assert (ds.metadata["ref_min_score"], ds.metadata["ref_max_score"]) == (-20.272305, 3234.3)


# ------------------------------------------------------------------------------- bad input
def test_missing_file_without_download(tiny):
    with pytest.raises(OffrlError, match=r"tiny_medium-v2\.hdf5 not found and downloading is disabled"):
        load_tiny()


def test_missing_file_without_url(tiny):
    with pytest.raises(OffrlError, match="no download URL"):
        load_dataset("tiny-medium-v2")


def test_random_bytes(tiny):
    tiny.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(OffrlError, match=r"tiny_medium-v2\.hdf5: not a readable HDF5 file .*corrupt"):
        load_tiny()


def test_truncated_file(tiny):
    write_d4rl(tiny, tiny_arrays(2000))
    data = tiny.read_bytes()
    tiny.write_bytes(data[: len(data) // 2])
    with pytest.raises(OffrlError, match="corrupt or incomplete") as err:
        load_tiny()
    assert str(tiny) in str(err.value)
    assert "\n" not in str(err.value)


def test_corrupt_data_chunk(tiny):
    raw = tiny_arrays(5000)
    raw["observations"] = np.random.default_rng(0).normal(size=(5000, OBS_DIM))  # incompressible
    write_d4rl(tiny, raw, with_extras=False)
    data = bytearray(tiny.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    tiny.write_bytes(bytes(data))
    with pytest.raises(OffrlError, match=r"tiny_medium-v2\.hdf5: cannot read '\w+' .*corrupt or incomplete"):
        load_tiny()


def test_missing_key(tiny):
    raw = tiny_arrays()
    del raw["rewards"]
    write_d4rl(tiny, raw)
    with pytest.raises(OffrlError, match="missing dataset 'rewards'"):
        load_tiny()


def test_nan_in_observations(tiny):
    raw = tiny_arrays()
    raw["observations"][5, 1] = np.nan
    write_d4rl(tiny, raw)
    with pytest.raises(OffrlError, match=r"'observations' contains NaN or inf in 1 rows \(file .*tiny_medium-v2\.hdf5\)"):
        load_tiny()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("actions", np.zeros((10, 5)), r"'actions' has shape \(10, 5\), expected \(N, 2\)"),
        ("observations", np.zeros(10), r"'observations' has shape \(10,\), expected \(N, 3\)"),
        ("rewards", np.zeros((10, 3)), r"'rewards' has shape \(10, 3\), expected \(N,\)"),
        ("terminals", np.zeros(9, dtype=bool), r"'terminals' has 9 rows, 'observations' has 10"),
        ("rewards", np.array([b"x"] * 10), r"'rewards' has dtype \|S1, expected a numeric"),
    ],
)
def test_wrong_shape_or_dtype(tiny, key, value, message):
    raw = tiny_arrays()
    raw[key] = value
    write_d4rl(tiny, raw)
    with pytest.raises(OffrlError, match=message):
        load_tiny()
