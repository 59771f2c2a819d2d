"""Environment factories: Gymnasium MuJoCo envs by id, D4RL name mapping, wrappers.

D4RL's locomotion data was collected on gym ``-v2`` MuJoCo envs through mujoco-py (MuJoCo 2.0).
Neither can be installed next to modern Gymnasium, so offrl evaluates D4RL datasets on the
closest Gymnasium env (``-v5`` on the ``mujoco`` bindings). Observation and action spaces have
the same shapes and meanings for hopper, halfcheetah and walker2d; the dynamics differ in small
ways (MuJoCo version, v5 fixes to contact and reward terms), so returns are close but not
number-for-number comparable with papers. See docs/datasets.md.
"""

from __future__ import annotations

import contextlib

import gymnasium as gym
import numpy as np

from offrl.errors import OffrlError, suggest

# D4RL env family -> (Gymnasium env id, caveat). None means no Gymnasium counterpart.
D4RL_ENV_MAP: dict[str, tuple[str | None, str]] = {
    "hopper": ("Hopper-v5", "gym Hopper-v2 on mujoco-py; same 11-d obs / 3-d action"),
    "halfcheetah": ("HalfCheetah-v5", "gym HalfCheetah-v2 on mujoco-py; same 17-d obs / 6-d action"),
    "walker2d": ("Walker2d-v5", "gym Walker2d-v2 on mujoco-py; same 17-d obs / 6-d action"),
    "ant": (
        "Ant-v5",
        "gym Ant-v2 has a 111-d obs (84 contact forces); Ant-v5 has 105 (or 27 without contact "
        "forces), so D4RL ant data cannot be evaluated on it",
    ),
    "antmaze": (None, "needs D4RL's AntMaze (gymnasium-robotics AntMaze differs); no evaluation env"),
}


def d4rl_env_id(dataset_name: str) -> str | None:
    """Gymnasium env id for a D4RL dataset name such as ``hopper-medium-v2`` (None if none)."""
    family = dataset_name.split("-")[0]
    if family not in D4RL_ENV_MAP:
        raise OffrlError(f"unknown D4RL env family '{family}' in '{dataset_name}'" + suggest(family, D4RL_ENV_MAP))
    return D4RL_ENV_MAP[family][0]


# D4RL reference scores by env family (d4rl/infos.py), so online returns read like the literature
_REF_SCORES = {"Hopper": (-20.272305, 3234.3), "HalfCheetah": (-280.178953, 12135.0),
               "Walker2d": (1.629008, 4592.3), "Ant": (-325.6, 3879.7)}


def reference_scores(env_id: str) -> tuple[float | None, float | None]:
    """D4RL (min, max) reference returns for a Gymnasium locomotion env id, else (None, None)."""
    return _REF_SCORES.get(env_id.split("-")[0], (None, None))


# MuJoCo compiler warnings about Gymnasium's own model files that a user can do nothing about
# (MuJoCo >= 3.3 deprecates HalfCheetah's settotalmass). Anything else is passed on.
_HARMLESS_MUJOCO_WARNINGS = ("compiler attribute 'settotalmass' is deprecated",)


@contextlib.contextmanager
def quiet_mujoco():
    """Within the block, MuJoCo's known-harmless model-compiler warnings are dropped (MuJoCo would
    print them and write MUJOCO_LOG.TXT into the working directory) and other MuJoCo warnings
    become Python ``RuntimeWarning``s. For code that builds MuJoCo models itself (Minari makes the
    env from its id when writing a dataset); the previous handler is restored afterwards."""
    try:
        import mujoco
    except ImportError:  # not a MuJoCo env stack
        yield
        return
    import warnings

    def handler(message: str) -> None:
        if not message.startswith(_HARMLESS_MUJOCO_WARNINGS):
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def gym_make(env_id: str, **kwargs) -> gym.Env:
    """``gym.make`` inside :func:`quiet_mujoco`."""
    with quiet_mujoco():
        return gym.make(env_id, **kwargs)


def _check_env_id(env_id: str) -> None:
    if env_id not in gym.registry:
        raise OffrlError(f"unknown environment '{env_id}'" + suggest(env_id, gym.registry.keys()))


def _unit_actions(env: gym.Env) -> gym.Env:
    """offrl agents act in [-1, 1]: rescale a Box action space with other finite bounds."""
    space = env.action_space
    if isinstance(space, gym.spaces.Box) and np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high)):
        if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
            ones = np.ones(space.shape, dtype=np.float32)
            env = gym.wrappers.RescaleAction(env, -ones, ones)
    return env


def make_env(env_id: str, seed: int | None = None, **kwargs) -> gym.Env:
    """Make one Gymnasium env by id (e.g. ``Hopper-v5``), optionally seeded (reset + action space).

    Box actions are rescaled to [-1, 1] (a no-op for the MuJoCo locomotion envs, whose bounds
    already are ±1), so every offrl agent and dataset works in the unit action box.
    """
    _check_env_id(env_id)
    env = _unit_actions(gym_make(env_id, **kwargs))
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vec_env(env_id: str, num_envs: int, seed: int | None = None, **kwargs) -> gym.vector.VectorEnv:
    """A synchronous vector env of ``num_envs`` copies (actions in [-1, 1] as :func:`make_env`);
    sub-env i is seeded with ``seed + i``."""
    _check_env_id(env_id)
    venv = gym.vector.SyncVectorEnv([lambda: make_env(env_id, **kwargs) for _ in range(num_envs)])
    if seed is not None:
        venv.reset(seed=[seed + i for i in range(num_envs)])
        venv.action_space.seed(seed)
    return venv


def env_dims(env_id: str) -> tuple[int, int]:
    """(obs_dim, act_dim) of a Box-space env."""
    env = make_env(env_id)
    try:
        return int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    finally:
        env.close()


# Fetch (gymnasium-robotics, the optional extra offrl[robotics]): offrl/FetchPush-v4 and
# offrl/FetchPickAndPlace-v4, registered here; the package is imported only when one is made.
from offrl.envs.robotics import register_fetch_envs as _register_fetch_envs  # noqa: E402

_register_fetch_envs()

__all__ = ["D4RL_ENV_MAP", "reference_scores", "d4rl_env_id", "make_env", "make_vec_env", "env_dims",
           "gym_make", "quiet_mujoco"]
