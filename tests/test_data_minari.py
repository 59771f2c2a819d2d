"""Minari loader: datasets written with minari's own API under a temporary MINARI_DATASETS_PATH."""

from __future__ import annotations

import re

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from offrl.data import DatasetInfo, is_present, load_dataset
from offrl.errors import OffrlError

pytestmark = [
    pytest.mark.usefixtures("data_dirs"),
    # minari nags about optional metadata (author, permalink, ...) that test datasets leave out
    pytest.mark.filterwarnings("ignore:.*(is set to None|env_spec is None):UserWarning"),
]

# (steps, terminated at the end, truncated at the end)
EPISODES = [(5, True, False), (4, False, True), (3, False, False), (2, True, True)]


def make_episode(i: int, steps: int, terminated: bool, truncated: bool, obs_dim: int) -> EpisodeBuffer:
    """Episode i: observation t is ``100 * i + t`` in every dimension, reward t is ``i + t / 10``."""
    obs = np.repeat((100.0 * i + np.arange(steps + 1))[:, None], obs_dim, axis=1).astype(np.float32)
    terminations = [False] * steps
    truncations = [False] * steps
    terminations[-1], truncations[-1] = terminated, truncated
    return EpisodeBuffer(
        id=i, observations=obs, actions=np.full((steps, 1), 0.5 * i, dtype=np.float32),
        rewards=list(i + np.arange(steps) / 10.0), terminations=terminations, truncations=truncations,
    )


def info_for(dataset_id: str, **overrides) -> DatasetInfo:
    fields = dict(
        id=dataset_id, source="minari", env_id=None, ref_min_score=None, ref_max_score=None,
        obs_dim=None, act_dim=None, description="test dataset",
    )
    fields.update(overrides)
    return DatasetInfo(**fields)


@pytest.fixture
def pendulum(temp_register):
    """A 4-episode Minari dataset recorded against Pendulum-v1, with reference scores."""
    dataset_id = "test/pendulum/mixed-v0"
    buffers = [make_episode(i, *spec, obs_dim=3) for i, spec in enumerate(EPISODES)]
    minari.create_dataset_from_buffers(
        dataset_id, buffers, env="Pendulum-v1", eval_env="Pendulum-v1", algorithm_name="synthetic",
        description="offrl test", ref_min_score=-1500.0, ref_max_score=-150.0,
    )
    temp_register(info_for(dataset_id))
    return dataset_id


def test_load_pendulum(pendulum, data_dirs):
    assert is_present(pendulum)
    ds = load_dataset(pendulum, download=False)
    steps = [s for s, _, _ in EPISODES]
    assert len(ds) == sum(steps)
    assert (ds.obs_dim, ds.act_dim) == (3, 1)
    for name in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts"):
        assert getattr(ds, name).dtype == np.float32
    # observations[:-1] / observations[1:] per episode
    expected_obs = np.concatenate([100.0 * i + np.arange(s) for i, s in enumerate(steps)])
    np.testing.assert_allclose(ds.observations[:, 0], expected_obs)
    np.testing.assert_allclose(ds.next_observations[:, 0], expected_obs + 1)
    np.testing.assert_allclose(ds.rewards[:5], np.arange(5) / 10.0, rtol=1e-6)
    ends = np.cumsum(steps) - 1  # [4, 8, 11, 13]
    # terminated -> terminal; truncated -> timeout; neither -> timeout; both -> terminal only
    assert np.flatnonzero(ds.terminals).tolist() == [ends[0], ends[3]]
    assert np.flatnonzero(ds.timeouts).tolist() == [ends[1], ends[2]]
    np.testing.assert_array_equal(ds.episode_lengths(), steps)
    assert ds.metadata["source"] == "minari"
    assert ds.env_id == "Pendulum-v1"
    assert (ds.metadata["ref_min_score"], ds.metadata["ref_max_score"]) == (-1500.0, -150.0)
    assert ds.metadata["path"] == str(data_dirs.minari / pendulum)
    # offrl's normalized score uses the raw-return references stored by Minari
    assert ds.normalized_score(-150.0) == pytest.approx(100.0)
    assert ds.normalized_score(-1500.0) == pytest.approx(0.0)


