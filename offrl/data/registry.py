"""The dataset registry: every dataset id offrl knows, where it comes from, and one loader for all.

Three sources share one id space:

* ``"d4rl"``: D4RL hdf5 files (``hopper-medium-v2``, ``antmaze-umaze-v2``, ...), read from the D4RL
  cache and downloaded from rail.eecs.berkeley.edu with size/sha256 checks when absent;
* ``"minari"``: Minari datasets (``mujoco/hopper/medium-v0``, ``D4RL/antmaze/umaze-v1``, ...);
* ``"offrl"``: offrl's own datasets, stored in Minari format and registered by the module that
  builds them, optionally with a ``builder`` that creates the dataset when it is absent.
"""

from __future__ import annotations

import dataclasses
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Literal, TextIO

from offrl.data.d4rl import d4rl_path, load_d4rl
from offrl.data.dataset import Dataset
from offrl.data.minari_io import load_minari, minari_path, minari_present
from offrl.envs import d4rl_env_id
from offrl.errors import OffrlError, suggest

Source = Literal["d4rl", "minari", "offrl"]
SOURCES: tuple[str, ...] = ("d4rl", "minari", "offrl")


@dataclass
class DatasetInfo:
    """What offrl knows about one dataset before loading it.

    ``ref_min_score`` / ``ref_max_score`` are raw returns used for the normalized score
    100·(R − min)/(max − min) (None when unknown). ``obs_dim`` / ``act_dim`` are the expected
    flat dimensions (the D4RL reader rejects files that disagree; None skips the check).
    ``url``, ``size`` (bytes), ``sha256`` and ``filename`` describe the downloadable file of a D4RL
    dataset; ``filename`` defaults to the URL's basename. ``builder``, if set, is called as
    ``builder(info)`` to create a missing dataset before it is loaded.
    """

    id: str
    source: Source
    env_id: str | None
    ref_min_score: float | None
    ref_max_score: float | None
    obs_dim: int | None
    act_dim: int | None
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    filename: str | None = None
    description: str = ""
    builder: Callable[[DatasetInfo], None] | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise OffrlError(f"dataset '{self.id}': unknown source '{self.source}' (expected one of {', '.join(SOURCES)})")
        if self.filename is None and self.url:
            self.filename = PurePosixPath(urllib.parse.urlsplit(self.url).path).name


_REGISTRY: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo, *, overwrite: bool = False) -> DatasetInfo:
    """Add a dataset to the registry (an existing id raises unless ``overwrite``)."""
    if info.id in _REGISTRY and not overwrite:
        raise OffrlError(f"dataset '{info.id}' is already registered")
    _REGISTRY[info.id] = info
    return info


def get_info(dataset_id: str) -> DatasetInfo:
    """The registry entry of ``dataset_id``; unknown ids raise with close matches suggested."""
    try:
        return _REGISTRY[dataset_id]
    except KeyError:
        raise OffrlError(f"unknown dataset '{dataset_id}'" + suggest(dataset_id, _REGISTRY)) from None


def list_datasets(source: str | None = None) -> list[DatasetInfo]:
    """All registered datasets in registration order, optionally of one source."""
    return [info for info in _REGISTRY.values() if source is None or info.source == source]


def dataset_path(dataset_id: str) -> Path:
    """Local path of a dataset: the hdf5 file (D4RL) or the dataset directory (Minari format)."""
    info = get_info(dataset_id)
    return d4rl_path(info) if info.source == "d4rl" else minari_path(info.id)


def is_present(dataset_id: str) -> bool:
    """Whether the dataset is stored locally (no download or build needed)."""
    info = get_info(dataset_id)
    return d4rl_path(info).is_file() if info.source == "d4rl" else minari_present(info.id)


def load_dataset(dataset_id: str, *, download: bool | None = None) -> Dataset:
    """Load any registered dataset as a float32 :class:`Dataset`.

    A dataset that is not stored locally is fetched first unless ``download`` is False: D4RL files
    are downloaded and verified, Minari datasets come from the Minari remote, and datasets with a
    ``builder`` are built. Every user-fixable problem raises :class:`OffrlError`.
    """
    info = get_info(dataset_id)
    if info.builder is not None and download is not False and not is_present(dataset_id):
        info.builder(info)
        if not is_present(dataset_id):
            raise OffrlError(f"{dataset_id}: the builder ran but nothing was written at {dataset_path(dataset_id)}")
    if info.source == "d4rl":
        return load_d4rl(info, download=download)
    return load_minari(info, download=download)


