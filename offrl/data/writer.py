"""Write offrl's own datasets in Minari format, atomically.

The dataset is created under a private staging root next to the Minari root and renamed into
place only when complete, so an interrupted build never leaves a dataset that looks present.

Minari itself writes the dataset's first episode and its metadata; the other episodes are
appended with h5py in the same layout (group ``episode_<i>`` with attributes ``id`` and
``total_steps``, one dataset per field, ``infos`` as a subgroup) but stored contiguously in one
pass. Minari's own writer creates resizable chunked datasets and counts the file's groups once per
episode, which made a 50k-episode dataset (a random policy on Hopper falls within ~20 steps) take
minutes to write and over a gigabyte on disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gymnasium as gym
import numpy as np

from offrl.errors import OffrlError


@contextmanager
def _minari_root(path: str) -> Iterator[None]:
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def write_minari_dataset(
    dataset_id: str,
    episodes: list[dict[str, np.ndarray]],
    env_id: str,
    action_space,
    observation_space=None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    algorithm_name: str = "offrl",
    description: str = "",
    force: bool = False,
    metadata: dict | None = None,
    progress: bool | None = None,
) -> str:
    """Store ``episodes`` (dicts of observations (T+1), actions, rewards, terminations,
    truncations[, infos]) as the Minari dataset ``dataset_id``; returns its directory.
    ``metadata`` (JSON values) is added to the dataset's Minari metadata; ``progress`` shows a bar
    over the episodes written (default: when stderr is a terminal)."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from offrl.data.minari_io import cache_episodes, minari_path, minari_root
    from offrl.envs import quiet_mujoco

    root = str(minari_root())
    final = str(minari_path(dataset_id))
    if os.path.exists(final) and not force:
        raise OffrlError(f"{dataset_id} already exists at {final}; pass --force to rebuild it")
    try:
        os.makedirs(root, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".staging-", dir=root)
    except OSError as e:
        raise OffrlError(f"cannot write datasets under {root}: {e.strerror}") from None
    try:
        buffers = [
            EpisodeBuffer(id=i, seed=ep.get("seed"), observations=ep["observations"], actions=ep["actions"],
                          rewards=ep["rewards"], terminations=ep["terminations"], truncations=ep["truncations"],
                          infos=ep.get("infos"))
            for i, ep in enumerate(episodes[:1] if _flat(observation_space, action_space) else episodes)
        ]
        with _minari_root(staging), warnings.catch_warnings(), quiet_mujoco():  # Minari makes the env
            warnings.simplefilter("ignore")
            minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env_id, action_space=action_space, observation_space=observation_space,
                ref_min_score=ref_min_score, ref_max_score=ref_max_score, algorithm_name=algorithm_name,
                author="offrl", code_permalink="https://pypi.org/project/offrl/", description=description,
            )
            storage = minari.load_dataset(dataset_id).storage
            if len(buffers) < len(episodes):
                _append_episodes(Path(staging) / dataset_id / "data" / "main_data.hdf5", episodes[1:], start=1,
                                 progress=progress, desc=f"write {dataset_id}")
                storage.update_metadata({"total_episodes": len(episodes),
                                         "total_steps": int(sum(len(ep["rewards"]) for ep in episodes)),
                                         "dataset_size": storage.get_size()})
            if metadata:
                storage.update_metadata(metadata)
        if isinstance(observation_space, gym.spaces.Box) and isinstance(action_space, gym.spaces.Box):
            # the flat transitions cache that load_dataset would otherwise build by reading it all back
            cache_episodes(Path(staging) / dataset_id, episodes, observation_space, action_space, dataset_id)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(os.path.join(staging, dataset_id), final)
        for meta_dir in (os.path.dirname(final), os.path.dirname(os.path.dirname(final))):
            src = os.path.join(staging, os.path.relpath(meta_dir, root), "namespace_metadata.json")
            if os.path.exists(src) and not os.path.exists(os.path.join(meta_dir, "namespace_metadata.json")):
                os.replace(src, os.path.join(meta_dir, "namespace_metadata.json"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _flat(observation_space, action_space) -> bool:
    """Spaces whose episodes the fast path may write: Boxes that are not images (Minari stores an
    image space's frames JPEG-encoded, which only its own writer does)."""

    def ok(space) -> bool:
        return isinstance(space, gym.spaces.Box) and not (space.dtype == np.uint8 and len(space.shape) in (2, 3))

    return ok(observation_space) and ok(action_space)


def _append_episodes(path: Path, episodes: list[dict], start: int, progress: bool | None = None,
                     desc: str = "write") -> None:
    """Append ``episodes`` as ``episode_<start>``, ``episode_<start+1>``, ... in Minari's layout."""
    import h5py
    from tqdm import tqdm

    types: dict = {}

    def put(group, fields: dict) -> None:
        for key, value in fields.items():
            if isinstance(value, dict):
                put(group.create_group(key), value)
            elif value is not None:  # h5py's low-level calls: a contiguous dataset, written once
                value = np.ascontiguousarray(value)
                if value.ndim == 0 or value.dtype.kind not in "biuf":
                    group.create_dataset(key, data=value)
                    continue
                tid = types.get(value.dtype) or types.setdefault(value.dtype, h5py.h5t.py_create(value.dtype))
                d = h5py.h5d.create(group.id, key.encode(), tid, h5py.h5s.create_simple(value.shape))
                d.write(h5py.h5s.ALL, h5py.h5s.ALL, value)

    if progress is None:
        progress = os.isatty(2)
    with h5py.File(path, "a", track_order=True) as f, \
            tqdm(total=len(episodes), desc=desc, unit="ep", disable=not progress, dynamic_ncols=True) as bar:
        for i, ep in enumerate(episodes, start):
            g = f.create_group(f"episode_{i}")
            g.attrs["id"] = i
            if ep.get("seed") is not None:
                g.attrs["seed"] = ep["seed"]
            g.attrs["total_steps"] = len(ep["rewards"])
            put(g, {k: ep[k] for k in ("observations", "actions", "rewards", "terminations", "truncations")})
            if ep.get("infos"):
                put(g, {"infos": ep["infos"]})
            bar.update()
