"""Loader for Minari datasets (``mujoco/hopper/medium-v0``, ``D4RL/antmaze/umaze-v1``, offrl's own).

Datasets are opened through the ``minari`` package from ``$MINARI_DATASETS_PATH`` (default
``~/.minari/datasets``), where they live as ``<root>/<id>/data/{main_data.hdf5,metadata.json}``.
Each episode of ``T`` steps stores ``T + 1`` observations; it becomes ``T`` rows with
``observations[:-1]`` / ``observations[1:]`` as observation / next observation,
``terminals = terminations`` and ``timeouts = truncations`` (a step that is both counts as a
termination), and the last step of an episode that has neither gets ``timeouts = 1``.
Dict and Tuple observation spaces of Box leaves are flattened in Gymnasium's order (the order
``gymnasium.wrappers.FlattenObservation`` uses), so an evaluation env wrapped with it matches.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import gymnasium as gym
import numpy as np

from offrl.data.dataset import Dataset
from offrl.errors import OffrlError, check_output_dir

if TYPE_CHECKING:
    from offrl.data.registry import DatasetInfo

_JSON_SCALARS = (str, int, float, bool)


def minari_root() -> Path:
    """Minari's local root, resolved the way ``minari`` resolves it: ``$MINARI_DATASETS_PATH`` or
    ``~/.minari/datasets``."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root is not None else Path.home() / ".minari" / "datasets"


def check_minari_root() -> Path:
    """The Minari root, after checking it is a writable directory or can be created as one (see
    :func:`~offrl.errors.check_output_dir`; nothing is created). Builders call this before
    collecting anything, so a bad ``$MINARI_DATASETS_PATH`` fails at once, not after the build."""
    root = minari_root()
    what = "MINARI_DATASETS_PATH" if "MINARI_DATASETS_PATH" in os.environ else "the Minari root (MINARI_DATASETS_PATH unset)"
    check_output_dir(str(root), what=what)
    return root


def minari_path(dataset_id: str) -> Path:
    """Directory of a Minari dataset (present or not)."""
    return minari_root() / dataset_id


def minari_present(dataset_id: str) -> bool:
    """Whether a Minari dataset is stored locally (its ``data/metadata.json`` exists)."""
    return (minari_path(dataset_id) / "data" / "metadata.json").is_file()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_space(space: gym.Space, what: str, dataset_id: str) -> None:
    """Accept Box spaces and Dict/Tuple nests of them; anything else raises OffrlError."""
    if isinstance(space, gym.spaces.Box):
        return
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        for sub in space.spaces.values() if isinstance(space, gym.spaces.Dict) else space.spaces:
            _check_space(sub, what, dataset_id)
        return
    raise OffrlError(
        f"{dataset_id}: unsupported {what} space {space}; offrl reads Box spaces (or Dict/Tuple of Box)"
    )


def flatten_batch(x: Any, space: gym.Space, n: int) -> np.ndarray:
    """Flatten ``n`` stacked elements of ``space`` to an ``(n, flat_dim)`` float32 array."""
    if isinstance(space, gym.spaces.Box):
        return np.asarray(x, dtype=np.float32).reshape(n, -1)
    if isinstance(space, gym.spaces.Dict):
        parts = [flatten_batch(x[key], sub, n) for key, sub in space.spaces.items()]
    else:
        parts = [flatten_batch(x[i], sub, n) for i, sub in enumerate(space.spaces)]
    return np.concatenate(parts, axis=1)


def episodes_to_arrays(
    episodes: Iterable[Any], observation_space: gym.Space, action_space: gym.Space, dataset_id: str
) -> dict[str, np.ndarray]:
    """Stack Minari episodes (objects with observations/actions/rewards/terminations/truncations)
    into the six :class:`Dataset` arrays, concatenating per-episode arrays once at the end."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
    for ep in episodes:
        steps = len(ep.rewards)
        if steps == 0:
            continue
        try:
            obs = flatten_batch(ep.observations, observation_space, steps + 1)
        except ValueError:
            raise OffrlError(
                f"{dataset_id}: episode {ep.id} has {steps} steps but observations that do not "
                f"reshape to {steps + 1} rows"
            ) from None
        terminations = np.asarray(ep.terminations, dtype=bool).reshape(steps)
        truncations = np.asarray(ep.truncations, dtype=bool).reshape(steps) & ~terminations
        if not (terminations[-1] or truncations[-1]):
            truncations[-1] = True
        cols["observations"].append(obs[:-1])
        cols["next_observations"].append(obs[1:])
        cols["actions"].append(flatten_batch(ep.actions, action_space, steps))
        cols["rewards"].append(np.asarray(ep.rewards, dtype=np.float32).reshape(steps))
        cols["terminals"].append(terminations.astype(np.float32))
        cols["timeouts"].append(truncations.astype(np.float32))
    if not cols["rewards"]:
        raise OffrlError(f"{dataset_id}: the Minari dataset holds no steps")
    return {key: np.concatenate(parts) for key, parts in cols.items()}


class _Episode:
    __slots__ = ("id", "observations", "actions", "rewards", "terminations", "truncations")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def _hdf5_episodes(mds) -> Iterable[_Episode] | None:
    """The episodes of an HDF5-stored Minari dataset with Box spaces, read straight from
    ``main_data.hdf5`` with only the fields offrl uses (Minari's reader also decodes every info
    field, which dominates on datasets of many short episodes: minutes for 50k episodes). None
    when the fast path does not apply (other storage, Dict/Tuple spaces)."""
    import h5py

    if type(mds.storage).__name__ != "HDF5Storage" or not _FAST_HDF5:
        return None
    if not (isinstance(mds.observation_space, gym.spaces.Box) and isinstance(mds.action_space, gym.spaces.Box)):
        return None
    path = os.path.join(str(mds.storage.data_path), "main_data.hdf5")
    total = int(mds.total_episodes)

    def gen():
        with h5py.File(path, "r") as f:
            for i in range(total):
                g = f[f"episode_{i}"]
                yield _Episode(id=i, observations=g["observations"][()], actions=g["actions"][()],
                               rewards=g["rewards"][()], terminations=g["terminations"][()],
                               truncations=g["truncations"][()])

    return gen()


_FAST_HDF5 = True  # tests switch it off to compare with Minari's own reader
_CACHE_NAME = "offrl-transitions.npz"
_CACHE_VERSION = 1


def _cache_key(path: Path) -> np.ndarray | None:
    try:
        st = os.stat(path / "data" / "main_data.hdf5")
    except OSError:
        return None
    return np.array([_CACHE_VERSION, st.st_size, st.st_mtime_ns], dtype=np.int64)


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The flat transition arrays cached by an earlier load, if the data file is unchanged."""
    key = _cache_key(path)
    cache = path / _CACHE_NAME
    if key is None or not cache.is_file():
        return None
    try:
        with np.load(cache) as z:
            if not np.array_equal(z["key"], key):
                return None
            return {k: z[k] for k in z.files if k != "key"}
    except Exception:  # damaged or foreign cache: read the dataset itself
        return None