# ---------------------------------------------------------------------------------- printing
def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_list(source: str | None = None, file: TextIO | None = None) -> None:
    """Print a table of registered datasets: id, source, env, dims, reference scores, presence."""
    rows = [["id", "source", "env", "obs/act", "ref min", "ref max", "present"]]
    for info in list_datasets(source):
        dims = f"{info.obs_dim if info.obs_dim is not None else '?'}/{info.act_dim if info.act_dim is not None else '?'}"
        rows.append([
            info.id, info.source, info.env_id or "-", dims,
            _score(info.ref_min_score), _score(info.ref_max_score), "yes" if is_present(info.id) else "no",
        ])
    print(_table(rows), file=file or sys.stdout)


def print_info(dataset_id: str, file: TextIO | None = None) -> None:
    """Print every registry field of a dataset, its local path and, when present, its summary."""
    out = file or sys.stdout
    info = get_info(dataset_id)
    for f in dataclasses.fields(info):
        value = getattr(info, f.name)
        if f.name == "builder" and value is not None:
            value = getattr(value, "__qualname__", repr(value))
        print(f"{f.name + ':':<15} {'-' if value is None else value}", file=out)
    present = is_present(dataset_id)
    print(f"{'path:':<15} {dataset_path(dataset_id)}", file=out)
    print(f"{'present:':<15} {'yes' if present else 'no'}", file=out)
    if present:
        ds = load_dataset(dataset_id, download=False)
        for key, value in ds.summary().items():
            shown = f"{value:.2f}" if isinstance(value, float) else value
            print(f"{key + ':':<15} {shown}", file=out)
        for key, value in _recipe_lines((ds.metadata or {}).get("minari", {}).get("offrl")):
            print(f"{key + ':':<15} {value}", file=out)


def _recipe_lines(raw) -> list[tuple[str, str]]:
    """How one of offrl's own datasets was made, from the ``offrl`` entry of its Minari metadata."""
    import json

    try:
        meta = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return []
    if not isinstance(meta, dict):
        return []
    lines = []
    if "recipe" in meta:
        lines.append(("recipe", f"{meta['recipe']} ({meta.get('protocol', '-')} protocol)"
                      + (f", collection seed {meta['seed']}" if "seed" in meta else "")))
    b = meta.get("behaviour")
    if isinstance(b, dict):
        text = b.get("note") or f"{b.get('env')} step {b.get('step')}"
        if b.get("eval_return_mean") is not None:
            text += f"; evaluation return {b['eval_return_mean']:.1f}"
        if b.get("behaviour_return_mean") is not None:
            text += f"; stochastic return {b['behaviour_return_mean']:.1f}"
            if b.get("behaviour_return_std") is not None:
                text += f" ± {b['behaviour_return_std']:.1f}"
            if b.get("behaviour_episodes"):
                text += f" over {b['behaviour_episodes']} episodes"
        lines.append(("behaviour", text))
    for key, label in (("source_run", "source run"), ("components", "components")):
        if meta.get(key):
            lines.append((label, ", ".join(meta[key]) if isinstance(meta[key], list) else meta[key]))
    for key, label in (("random_policy_return", "random return"), ("expert_policy_return", "expert return")):
        if isinstance(meta.get(key), (int, float)):
            lines.append((label, f"{meta[key]:.1f}"))
    if isinstance(meta.get("build_seconds"), (int, float)):
        lines.append(("build time", f"{meta['build_seconds']:.1f} s (producing the episodes)"))
    return lines


# ------------------------------------------------------------------------- built-in catalogue
D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"

# Reference returns from d4rl/infos.py; every dataset of a family shares them.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "antmaze": (0.0, 1.0),
}
D4RL_DIMS: dict[str, tuple[int, int]] = {
    "hopper": (11, 3), "halfcheetah": (17, 6), "walker2d": (17, 6), "ant": (111, 8), "antmaze": (29, 8),
}
D4RL_LEVELS: dict[str, str] = {
    "random": "randomly initialised SAC policy",
    "medium": "SAC policy stopped early, at about a third of expert return",
    "medium-replay": "SAC replay buffer up to the medium policy",
    "medium-expert": "medium and expert data, half each",
    "expert": "fully trained SAC policy",
    "full-replay": "whole SAC replay buffer of the expert training run",
}

