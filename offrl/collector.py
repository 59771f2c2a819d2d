"""The collector: steps a vector env with an action function and emits transitions to sinks.

``Collector(env_id, num_envs, seed).step(act_fn)`` calls ``act_fn(obs) -> (actions, extras)``
(extras: per-env arrays such as log-probabilities and values), steps every copy, and hands one
:class:`Transition` to each sink: a replay buffer (:class:`ReplaySink`), on-policy rollout storage,
or the dataset recorder (:mod:`offrl.data.recorder`). It knows no buffer, no algorithm, no loop.

Two backends step the copies (``backend=``): ``"gymnasium"``, a same-step-autoreset
``SyncVectorEnv`` of :func:`offrl.envs.make_env` copies (any env), and ``"batched"``,
:class:`offrl.envs.batched.BatchedLocomotion` (Hopper-v5, Walker2d-v5, HalfCheetah-v5: all copies in
one MuJoCo call and numpy). Their transitions, episode statistics, random actions and checkpoints
are the same for the same seed (``tests/test_collector_backends.py``); only the speed and
``Transition.info`` differ. ``"auto"`` (the default) picks by :func:`resolve_backend`.

Truncation (time limit) is not termination: ``term`` is the environment's termination only, and
``next_obs`` of a truncated or terminated step is the true final observation (same-step autoreset),
while ``collector.obs`` already holds the next episode's first observation. No reset step is ever
emitted. A collector's state (every copy's MuJoCo integration state, time-limit counter and RNG,
the episode accumulators) is checkpointable, so a resumed run continues exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch


@dataclass
class Transition:
    """One vector step: per-copy arrays (leading dim = num_envs)."""

    obs: np.ndarray
    act: np.ndarray
    rew: np.ndarray
    next_obs: np.ndarray
    """The true next observation (the final one where an episode ended)."""
    term: np.ndarray
    trunc: np.ndarray
    extras: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> np.ndarray:
        """The episode ended (terminated or truncated)."""
        return self.term | self.trunc


class ReplaySink:
    """Appends transitions to a replay buffer (raw rows; the buffer's transform applies). Extras
    named like the buffer's extra columns are stored with them."""

    def __init__(self, buffer):
        self.buffer = buffer

    def __call__(self, tr: Transition) -> None:
        extra = {k: tr.extras[k] for k in self.buffer.columns[5:]}
        self.buffer.add(tr.obs, tr.act, tr.rew, tr.next_obs, tr.term.astype(np.float32), **extra)


class RolloutSink:
    """Adds transitions to on-policy rollout storage (:class:`offrl.rollout.RolloutStorage`):
    the actions' ``logp`` and ``value`` extras, and for an episode truncated by the time limit the
    value of its true final observation (``value_fn(final_obs)``), so the algorithm may bootstrap
    from it. Other extras named like the storage's are stored with them."""

    def __init__(self, storage, value_fn: Callable[[np.ndarray], np.ndarray]):
        self.storage, self.value_fn = storage, value_fn

    def __call__(self, tr: Transition) -> None:
        final_value = np.zeros(len(tr.rew), np.float32)
        cut = tr.trunc & ~tr.term
        if cut.any():
            final_value[cut] = self.value_fn(tr.next_obs[cut])
        extra = {k: tr.extras[k] for k in self.storage.extras}
        self.storage.add(tr.obs, tr.act, tr.extras["logp"], tr.extras["value"], tr.rew, tr.term, tr.trunc,
                         final_value, **extra)


# ------------------------------------------------------------------------------------ env state
def _time_limit(env: gym.Env):
    while env is not None:
        if isinstance(env, gym.wrappers.TimeLimit):
            return env
        env = getattr(env, "env", None)
    return None


def _task_state_owner(env: gym.Env):
    """The wrapper (or env) in ``env``'s chain with ``task_state``/``set_task_state`` (episode state
    that lives in Python attributes, e.g. a Fetch task's goal), or None."""
    e = env
    while e is not None:
        if callable(getattr(type(e), "task_state", None)) and callable(getattr(type(e), "set_task_state", None)):
            return e
        e = getattr(e, "env", None)
    return None


def env_state(env: gym.Env) -> dict:
    """Exact state of one (MuJoCo) env: integration state, time-limit counter, RNG, and the task
    state of a wrapper that defines ``task_state()`` / ``set_task_state(state)`` (saved as tensors)."""
    import mujoco

    u = env.unwrapped
    state = {"rng": json.dumps(u.np_random.bit_generator.state)}
    owner = _task_state_owner(env)
    if owner is not None:
        state["task"] = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in owner.task_state().items()}
    if hasattr(u, "model") and hasattr(u, "data"):
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        buf = np.empty(mujoco.mj_stateSize(u.model, spec))
        mujoco.mj_getState(u.model, u.data, buf, spec)
        state["mujoco"] = torch.from_numpy(buf)
    tl = _time_limit(env)
    if tl is not None:
        state["elapsed"] = int(tl._elapsed_steps or 0)
    return state