def test_dict_observations_are_flattened_in_space_order(temp_register):
    dataset_id = "test/goal/dict-v0"
    obs_space = gym.spaces.Dict({
        "observation": gym.spaces.Box(-np.inf, np.inf, (3,), np.float64),
        "achieved_goal": gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
    })
    act_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    steps = 4
    buffer = EpisodeBuffer(
        observations={"observation": np.full((steps + 1, 3), 7.0), "achieved_goal": np.tile(np.arange(steps + 1.0)[:, None], (1, 2))},
        actions=np.zeros((steps, 2), dtype=np.float32), rewards=[0.0] * steps,
        terminations=[False] * steps, truncations=[False] * (steps - 1) + [True],
    )
    minari.create_dataset_from_buffers(
        dataset_id, [buffer], observation_space=obs_space, action_space=act_space,
        algorithm_name="synthetic", description="dict obs",
    )
    temp_register(info_for(dataset_id, env_id="Fallback-v0", ref_min_score=0.0, ref_max_score=1.0))
    ds = load_dataset(dataset_id, download=False)
    assert ds.obs_dim == 5
    # gymnasium orders Dict keys alphabetically: achieved_goal (2) then observation (3)
    np.testing.assert_allclose(ds.observations[1], [1.0, 1.0, 7.0, 7.0, 7.0])
    np.testing.assert_allclose(ds.next_observations[-1], [4.0, 4.0, 7.0, 7.0, 7.0])
    # no env spec and no stored reference scores: the registry entry fills in
    assert ds.env_id == "Fallback-v0"
    assert (ds.metadata["ref_min_score"], ds.metadata["ref_max_score"]) == (0.0, 1.0)


def test_absent_without_download(temp_register, data_dirs):
    temp_register(info_for("test/absent/none-v0"))
    assert not is_present("test/absent/none-v0")
    with pytest.raises(OffrlError, match=r"test/absent/none-v0: not found at .* and downloading is disabled"):
        load_dataset("test/absent/none-v0", download=False)


def test_absent_and_remote_unavailable(temp_register, data_dirs, monkeypatch):
    """Offline (or without the remote's client library) the failure is one clear line."""
    monkeypatch.setenv("MINARI_REMOTE", "hf://offrl-test-unreachable")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    temp_register(info_for("test/absent/remote-v0"))
    with pytest.raises(OffrlError, match="cannot download Minari dataset 'test/absent/remote-v0'") as err:
        load_dataset("test/absent/remote-v0")
    assert "\n" not in str(err.value)
    assert not (data_dirs.minari / "test/absent/remote-v0").exists()