def cache_episodes(path: Path, episodes: list[dict], observation_space: gym.Space, action_space: gym.Space,
                   dataset_id: str) -> None:
    """Write the flat transitions cache of a dataset at ``path`` from its episode dicts (what the
    dataset writer has in memory), so the first load need not read the episodes back."""
    eps = (_Episode(id=i, **{k: ep[k] for k in ("observations", "actions", "rewards", "terminations", "truncations")})
           for i, ep in enumerate(episodes))
    _write_cache(path, episodes_to_arrays(eps, observation_space, action_space, dataset_id))


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Cache the flat arrays next to the Minari data (a dataset of many short episodes reads
    back from HDF5 in minutes, from the cache in about a second); silently skipped when the
    dataset directory is not writable."""
    key = _cache_key(path)
    if key is None:
        return
    tmp = path / (_CACHE_NAME + ".tmp.npz")
    try:
        np.savez(tmp, key=key, **arrays)
        os.replace(tmp, path / _CACHE_NAME)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _download(dataset_id: str, path: Path) -> None:
    """Fetch a dataset from the Minari remote; on failure remove what this call created."""
    import minari

    existed = path.exists()
    try:
        minari.download_dataset(dataset_id)
    except Exception as e:  # network, remote and missing-dependency errors all end up here
        if not existed and path.exists():
            shutil.rmtree(path, ignore_errors=True)
        offline = "" if isinstance(e, ImportError) else "; this machine may be offline"
        raise OffrlError(
            f"cannot download Minari dataset '{dataset_id}' from the Minari remote ({_one_line(e)}){offline}. "
            f"Or copy the dataset directory to {path} (it holds data/main_data.hdf5 and data/metadata.json)"
        ) from None


def load_minari(info: DatasetInfo, download: bool | None = None) -> Dataset:
    """Load a Minari-format dataset (source ``"minari"`` or ``"offrl"``), downloading it from the
    Minari remote first when it is absent and ``download`` is not False."""
    import minari

    path = minari_path(info.id)
    if not minari_present(info.id):
        if info.source != "minari":
            raise OffrlError(f"{info.id}: not found at {path}; build it with `offrl datasets make {info.id}`")
        if download is False:
            raise OffrlError(f"{info.id}: not found at {path} and downloading is disabled")
        _download(info.id, path)
    try:
        mds = minari.load_dataset(info.id)
        _check_space(mds.observation_space, "observation", info.id)
        _check_space(mds.action_space, "action", info.id)
        arrays = _read_cache(path)
        if arrays is None:
            episodes = _hdf5_episodes(mds) or mds.iterate_episodes()
            arrays = episodes_to_arrays(episodes, mds.observation_space, mds.action_space, info.id)
            _write_cache(path, arrays)
        stored = dict(mds.storage.metadata)
        env_spec = mds.env_spec
    except OffrlError as e:
        raise OffrlError(f"{e} (at {path})") from None
    except Exception as e:  # minari raises ValueError/KeyError/OSError/AssertionError on bad data
        raise OffrlError(f"{path}: cannot read Minari dataset '{info.id}' ({type(e).__name__}: {_one_line(e)})") from None

    def ref(key: str) -> float | None:
        value = stored.get(key)
        if value is None:
            value = getattr(info, key)
        return None if value is None else float(value)

    metadata = {
        "id": info.id,
        "env_id": env_spec.id if env_spec is not None else info.env_id,
        "ref_min_score": ref("ref_min_score"),
        "ref_max_score": ref("ref_max_score"),
        "source": info.source,
        "path": str(path),
        "minari": {k: v for k, v in stored.items() if isinstance(v, _JSON_SCALARS)},
    }
    try:
        return Dataset(**arrays, metadata=metadata)
    except OffrlError as e:
        raise OffrlError(f"{e} (at {path})") from None


__all__ = ["minari_root", "minari_path", "minari_present", "flatten_batch", "episodes_to_arrays", "load_minari",
           "cache_episodes", "check_minari_root"]