# File sizes (bytes) and full sha256 from tensorflow/datasets
# tensorflow_datasets/d4rl/{d4rl_mujoco_*,d4rl_antmaze}/checksums.tsv. The one file missing there,
# antmaze medium-play-v2, is registered with its size only (see _ANTMAZE_V2), so its download is
# checked by size alone.
D4RL_CHECKSUMS: dict[str, tuple[int, str]] = {
    "hopper_expert.hdf5": (54061232, "6fea535033d962eff1427d76d7b2e0e4f57af1d4921f7ef6d917779f2968fd84"),
    "hopper_medium.hdf5": (54258063, "3e6530f00ba134b375dbae56a2120d8e6d6d0afe33d402b0aca3ed3a09fca83b"),
    "hopper_medium_expert.hdf5": (65017623, "3a024c1ecb4ff816963546d4423e2a57d8db85c9e0f4579aee9294e837d3fad0"),
    "hopper_mixed.hdf5": (10983879, "901797e3f21a963b88ced7ab36ed8361ad548b470c38a0855bc265bb4dfb3de9"),
    "hopper_random.hdf5": (54351370, "667e8a78d3460d19d3104826ad3e56abc6b3c07b34e5c179c53865c3dcc6844e"),
    "hopper_expert-v2.hdf5": (152427435, "01aa219a5f8eea5e639eccdc636ec2bf40e317159a95cf4bf6e985f16909941b"),
    "hopper_full_replay-v2.hdf5": (187998921, "56baf95963c51c1e964049a974566c50ba80f289390565523e60c0ba83e0982e"),
    "hopper_medium-v2.hdf5": (152756557, "5bdf1bc4a713c82941de44633df669b36c89850b652a25985166796d25cf71a0"),
    "hopper_medium_expert-v2.hdf5": (304537315, "9d51ad87f8c905be3880d84c6140bcdb7fbf39a19e046a237f238ba34fec9e26"),
    "hopper_medium_replay-v2.hdf5": (75854457, "e121c5f7c9857a307baa9edc6a2c3b48e85fedb9ac316ecddd0f48ca7ef4e39b"),
    "hopper_random-v2.hdf5": (152525345, "63103ef7059db4c0819bd054f4e83ff339030b50bcdb46bdbe50385f234b5054"),
    "halfcheetah_expert.hdf5": (87495442, "1959944d9dbff4a7e7ebcd38436a1fbf1599eda4b7e1f223c6157f7504e126d8"),
    "halfcheetah_medium.hdf5": (86943361, "fcaf602daa063c3031b9c36b777342a1ba669b41eaa6113258ecb9fb789768c3"),
    "halfcheetah_medium_expert.hdf5": (174437297, "c9c90f6b9fca3caa662d6a1f89808171bdb4050bab1db05d24bd85d909a333f1"),
    "halfcheetah_mixed.hdf5": (9016685, "61270f65dcadddae451607eeec68fdae50d0d6ae73fab185d9fc1979cc4f385d"),
    "halfcheetah_random.hdf5": (88909895, "5ba6381942a5110069c78cdaabdeacf1847b970c5b2e72ea5be1756896363fa5"),
    "halfcheetah_expert-v2.hdf5": (237464597, "d9fe53bb994eb1e20a99b4fa3412cd76a1bb7966a7ff55e0fcbdd6081bd2965f"),
    "halfcheetah_full_replay-v2.hdf5": (291381762, "27fdf7ea86e5a2cbd24d611ae9e703c86ec2e8e52823abc69dd9af6afb3a36c0"),
    "halfcheetah_medium-v2.hdf5": (237727262, "41324e8487a9556d8cfa4538827f8937f4d63dae3030825ebc9f3a726ed08ca0"),
    "halfcheetah_medium_expert-v2.hdf5": (474567252, "015db75dae5bbe8e94029b71fa0bafc2073365df0c94744e71031189f3f79c06"),
    "halfcheetah_medium_replay-v2.hdf5": (59448533, "48d494a4770c11f48260736dec090b78bdca8375647ed4d24bfa5b6610c7f683"),
    "halfcheetah_random-v2.hdf5": (237338037, "25407aef85b5d16c0f36b4149341edb4acc6a9e88c1db529b2de19e7464874ba"),
    "walker2d_expert.hdf5": (82216946, "6b24651d8643f608bc15b579a2315562935bf06de073a73ec9fb6dfe2b385aa2"),
    "walker2d_medium.hdf5": (84756933, "181a62086f3f287759201a9643e805b9e56438a8532a3915825dbaa6555bd173"),
    "walker2d_medium_expert.hdf5": (166972341, "62b612b2fe593142391b52c1ee04814ea8ba36df5de007969ec50b8b1455f245"),
    "walker2d_random.hdf5": (82217081, "b68931aeb97c9c550f69c2054f2f303bd2a3621385001af82bf0db86fd04b2ed"),
    "walker_mixed.hdf5": (8832937, "d23588d4e07e58cbc276efea183edaa26eede5a44a1c2265adc8cdb6f68a56c7"),
    "walker2d_expert-v2.hdf5": (230567195, "2985dc3d436a8baa10e8f43f946fe1d7c6337a4e4fbc65def70618093b18c59a"),
    "walker2d_full_replay-v2.hdf5": (285115514, "f2720f9d27b2acef6ec9a7d9ad3b80b6c2078ad4467cee668a81e3b3c80bcf2a"),
    "walker2d_medium-v2.hdf5": (232254996, "cf00f43add04c17fdfc2958dd581dea0851b2e5bedbe6fda073758a8f841aeda"),
    "walker2d_medium_expert-v2.hdf5": (462197079, "6b8d7f868c45bbaedf460be797fb7271b46dee6ebe45fe7a64319f2005b59a04"),
    "walker2d_medium_replay-v2.hdf5": (86323963, "e75de96a4f77acf7d4e0d6fdf0d7ccb177c26c44bb4388e4fd99f543ccfa18db"),
    "walker2d_random-v2.hdf5": (216109364, "4e863bb6090cf4a461548bd470564b32f1ae5b32ef3085f816b2ede7f092e7fa"),
    "ant_expert.hdf5": (137721019, "6829ed2ed8b18bf6cc5b2da725e393adc538868b85373135fa17619a72f8facc"),
    "ant_medium.hdf5": (137772317, "0f456327bbc9c49242c34f8206122ba7b3db97879f8ae540d26e3b918bacd1b8"),
    "ant_medium_expert.hdf5": (275497006, "61a238d8378b5350b3cb7bdefb375f2faf42df95bc1ed28209b028e712b04c88"),
    "ant_mixed.hdf5": (109716945, "4e967dacf82a0927333e5fbd8e4e21883ff6285ebe24084c6eca6534603742a4"),
    "ant_random.hdf5": (146281376, "6288d0e348ba92b7958254025df5f65adef4b1e741bf83cc06178bd2b1500b01"),
    "ant_expert-v2.hdf5": (373231677, "fa22531ca79ea051006fa48bb652120d2e12c813919c530369a03c2688311b0f"),
    "ant_full_replay-v2.hdf5": (449390167, "b95b0a7f34b1d5d1bedfded0f8e9cfc508b59de83cd4cbfb65b18dbd5056f26c"),
    "ant_medium-v2.hdf5": (376239825, "461c03b9f70f40d66b47608a92965e4ef3642bd9cdb1320d10acc92754167137"),
    "ant_medium_expert-v2.hdf5": (748335217, "8cfb64e62d8944b5d9dada5f0cfc13a295fafe0c6ba58b778e32ebf16c95aef1"),
    "ant_medium_replay-v2.hdf5": (136482252, "844c4e5743ef51091f2106a3570b257fb149032c4743f8a5f02f40adc3b42a46"),
    "ant_random-v2.hdf5": (384466831, "93cc10893eed2b8e17f81d1aa51dc23d27c5ca101a3804249f6bd038c6f06055"),
    "Ant_maze_big-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5": (231095166, "ad9dcbac05d1f8744a7a216083f513662f43f64f28a4a5eb225e9811902dfae7"),
    "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5": (230880653, "6d353df2457829925d7f9d4b0215587469908bd57478ea76f16417cfa944f471"),
    "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5": (231183710, "84f775eb7956ea9cc766704710dc520a8ab357adc7522ade47f556f0e335e284"),
    "Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5": (232532949, "5ef15257771c50ef4d23c7de001750e96c8bb5d9b6a5e4a821dcfb3065fbd130"),
    "Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5": (230854272, "c771dd63963cd7d9f55f24a6d809064f6b82250a6aeac4c9d13f9a1d06e8c932"),
}