def test_corrupt_minari_file(pendulum, data_dirs):
    (data_dirs.minari / pendulum / "data" / "main_data.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(OffrlError, match=r"cannot read Minari dataset 'test/pendulum/mixed-v0'"):
        load_dataset(pendulum, download=False)


def test_offrl_source_uses_builder(temp_register):
    """An offrl dataset that is absent is built by its builder, then loaded with the Minari loader."""
    dataset_id = "offrl/pendulum/tiny-v0"
    calls = []

    def builder(info: DatasetInfo) -> None:
        calls.append(info.id)
        buffers = [make_episode(0, 3, True, False, obs_dim=3)]
        minari.create_dataset_from_buffers(
            info.id, buffers, env="Pendulum-v1", eval_env="Pendulum-v1", algorithm_name="synthetic",
            description="built", ref_min_score=-10.0, ref_max_score=10.0,
        )

    temp_register(info_for(dataset_id, source="offrl", builder=builder))
    with pytest.raises(OffrlError, match="build it with `offrl datasets make offrl/pendulum/tiny-v0`"):
        load_dataset(dataset_id, download=False)
    ds = load_dataset(dataset_id)
    assert calls == [dataset_id]
    assert len(ds) == 3 and ds.metadata["source"] == "offrl"
    load_dataset(dataset_id)
    assert calls == [dataset_id]  # present now: not rebuilt


def _arrays(ds):
    return {k: getattr(ds, k) for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")}


def test_direct_hdf5_reader_matches_minaris_reader(pendulum, monkeypatch):
    from offrl.data import minari_io

    fast = _arrays(load_dataset(pendulum, download=False))
    (minari_io.minari_path(pendulum) / minari_io._CACHE_NAME).unlink()
    monkeypatch.setattr(minari_io, "_FAST_HDF5", False)
    slow = _arrays(load_dataset(pendulum, download=False))
    for k in fast:
        assert fast[k].dtype == slow[k].dtype and np.array_equal(fast[k], slow[k]), k


def test_flat_cache_is_reused_and_invalidated(pendulum, monkeypatch):
    import os

    from offrl.data import minari_io

    first = _arrays(load_dataset(pendulum, download=False))
    cache = minari_io.minari_path(pendulum) / minari_io._CACHE_NAME
    assert cache.is_file()

    def no_read(*a, **k):
        raise AssertionError("episodes were read again")

    original = minari_io.episodes_to_arrays
    monkeypatch.setattr(minari_io, "episodes_to_arrays", no_read)
    again = _arrays(load_dataset(pendulum, download=False))  # from the cache
    assert all(np.array_equal(first[k], again[k]) for k in first)
    # a changed data file invalidates the cache
    data = minari_io.minari_path(pendulum) / "data" / "main_data.hdf5"
    st = os.stat(data)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(OffrlError, match="episodes were read again"):
        load_dataset(pendulum, download=False)
    monkeypatch.setattr(minari_io, "episodes_to_arrays", original)
    # a damaged cache is ignored (and rewritten)
    cache.write_bytes(b"garbage")
    assert np.array_equal(_arrays(load_dataset(pendulum, download=False))["rewards"], first["rewards"])
    assert np.load(cache)["rewards"].shape == first["rewards"].shape


def test_read_only_dataset_loads_without_cache(pendulum, monkeypatch):
    from offrl.data import minari_io

    def fail(*a, **k):
        raise PermissionError(13, "read-only")

    monkeypatch.setattr(minari_io.np, "savez", fail)
    ds = load_dataset(pendulum, download=False)
    assert len(ds) == 14 and not (minari_io.minari_path(pendulum) / minari_io._CACHE_NAME).exists()


def test_writer_matches_minaris_own_writer():
    """offrl's writer (Minari writes episode 0 and the metadata, h5py appends the rest) stores what
    Minari's own writer stores: the same episodes, fields, dtypes, seeds and step counts, read back
    through Minari's reader."""
    from offrl.data.writer import write_minari_dataset

    rng = np.random.default_rng(0)
    episodes = []
    for i, (steps, term, trunc) in enumerate(EPISODES):
        ep = {"observations": rng.standard_normal((steps + 1, 3)).astype(np.float32),
              "actions": rng.uniform(-1, 1, (steps, 1)).astype(np.float32),
              "rewards": rng.standard_normal(steps).astype(np.float32),
              "terminations": np.r_[np.zeros(steps - 1, bool), term], "truncations": np.r_[np.zeros(steps - 1, bool), trunc],
              "infos": {"qpos": rng.standard_normal((steps + 1, 2)), "logp": rng.standard_normal(steps + 1).astype(np.float32)}}
        if i == 2:
            ep["seed"] = 7
        episodes.append(ep)
    act = gym.spaces.Box(-1, 1, (1,), np.float32)
    obs = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    write_minari_dataset("test/ours/w-v0", episodes, "Pendulum-v1", action_space=act, observation_space=obs,
                         metadata={"note": "x"})
    minari.create_dataset_from_buffers(
        "test/theirs/w-v0", [EpisodeBuffer(id=i, **ep) for i, ep in enumerate(episodes)], env="Pendulum-v1",
        action_space=act, observation_space=obs, algorithm_name="offrl", author="offrl",
        code_permalink="https://pypi.org/project/offrl/", description="")
    ours, theirs = minari.load_dataset("test/ours/w-v0"), minari.load_dataset("test/theirs/w-v0")
    assert (ours.total_episodes, ours.total_steps) == (theirs.total_episodes, theirs.total_steps) == (4, 14)
    assert ours.storage.metadata["note"] == "x"
    for a, b in zip(ours.iterate_episodes(), theirs.iterate_episodes(), strict=True):
        assert a.id == b.id
        for key in ("observations", "actions", "rewards", "terminations", "truncations"):
            x, y = getattr(a, key), getattr(b, key)
            assert x.dtype == y.dtype and np.array_equal(x, y), key
        assert a.infos.keys() == b.infos.keys() == {"qpos", "logp"}
        for key in a.infos:
            assert a.infos[key].dtype == b.infos[key].dtype and np.array_equal(a.infos[key], b.infos[key])
    import h5py

    files = [h5py.File(d.storage.data_path / "main_data.hdf5", "r") for d in (ours, theirs)]
    try:
        assert list(files[0]) == list(files[1])
        for name in files[0]:
            attrs = [dict(f[name].attrs) for f in files]
            assert attrs[0] == attrs[1] and all(type(v) is type(attrs[1][k]) for k, v in attrs[0].items())
        assert files[0]["episode_2"].attrs["seed"] == 7
    finally:
        for f in files:
            f.close()


# ----------------------------------------------------------------------------- unusable Minari root
SCRIPTED = "offrl/invertedpendulum/scripted-v0"


def test_unusable_minari_root_fails_before_building(tmp_path, monkeypatch):
    """MINARI_DATASETS_PATH at a regular file (or below one): one line naming it, before a single
    transition is collected (not after the whole build, when the write fails)."""
    from offrl.data import builtin

    def collect(*a, **k):
        raise AssertionError("collected before checking the Minari root")

    monkeypatch.setattr(builtin, "collect_scripted", collect)
    blocker = tmp_path / "minari-file"
    blocker.write_text("")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(blocker))
    with pytest.raises(OffrlError) as err:
        load_dataset(SCRIPTED)
    assert str(err.value) == f"MINARI_DATASETS_PATH {blocker}: not a directory"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(blocker / "datasets"))
    with pytest.raises(OffrlError) as err:
        load_dataset(SCRIPTED)
    assert str(err.value) == f"MINARI_DATASETS_PATH {blocker / 'datasets'}: cannot be created: {blocker} is not a directory"
    assert blocker.read_text() == "" and sorted(p.name for p in tmp_path.iterdir()) == sorted(["minari-file", "d4rl", "minari"])
    # the writer itself (called after collecting) still reports a root it cannot write in one line
    from offrl.data.writer import write_minari_dataset

    ep = {"observations": np.zeros((3, 4), np.float32), "actions": np.zeros((2, 1), np.float32),
          "rewards": np.zeros(2, np.float32), "terminations": np.array([False, True]), "truncations": np.zeros(2, bool)}
    with pytest.raises(OffrlError, match="^cannot write datasets under " + re.escape(f"{blocker / 'datasets'}: ")):
        write_minari_dataset("test/w/x-v0", [ep], "InvertedPendulum-v5", action_space=gym.spaces.Box(-1, 1, (1,), np.float32))


def test_unusable_minari_root_through_the_cli(tmp_path):
    """``python algos/iql.py`` with MINARI_DATASETS_PATH at a regular file: exit 2, one stderr line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_cli import assert_one_line_error

    repo = Path(__file__).resolve().parents[1]
    blocker = tmp_path / "minari-file"
    blocker.write_text("")
    env = dict(os.environ, MINARI_DATASETS_PATH=str(blocker), D4RL_DATASET_DIR=str(tmp_path / "d4rl"))
    proc = subprocess.run([sys.executable, "algos/iql.py", "--dataset", SCRIPTED, "--run-dir", str(tmp_path / "run"),
                           "--progress", "False"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.returncode, proc.stderr, f"MINARI_DATASETS_PATH {blocker}: not a directory")
    assert proc.stdout == ""
