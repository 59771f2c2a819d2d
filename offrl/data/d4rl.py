"""Reader for D4RL hdf5 files, converted with the ``d4rl.qlearning_dataset`` convention.

Files are read from ``$D4RL_DATASET_DIR`` (default ``~/.d4rl/datasets``) under the basename of
their download URL, exactly where the ``d4rl`` package caches them, so an existing D4RL cache is
reused as is. Conversion (``terminate_on_end=False``):

* every row with ``timeouts[i]`` set is dropped (its next observation is not trustworthy);
* ``next_observations`` are the stored ones when the file has them, else ``observations[i+1]``,
  in which case the last row is dropped as well;
* ``terminals`` are kept as stored; the kept row just before a dropped timeout row, and the final
  row, end their episode and get ``timeouts = 1`` unless they are terminal;
* files without ``timeouts`` (v0) end an episode every ``MAX_EPISODE_STEPS`` steps counted since
  the last terminal, as ``d4rl`` does with ``env._max_episode_steps``;
* rewards are kept as stored (antmaze reward shaping is the algorithm's business);
* every array is cast to float32 here: dtypes differ between the published files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import h5py
import numpy as np

from offrl.data.dataset import Dataset
from offrl.data.download import download as download_file
from offrl.errors import OffrlError

if TYPE_CHECKING:
    from offrl.data.registry import DatasetInfo

DEFAULT_DIR = "~/.d4rl/datasets"
MAX_EPISODE_STEPS = 1000
REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
OPTIONAL_KEYS = ("timeouts", "next_observations")


def d4rl_dataset_dir() -> Path:
    """The D4RL cache directory: ``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets``."""
    return Path(os.environ.get("D4RL_DATASET_DIR") or DEFAULT_DIR).expanduser()


def d4rl_path(info: DatasetInfo) -> Path:
    """Where the file of a registered D4RL dataset lives (present or not)."""
    if not info.filename:
        raise OffrlError(f"{info.id}: no file name registered for this D4RL dataset")
    return d4rl_dataset_dir() / info.filename


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_hdf5(
    path: str | os.PathLike, select: Callable[[str, h5py.Dataset], bool] | None = None
) -> dict[str, Any]:
    """Read every dataset of an hdf5 file, keyed by its full path (e.g. ``infos/qpos``).

    Groups are walked with ``visititems``; scalars are read with ``[()]``. ``select(name, dset)``
    can skip datasets that are not needed. Unreadable, corrupt or truncated files raise
    :class:`OffrlError` naming the file (and the dataset, when one fails to read).
    """
    path = Path(path)
    if not path.is_file():
        raise OffrlError(f"{path}: file not found")
    corrupt = "the file is corrupt or incomplete; delete it and download it again"
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise OffrlError(f"{path}: not a readable HDF5 file ({_one_line(e)}); {corrupt}") from None
    out: dict[str, Any] = {}
    name = ""
    try:
        with f:
            found: list[tuple[str, h5py.Dataset]] = []
            f.visititems(lambda n, obj: found.append((n, obj)) if isinstance(obj, h5py.Dataset) else None)
            for name, dset in found:
                if select is None or select(name, dset):
                    out[name] = dset[()]
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        where = f"cannot read '{name}'" if name else "cannot list its contents"
        raise OffrlError(f"{path}: {where} ({_one_line(e)}); {corrupt}") from None
    return out


def _is_transition_key(name: str, dset: h5py.Dataset) -> bool:
    """Keys the loader needs: transition arrays and the small scalar ``metadata/*`` entries."""
    return name in REQUIRED_KEYS or name in OPTIONAL_KEYS or (name.startswith("metadata/") and dset.shape == ())


def check_arrays(
    raw: Mapping[str, Any], source: str, obs_dim: int | None = None, act_dim: int | None = None
) -> dict[str, np.ndarray]:
    """Validate raw D4RL arrays (presence, dtype, shapes, row counts) and return them as numpy arrays.

    Per-step 1-D fields may be stored as ``(N,)`` or ``(N, 1)``; they come back as ``(N,)``.
    ``source`` (usually the file path) prefixes every error message.
    """
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise OffrlError(
            f"{source}: missing dataset '{missing[0]}' (a D4RL file needs {', '.join(REQUIRED_KEYS)}; "
            "timeouts and next_observations are optional)"
        )
    arrays: dict[str, np.ndarray] = {}
    for key in REQUIRED_KEYS + OPTIONAL_KEYS:
        if key not in raw:
            continue
        arr = np.asarray(raw[key])
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise OffrlError(f"{source}: '{key}' has dtype {arr.dtype}, expected a numeric or boolean array")
        arrays[key] = arr
    n = len(arrays["observations"]) if arrays["observations"].ndim else 0
    expected_dims = {"observations": obs_dim, "next_observations": obs_dim, "actions": act_dim}
    for key, arr in arrays.items():
        if key in expected_dims:
            dim = expected_dims[key]
            if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
                want = f"(N, {dim})" if dim is not None else "(N, dim)"
                raise OffrlError(f"{source}: '{key}' has shape {arr.shape}, expected {want}")
        else:
            if arr.ndim == 2 and arr.shape[1] == 1:
                arr = arrays[key] = arr[:, 0]
            if arr.ndim != 1:
                raise OffrlError(f"{source}: '{key}' has shape {arr.shape}, expected (N,)")
        if len(arr) != n:
            raise OffrlError(f"{source}: '{key}' has {len(arr)} rows, 'observations' has {n}")
    if n < 2:
        raise OffrlError(f"{source}: holds {n} transitions, expected at least 2")
    return arrays


def v0_timeouts(terminals: np.ndarray, max_episode_steps: int = MAX_EPISODE_STEPS) -> np.ndarray:
    """Time-limit ends for files without ``timeouts``: step ``max_episode_steps - 1`` of each episode.

    Steps are counted from 0 at the start of the file and at the row after every terminal, and
    restart after every time-limit end, as ``d4rl.qlearning_dataset``'s ``episode_step`` counter
    does, except that d4rl restarts at 1 after a terminal (ending such episodes one row early);
    here every episode ends at its ``max_episode_steps``-th step.
    """
    n = len(terminals)
    after_terminal = np.zeros(n, dtype=np.int64)
    after_terminal[1:] = np.where(terminals[:-1], np.arange(1, n), 0)
    step = np.arange(n) - np.maximum.accumulate(after_terminal)
    return (step % max_episode_steps) == max_episode_steps - 1


def qlearning_arrays(arrays: Mapping[str, np.ndarray], max_episode_steps: int = MAX_EPISODE_STEPS) -> dict[str, np.ndarray]:
    """Convert checked raw arrays into the six float32 :class:`Dataset` arrays (see module docstring)."""
    obs = np.asarray(arrays["observations"], dtype=np.float32)
    n = len(obs)
    terminals = np.asarray(arrays["terminals"]).astype(bool)
    if "timeouts" in arrays:
        timeouts = np.asarray(arrays["timeouts"]).astype(bool)
    else:
        timeouts = v0_timeouts(terminals, max_episode_steps)
    stored_next = "next_observations" in arrays
    candidates = np.arange(n if stored_next else n - 1)
    keep = candidates[~timeouts[candidates]]
    if len(keep) == 0:
        return {}
    if stored_next:
        next_obs = np.asarray(arrays["next_observations"], dtype=np.float32)[keep]
    else:
        next_obs = obs[keep + 1]
    # A kept row ends its episode without termination when the row after it was a dropped
    # timeout row; the last kept row ends the data.
    follower = keep + 1
    inside = follower < n
    ends = np.ones(len(keep), dtype=bool)
    ends[inside] = timeouts[follower[inside]]
    ends[-1] = True
    kept_terminals = terminals[keep]
    return {
        "observations": obs[keep],
        "actions": np.asarray(arrays["actions"], dtype=np.float32)[keep],
        "rewards": np.asarray(arrays["rewards"], dtype=np.float32)[keep],
        "next_observations": next_obs,
        "terminals": kept_terminals.astype(np.float32),
        "timeouts": (ends & ~kept_terminals).astype(np.float32),
    }


def _decode(value: Any) -> Any:
    """hdf5 scalar -> plain Python value (bytes decoded as UTF-8)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_d4rl(info: DatasetInfo, download: bool | None = None) -> Dataset:
    """Load a registered D4RL dataset, downloading its file first when absent and allowed."""
    path = d4rl_path(info)
    if not path.is_file():
        if download is False:
            raise OffrlError(
                f"{info.id}: {path} not found and downloading is disabled; fetch {info.url} and put it there"
            )
        if not info.url:
            raise OffrlError(f"{info.id}: {path} not found and no download URL is registered")
        download_file(info.url, path, size=info.size, sha256=info.sha256)
    raw = read_hdf5(path, select=_is_transition_key)
    arrays = check_arrays(raw, str(path), info.obs_dim, info.act_dim)
    converted = qlearning_arrays(arrays)
    if not converted:
        raise OffrlError(f"{path}: every transition is a timeout row; nothing is left to train on")
    metadata = {
        "id": info.id,
        "env_id": info.env_id,
        "ref_min_score": info.ref_min_score,
        "ref_max_score": info.ref_max_score,
        "source": "d4rl",
        "path": str(path),
        "raw_transitions": len(arrays["observations"]),
        "file_metadata": {k[len("metadata/"):]: _decode(v) for k, v in raw.items() if k.startswith("metadata/")},
    }
    try:
        return Dataset(**converted, metadata=metadata)
    except OffrlError as e:
        raise OffrlError(f"{e} (file {path})") from None


__all__ = ["d4rl_dataset_dir", "d4rl_path", "read_hdf5", "check_arrays", "v0_timeouts", "qlearning_arrays", "load_d4rl"]
