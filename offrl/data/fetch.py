"""Scripted Fetch demonstrations (needs the extra ``offrl[robotics]``), rebuilt by recipe:

* ``offrl/fetch/push-scripted-v0`` — ``offrl/FetchPush-v4``, :class:`offrl.envs.fetch_scripted.PushController`;
* ``offrl/fetch/pickandplace-scripted-v0`` — ``offrl/FetchPickAndPlace-v4``,
  :class:`offrl.envs.fetch_scripted.PickAndPlaceController`.

``offrl datasets make ID`` rolls the task's state-machine controller out for 100 (push) or 300
(pick-and-place) episodes (:data:`EPISODES`; episode i from ``reset(seed=SEED + i)``, no action
noise), ResFiT-style: the flat observation
``observation ‖ desired_goal`` (28 dims), reward 1 on the success step and 0 otherwise, success
terminates the episode, the 50-step time limit truncates it. ``--transitions N`` collects whole
episodes until they hold at least N steps instead; the Python builder also takes ``episodes``,
``noise`` (Gaussian action noise σ) and ``seed``. The ``offrl`` metadata entry stores the recipe,
the controller, and every episode's seed, success and length (``episode_success``,
``episode_lengths``) with the success rate. Reference scores 0 and 1: the normalized score of an
evaluation is its success rate in percent.
"""

from __future__ import annotations

import json
import time

import numpy as np

from offrl.data.registry import DatasetInfo, register
from offrl.errors import OffrlError

TASKS = {"push": "offrl/FetchPush-v4", "pickandplace": "offrl/FetchPickAndPlace-v4"}
EPISODES = {"push": 100, "pickandplace": 300}
"""Demos per dataset by default: cloning 100 push demos or 300 pick-and-place demos gives a base policy
of roughly 30-70 % success (docs/fetch.md), the weak base that ResFiT's residual starts from."""
SEED = 0


def dataset_id(task: str) -> str:
    return f"offrl/fetch/{task}-scripted-v0"


def collect(task: str, episodes: int | None = None, seed: int = SEED, noise: float = 0.0,
            num_transitions: int | None = None) -> list[dict]:
    """Scripted episodes of ``task``: ``episodes`` of them, or (``num_transitions`` set) whole
    episodes until they hold at least that many steps. Each dict also has ``success``."""
    from offrl.envs import make_env
    from offrl.envs.fetch_scripted import CONTROLLERS, rollout

    episodes = EPISODES[task] if episodes is None else episodes
    if num_transitions is None and episodes < 1:
        raise OffrlError(f"episodes must be positive, got {episodes}")
    env = make_env(TASKS[task])
    ctrl = CONTROLLERS[task](noise=noise, seed=seed)
    out, total = [], 0
    try:
        while (len(out) < episodes) if num_transitions is None else (total < num_transitions):
            ep = rollout(env, ctrl, seed + len(out))
            out.append(ep)
            total += len(ep["actions"])
    finally:
        env.close()
    return out


def build(info: DatasetInfo, force: bool = False, num_transitions: int | None = None, episodes: int | None = None,
          noise: float = 0.0, seed: int = SEED, progress: bool | None = None) -> str:
    """Build ``info.id`` (the registry's builder hook; module doc)."""
    import gymnasium as gym

    from offrl.data.minari_io import check_minari_root
    from offrl.data.writer import write_minari_dataset
    from offrl.envs.fetch_scripted import CONTROLLERS
    from offrl.envs.robotics import ACT_DIM, OBS_DIM, require_robotics

    task = info.id.split("/")[2].removesuffix("-scripted-v0")
    if task not in TASKS:
        raise OffrlError(f"{info.id} is not one of the Fetch recipes")
    if num_transitions is not None and num_transitions < 1:
        raise OffrlError(f"num_transitions must be positive, got {num_transitions}")
    if noise < 0:
        raise OffrlError(f"noise must be >= 0, got {noise}")
    require_robotics()  # the one-line install hint before anything else
    check_minari_root()
    t0 = time.time()
    eps = collect(task, episodes, seed, noise, num_transitions)
    success = [bool(e.pop("success")) for e in eps]
    lengths = [len(e["actions"]) for e in eps]
    extra = {
        "recipe": f"{task}-scripted", "protocol": "resfit", "seed": seed, "noise": float(noise),
        "controller": CONTROLLERS[task].__name__, "episodes": len(eps),
        "success_rate": float(np.mean(success)), "length_mean": float(np.mean(lengths)),
        "episode_seeds": [int(e["seed"]) for e in eps], "episode_success": success, "episode_lengths": lengths,
        "build_seconds": round(time.time() - t0, 1),
    }
    return write_minari_dataset(
        info.id, eps, TASKS[task], action_space=gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32), ref_min_score=0.0,
        ref_max_score=1.0, algorithm_name=f"offrl-scripted-{task}", force=force, description=info.description,
        metadata={"offrl": json.dumps(extra)}, progress=progress,
    )


_DESCRIPTIONS = {
    "push": "FetchPush-v4 (ResFiT-style: sparse, success terminates), scripted push controller, 100 demos",
    "pickandplace": "FetchPickAndPlace-v4 (ResFiT-style: sparse, success terminates), scripted grasp-and-carry controller, 300 demos",
}

for _task, _env_id in TASKS.items():
    register(DatasetInfo(
        id=dataset_id(_task), source="offrl", env_id=_env_id, ref_min_score=0.0, ref_max_score=1.0, obs_dim=28,
        act_dim=4, description=_DESCRIPTIONS[_task], builder=build,
    ))
