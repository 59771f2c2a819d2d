"""Gymnasium-Robotics Fetch tasks for offrl (optional extra ``offrl[robotics]``): a MuJoCo 4
compatibility fix and the ResFiT-style wrapper ids ``offrl/FetchPush-v4`` and
``offrl/FetchPickAndPlace-v4``.

**The compatibility fix.** gymnasium-robotics 1.4.2 fails at ``gym.make("FetchPush-v4")`` on
MuJoCo 4.0: ``utils/mujoco_utils.set_joint_qpos`` asserts
``joint_type in (mjtJoint.mjJNT_HINGE, mjtJoint.mjJNT_SLIDE)`` with ``joint_type`` a ``np.int32``
from ``model.jnt_type``. A tuple's ``in`` compares ``enum == np.int32``, and in MuJoCo 4 that is
False for equal values (``np.int32 == enum`` is still True), so every hinge or slide joint trips the
assertion. :func:`patch_joint_accessors` probes the four joint accessors of that one module
(``set_joint_qpos``, ``set_joint_qvel``, ``get_joint_qpos``, ``get_joint_qvel``) on a one-hinge
model and replaces only those that fail with versions that compare ``int(model.jnt_type[j])``;
nothing else is touched, and nothing at all where the probe passes (another MuJoCo or a fixed
gymnasium-robotics). Fetch looks the functions up on the module (``self._utils.set_joint_qpos``),
so replacing the module attributes is enough.

**The wrapper** (:class:`FetchResFiT`, made by :func:`make_fetch_env`):

* observation: the flat float32 vector ``observation ‖ desired_goal`` (25 + 3 = 28 for Push and
  PickAndPlace). ``achieved_goal`` is left out: for these tasks it is the object position,
  ``observation[3:6]``, already. See :data:`OBS_LAYOUT` and docs/fetch.md.
* reward: sparse, ``1.0`` on the step the goal is reached (``info["is_success"]``), else ``0.0``;
* termination: success terminates the episode (as ResFiT's ``r == 1`` does); the 50-step time
  limit truncates it;
* actions: Fetch's own ``Box(-1, 1, (4,))`` (dx, dy, dz of the gripper × 5 cm, gripper).
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np

from offrl.errors import OffrlError

FETCH_TASKS = {"push": "FetchPush-v4", "pickandplace": "FetchPickAndPlace-v4"}
"""offrl's short task name -> the Gymnasium-Robotics env id."""
ENV_IDS = {task: f"offrl/{gid}" for task, gid in FETCH_TASKS.items()}
"""offrl's short task name -> the wrapper env id registered in Gymnasium."""
MAX_EPISODE_STEPS = 50
"""Fetch's own time limit (gymnasium-robotics registers the v4 tasks with 50 steps)."""
OBS_LAYOUT = {
    "grip_pos": slice(0, 3), "object_pos": slice(3, 6), "object_rel_pos": slice(6, 9),
    "gripper_state": slice(9, 11), "object_rot": slice(11, 14), "object_velp": slice(14, 17),
    "object_velr": slice(17, 20), "grip_velp": slice(20, 23), "gripper_vel": slice(23, 25),
    "desired_goal": slice(25, 28),
}
"""Slices of the flat 28-dim observation (Fetch's ``observation`` order, then ``desired_goal``)."""
OBS_DIM, ACT_DIM = 28, 4
JOINT_ACCESSORS = ("set_joint_qpos", "set_joint_qvel", "get_joint_qpos", "get_joint_qvel")
INSTALL_HINT = "pip install 'offrl[robotics]'"


# ------------------------------------------------------------------------------------ import
def require_robotics():
    """Import gymnasium_robotics (registering its envs) and apply :func:`patch_joint_accessors`
    where needed; an :class:`OffrlError` naming the extra when it is not installed."""
    import contextlib
    import io
    import warnings

    try:
        # its import prints a notice about Adroit reward versions to stderr (not about Fetch)
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import gymnasium_robotics
    except ImportError as e:
        raise OffrlError(f"the Fetch tasks need gymnasium-robotics ({e}); {INSTALL_HINT}") from None
    gym.register_envs(gymnasium_robotics)
    patch_joint_accessors()
    return gymnasium_robotics