def set_env_state(env: gym.Env, state: dict) -> None:
    import mujoco

    u = env.unwrapped
    if "mujoco" in state:
        mujoco.mj_setState(u.model, u.data, state["mujoco"].numpy().astype(np.float64), mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(u.model, u.data)
    u.np_random.bit_generator.state = json.loads(state["rng"])
    owner = _task_state_owner(env)
    if owner is not None and "task" in state:
        owner.set_task_state({k: v.numpy().copy() for k, v in state["task"].items()})
    tl = _time_limit(env)
    if tl is not None and "elapsed" in state:
        tl._elapsed_steps = state["elapsed"]


BACKENDS = ("auto", "gymnasium", "batched")
# env kwargs the batched stepper reads from the constructed env (anything else: Gymnasium)
_BATCHED_KWARGS = frozenset({"max_episode_steps", "xml_file", "frame_skip", "forward_reward_weight", "ctrl_cost_weight",
                             "healthy_reward", "terminate_when_unhealthy", "healthy_state_range", "healthy_z_range",
                             "healthy_angle_range", "reset_noise_scale"})


def batched_unsupported(env_id: str, wrap=None, **env_kwargs) -> str | None:
    """Why the batched backend cannot step ``env_id`` with these arguments (None: it can)."""
    from offrl.envs.batched import SUPPORTED

    if env_id not in SUPPORTED:
        return f"the batched backend supports {', '.join(SUPPORTED)}; got {env_id}"
    if wrap is not None:
        return "the batched backend cannot apply a per-copy wrapper (wrap=...; e.g. --record)"
    other = sorted(set(env_kwargs) - _BATCHED_KWARGS)
    if other:
        return f"the batched backend does not take the env arguments {', '.join(other)}"
    return None


def resolve_backend(env_id: str, num_envs: int, backend: str = "auto", wrap=None, **env_kwargs) -> str:
    """``"gymnasium"`` or ``"batched"`` for ``backend`` (one of :data:`BACKENDS`).

    ``auto``: ``batched`` for Hopper-v5, Walker2d-v5 and HalfCheetah-v5 (any number of copies: it
    was faster than Gymnasium for 1, 4 and 8 copies, docs/ppo.md) without ``wrap`` and with only env
    arguments it reads; else ``gymnasium``. ``batched`` where it does not apply is an error.
    """
    from offrl.errors import OffrlError

    if backend not in BACKENDS:
        raise OffrlError(f"env backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend == "gymnasium":
        return backend
    why = batched_unsupported(env_id, wrap, **env_kwargs)
    if backend == "batched":
        if why is not None:
            raise OffrlError(why)
        return backend
    return "batched" if why is None else "gymnasium"


class Collector:
    """Steps a same-step-autoreset vector env of ``num_envs`` copies and emits to ``sinks``.

    ``wrap``: an optional function applied to each copy's env (e.g. the recorder's physics probe;
    Gymnasium backend only). ``backend``: ``"auto"``, ``"gymnasium"`` or ``"batched"``
    (:func:`resolve_backend`; ``self.backend`` is the one used). The batched backend steps all
    copies on the calling thread: on a 2-core machine, more threads did not make a vector step of
    up to 8 Hopper copies faster (waking them costs about as much as the step).
    """

    def __init__(self, env_id: str, num_envs: int, seed: int, sinks: Sequence[Callable[[Transition], None]] = (),
                 wrap: Callable[[gym.Env], gym.Env] | None = None, backend: str = "auto", **env_kwargs):
        self.backend = resolve_backend(env_id, num_envs, backend, wrap, **env_kwargs)
        if self.backend == "batched":
            from offrl.envs.batched import BatchedLocomotion

            self.venv = BatchedLocomotion(env_id, num_envs, seed, threads=1, **env_kwargs)
            self.obs = self.venv.obs.copy()
            # the vector action space of SyncVectorEnv: the same space, seeded the same way
            self.action_space = gym.vector.utils.batch_space(self.venv.single_action_space, num_envs)
        else:
            from offrl.envs import make_env

            def make():
                env = make_env(env_id, **env_kwargs)
                return wrap(env) if wrap is not None else env

            self.venv = gym.vector.SyncVectorEnv([make for _ in range(num_envs)],
                                                 autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
            self.obs, _ = self.venv.reset(seed=[seed + i for i in range(num_envs)])
            self.action_space = self.venv.action_space
        self.action_space.seed(seed)
        self.num_envs = num_envs
        self.sinks = list(sinks)
        self.ep_return = np.zeros(num_envs)
        self.ep_length = np.zeros(num_envs, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []

    def random_actions(self) -> np.ndarray:
        """Uniform actions from the vector action space (its own checkpointed RNG)."""
        return self.action_space.sample()

    def physics(self) -> tuple[np.ndarray, np.ndarray]:
        """``qpos``, ``qvel`` of every sub-env now (the state the current ``obs`` shows)."""
        if self.backend == "batched":
            return self.venv.qpos.copy(), self.venv.qvel.copy()
        data = [e.unwrapped.data for e in self.venv.envs]
        return np.stack([d.qpos for d in data]), np.stack([d.qvel for d in data])

    def step(self, act_fn: Callable[[np.ndarray], tuple[np.ndarray, dict]]) -> Transition:
        """One vector step with the actions ``act_fn(self.obs)`` gives; returns the transition."""
        actions, extras = act_fn(self.obs)
        for sink in self.sinks:
            before = getattr(sink, "before_step", None)
            if before is not None:
                before(self)
        if self.backend == "batched":
            next_obs, rew, term, trunc, real_next = self.venv.step(actions)
            done, info = term | trunc, {}
        else:
            next_obs, rew, term, trunc, info = self.venv.step(actions)
            done = term | trunc
            real_next = next_obs.copy()
            if done.any():
                real_next[done] = np.stack(info["final_obs"][done])
        tr = Transition(self.obs, actions, rew, real_next, term, trunc, extras, info)
        for sink in self.sinks:
            sink(tr)
        self.ep_return += rew
        self.ep_length += 1
        for i in np.flatnonzero(done):
            self.finished.append((float(self.ep_return[i]), int(self.ep_length[i])))
            self.ep_return[i], self.ep_length[i] = 0.0, 0
        self.obs = next_obs
        return tr

    def pop_finished(self) -> dict[str, float]:
        """Mean return and length of the episodes finished since the last call."""
        if not self.finished:
            return {}
        r = np.array([f[0] for f in self.finished])
        n = np.array([f[1] for f in self.finished])
        self.finished = []
        return {"episode_return": float(r.mean()), "episode_length": float(n.mean()), "episodes": float(len(r))}

    def state_dict(self) -> dict:
        """The same format for both backends (a checkpoint of one resumes on the other)."""
        envs = self.venv.state_dict()["envs"] if self.backend == "batched" else [env_state(e) for e in self.venv.envs]
        return {"envs": envs, "obs": torch.from_numpy(np.array(self.obs)),
                "ep_return": torch.from_numpy(self.ep_return.copy()), "ep_length": torch.from_numpy(self.ep_length.copy()),
                "action_space_rng": json.dumps(self.action_space.np_random.bit_generator.state),
                "finished": json.dumps(self.finished)}  # episodes ended since the last log row

    def load_state_dict(self, state: dict) -> None:
        from offrl.errors import OffrlError

        if len(state["envs"]) != self.num_envs:
            raise OffrlError(f"the collector state has {len(state['envs'])} env copies, this collector has {self.num_envs}")
        if self.backend == "batched":
            self.venv.load_state_dict({"envs": state["envs"]})
        else:
            for e, s in zip(self.venv.envs, state["envs"]):
                set_env_state(e, s)
        self.obs = state["obs"].numpy().copy()
        self.ep_return = state["ep_return"].numpy().copy()
        self.ep_length = state["ep_length"].numpy().copy()
        self.action_space.np_random.bit_generator.state = json.loads(state["action_space_rng"])
        self.finished = [tuple(f) for f in json.loads(state.get("finished", "[]"))]  # older checkpoints: none

    def close(self) -> None:
        self.venv.close()