# antmaze v2 task -> (file in ant_maze_v2/, description), from d4rl/locomotion/__init__.py.
_ANTMAZE_V2: dict[str, tuple[str, str]] = {
    "umaze": ("Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5", "U maze, fixed start and goal"),
    "umaze-diverse": ("Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5", "U maze, random starts and goals"),
    "medium-play": ("Ant_maze_big-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5", "medium maze, random starts, fixed goal"),
    "medium-diverse": ("Ant_maze_big-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5", "medium maze, random starts and goals"),
    "large-play": ("Ant_maze_hardest-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5", "large maze, random starts, fixed goal"),
    "large-diverse": ("Ant_maze_hardest-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5", "large maze, random starts and goals"),
}
# Not in the TFDS checksum list: the size comes from a third-party download log whose other
# antmaze sizes and hash prefixes all agree with TFDS; no full sha256 is known, so size only.
_SIZE_ONLY: dict[str, int] = {
    "Ant_maze_big-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5": 231110764,
}


def _d4rl_info(dataset_id: str, family: str, url: str, description: str) -> DatasetInfo:
    filename = PurePosixPath(url).name
    size, sha256 = D4RL_CHECKSUMS.get(filename, (_SIZE_ONLY.get(filename), None))
    ref_min, ref_max = D4RL_REF_SCORES[family]
    obs_dim, act_dim = D4RL_DIMS[family]
    return DatasetInfo(
        id=dataset_id, source="d4rl", env_id=d4rl_env_id(dataset_id), ref_min_score=ref_min, ref_max_score=ref_max,
        obs_dim=obs_dim, act_dim=act_dim, url=url, size=size, sha256=sha256, filename=filename,
        description=description,
    )