# ------------------------------------------------------------------------ the MuJoCo 4 fix
_PROBE_XML = """<mujoco><worldbody><body><joint name="probe" type="hinge"/><geom size="0.1"/></body>
</worldbody></mujoco>"""


def broken_joint_accessors(module=None) -> list[str]:
    """The joint accessors of ``module`` (default ``gymnasium_robotics.utils.mujoco_utils``) that
    fail on a hinge joint of a one-joint model (MuJoCo 4's enum comparison, see the module doc)."""
    import mujoco

    if module is None:
        from gymnasium_robotics.utils import mujoco_utils as module
    model = mujoco.MjModel.from_xml_string(_PROBE_XML)
    data = mujoco.MjData(model)
    calls = {
        "set_joint_qpos": lambda f: f(model, data, "probe", 0.5),
        "set_joint_qvel": lambda f: f(model, data, "probe", 0.5),
        "get_joint_qpos": lambda f: f(model, data, "probe"),
        "get_joint_qvel": lambda f: f(model, data, "probe"),
    }
    broken = []
    for name, call in calls.items():
        try:
            call(getattr(module, name))
        except AssertionError:
            broken.append(name)
    return broken


def _joint_span(model, name: str, velocity: bool) -> tuple[int, int]:
    """(start, end) of joint ``name`` in qpos (or qvel), its type compared as a python int."""
    import mujoco

    joint_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
    assert joint_id != -1, f"Joint with name '{name}' is not part of the model!"
    joint_type = int(model.jnt_type[joint_id])
    if joint_type == int(mujoco.mjtJoint.mjJNT_FREE):
        ndim = 6 if velocity else 7
    elif joint_type == int(mujoco.mjtJoint.mjJNT_BALL):
        ndim = 3 if velocity else 4
    else:
        assert joint_type in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
        ndim = 1
    start = int((model.jnt_dofadr if velocity else model.jnt_qposadr)[joint_id])
    return start, start + ndim


def _setter(velocity: bool):
    def set_joint(model, data, name, value):
        start, end = _joint_span(model, name, velocity)
        value = np.array(value)
        if end - start > 1:
            assert value.shape == (end - start,), f"Value has incorrect shape {name}: {value}"
        (data.qvel if velocity else data.qpos)[start:end] = value

    set_joint.__name__ = set_joint.__qualname__ = "set_joint_qvel" if velocity else "set_joint_qpos"
    set_joint.__doc__ = f"offrl's MuJoCo 4 fix of gymnasium_robotics' {set_joint.__name__} (int joint types)."
    set_joint.offrl_patched = True
    return set_joint


def _getter(velocity: bool):
    def get_joint(model, data, name):
        start, end = _joint_span(model, name, velocity)
        return (data.qvel if velocity else data.qpos)[start:end].copy()

    get_joint.__name__ = get_joint.__qualname__ = "get_joint_qvel" if velocity else "get_joint_qpos"
    get_joint.__doc__ = f"offrl's MuJoCo 4 fix of gymnasium_robotics' {get_joint.__name__} (int joint types)."
    get_joint.offrl_patched = True
    return get_joint


FIXED_ACCESSORS = {"set_joint_qpos": _setter(False), "set_joint_qvel": _setter(True),
                   "get_joint_qpos": _getter(False), "get_joint_qvel": _getter(True)}
"""The replacements. One deliberate difference besides the int comparison: upstream's
``get_joint_qvel`` gives a ball joint 4 velocity entries; a ball joint has 3 (no Fetch task has one)."""