def _v0_filename(env: str, level: str) -> str:
    if level == "medium-replay":
        return f"{'walker' if env == 'walker2d' else env}_mixed.hdf5"
    return f"{env}_{level.replace('-', '_')}.hdf5"


# Minari mujoco/* v0 sets (Gymnasium v5 envs, SB3 policies; no reference scores).
_MINARI_MUJOCO: dict[str, tuple[str, int, int, tuple[str, ...]]] = {
    "hopper": ("Hopper-v5", 11, 3, ("simple", "medium", "expert")),
    "halfcheetah": ("HalfCheetah-v5", 17, 6, ("simple", "medium", "expert")),
    "walker2d": ("Walker2d-v5", 17, 6, ("simple", "medium", "expert")),
    "ant": ("Ant-v5", 105, 8, ("simple", "medium")),
    "pusher": ("Pusher-v5", 23, 7, ("medium", "expert")),
    "reacher": ("Reacher-v5", 10, 2, ("medium", "expert")),
}
# Minari D4RL/antmaze v1 -> env id recorded by the dataset (gymnasium-robotics, not an offrl
# dependency). Observations are Dict(achieved_goal 2, desired_goal 2, observation 27), flattened to 31.
_MINARI_ANTMAZE: dict[str, str] = {
    "umaze": "AntMaze_UMaze-v4",
    "umaze-diverse": "AntMaze_UMaze-v4",
    "medium-play": "AntMaze_Medium-v4",
    "medium-diverse": "AntMaze_Medium_Diverse_GR-v4",
    "large-play": "AntMaze_Large-v4",
    "large-diverse": "AntMaze_Large_Diverse_GR-v4",
}


def _register_builtins() -> None:
    for family in ("hopper", "halfcheetah", "walker2d", "ant"):
        for level, what in D4RL_LEVELS.items():
            url = f"{D4RL_URL}/gym_mujoco_v2/{family}_{level.replace('-', '_')}-v2.hdf5"
            register(_d4rl_info(f"{family}-{level}-v2", family, url, f"D4RL {family}: {what}"))
        for level, what in D4RL_LEVELS.items():
            if level == "full-replay":
                continue  # no v0 release
            url = f"{D4RL_URL}/gym_mujoco/{_v0_filename(family, level)}"
            register(_d4rl_info(f"{family}-{level}-v0", family, url, f"D4RL {family} (v0, no timeouts): {what}"))
    for task, (filename, what) in _ANTMAZE_V2.items():
        url = f"{D4RL_URL}/ant_maze_v2/{filename}"
        register(_d4rl_info(f"antmaze-{task}-v2", "antmaze", url, f"D4RL antmaze: {what}; sparse reward"))
    for family, (env_id, obs_dim, act_dim, levels) in _MINARI_MUJOCO.items():
        for level in levels:
            register(DatasetInfo(
                id=f"mujoco/{family}/{level}-v0", source="minari", env_id=env_id, ref_min_score=None,
                ref_max_score=None, obs_dim=obs_dim, act_dim=act_dim,
                description=f"Minari {env_id}: {level} SB3 policy, 1M steps",
            ))
    for task, env_id in _MINARI_ANTMAZE.items():
        register(DatasetInfo(
            id=f"D4RL/antmaze/{task}-v1", source="minari", env_id=env_id, ref_min_score=None,
            ref_max_score=None, obs_dim=31, act_dim=8,
            description=f"Minari re-creation of D4RL antmaze-{task} (reference scores in its metadata)",
        ))


_register_builtins()

__all__ = [
    "DatasetInfo", "register", "get_info", "list_datasets", "dataset_path", "is_present", "load_dataset",
    "print_list", "print_info", "D4RL_REF_SCORES",
]