def patch_joint_accessors(module=None) -> list[str]:
    """Replace the joint accessors of ``module`` (default ``gymnasium_robotics.utils.mujoco_utils``)
    that fail the hinge-joint probe with :data:`FIXED_ACCESSORS`; returns the names replaced (empty
    when none needed it, e.g. on MuJoCo 3 or a fixed release, or when already patched)."""
    if module is None:
        from gymnasium_robotics.utils import mujoco_utils as module
    broken = broken_joint_accessors(module)
    for name in broken:
        setattr(module, name, FIXED_ACCESSORS[name])
    return broken


# ----------------------------------------------------------------------------- the wrapper
class FetchResFiT(gym.Wrapper):
    """A Fetch task as ResFiT uses it: flat ``observation ‖ desired_goal``, reward 1 on success
    (else 0), success terminates. ``info["is_success"]`` is passed on (offrl's evaluator reports
    ``success_rate`` from it)."""

    def __init__(self, env: gym.Env, terminate_on_success: bool = True):
        super().__init__(env)
        spaces = env.observation_space
        n_obs = spaces["observation"].shape[0] + spaces["desired_goal"].shape[0]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n_obs,), np.float32)
        self.terminate_on_success = terminate_on_success

    @staticmethod
    def flatten(obs: dict) -> np.ndarray:
        return np.concatenate([obs["observation"], obs["desired_goal"]]).astype(np.float32)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self.flatten(obs), info

    def task_state(self) -> dict:
        """What an exact resume needs beyond the MuJoCo state, the RNG and the time limit (what
        ``offrl.collector.env_state`` saves): the episode's goal, a Python attribute of the task."""
        return {"goal": np.array(self.env.unwrapped.goal, dtype=np.float64, copy=True)}

    def set_task_state(self, state: dict) -> None:
        self.env.unwrapped.goal = np.array(state["goal"], dtype=np.float64, copy=True)

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        success = bool(info.get("is_success", 0.0))
        info["is_success"] = success
        return (self.flatten(obs), float(success), bool(terminated or (success and self.terminate_on_success)),
                bool(truncated), info)


def make_fetch_env(task: str = "FetchPush-v4", max_episode_steps: int = MAX_EPISODE_STEPS,
                   terminate_on_success: bool = True, **kwargs) -> gym.Env:
    """The Gymnasium-Robotics task ``task`` (e.g. ``FetchPush-v4``) wrapped by :class:`FetchResFiT`
    (the entry point of the ``offrl/Fetch*`` ids; the compatibility fix is applied first)."""
    require_robotics()
    from offrl.envs import gym_make

    env = gym_make(task, max_episode_steps=max_episode_steps, **kwargs)
    return FetchResFiT(env, terminate_on_success=terminate_on_success)


def register_fetch_envs() -> bool:
    """Register ``offrl/FetchPush-v4`` and ``offrl/FetchPickAndPlace-v4`` in Gymnasium when
    gymnasium-robotics is installed (cheap: it is imported only when one is made). Without it the
    ids stay unknown, so a run on a Fetch dataset trains without evaluation, as for any env that is
    not installed. Returns whether they are registered."""
    if not robotics_available():
        return False
    for gid in FETCH_TASKS.values():
        env_id = f"offrl/{gid}"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="offrl.envs.robotics:make_fetch_env", kwargs={"task": gid},
                         disable_env_checker=True)
    return True


@functools.cache
def robotics_available() -> bool:
    """Whether gymnasium-robotics can be imported here."""
    import importlib.util

    return importlib.util.find_spec("gymnasium_robotics") is not None


__all__ = ["FETCH_TASKS", "ENV_IDS", "OBS_LAYOUT", "OBS_DIM", "ACT_DIM", "MAX_EPISODE_STEPS", "FetchResFiT",
           "make_fetch_env", "register_fetch_envs", "require_robotics", "patch_joint_accessors",
           "broken_joint_accessors", "FIXED_ACCESSORS", "robotics_available"]
