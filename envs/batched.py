"""Batched stepping of the Gymnasium MuJoCo locomotion envs, for fast dataset collection.

:class:`BatchedLocomotion` holds ``num_envs`` copies of Hopper-v5, Walker2d-v5 or HalfCheetah-v5
on the env's own ``MjModel`` and steps them on several threads, then computes observations, rewards
and termination for all copies at once with numpy. With MuJoCo >= 4 the copies are one
``mujoco.batch.Batch`` (C++ threads: a vector step is one call, no Python per copy, no GIL);
with older MuJoCo they are bare ``MjData`` stepped by a Python thread pool (MuJoCo releases the
GIL in ``mj_step``). Both give the same numbers (``backend=`` picks one).
It performs the same MuJoCo calls and the same floating-point operations as Gymnasium's v5 envs
(reset noise from the same seeded generator, ``mj_step`` with the env's frame skip, the env's
reward weights and healthy ranges read from the constructed env), so its transitions equal
``gymnasium.make(env_id)``'s bit for bit — ``tests/test_batched_env.py`` checks whole episodes.
The only call left out is ``mj_rnePostConstraint``, which fills contact-force outputs that
these three envs never read.

Episodes are cut at the env's time limit (``truncated``); a copy whose episode ended is reset in
the same step (same-step autoreset), and the true final observation is returned separately.

``state_dict()``/``load_state_dict()`` save and restore every copy exactly (MuJoCo integration
state, time-limit counter, reset-noise RNG) in the per-copy format of
:func:`offrl.collector.env_state`, so a state saved from Gymnasium envs loads here and the other
way round (the :class:`~offrl.collector.Collector` checkpoints either backend the same way).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from offrl.envs import gym_make
from offrl.errors import OffrlError

SUPPORTED = ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5")


def _has_batch() -> bool:
    """Whether this MuJoCo has ``mujoco.batch`` (MuJoCo >= 4)."""
    import importlib.util

    return importlib.util.find_spec("mujoco.batch") is not None


class BatchedLocomotion:
    """``num_envs`` copies of a MuJoCo locomotion env; copy ``i`` is seeded with ``seed + i``."""

    def __init__(self, env_id: str, num_envs: int, seed: int = 0, threads: int | None = None,
                 backend: str = "auto", **env_kwargs):
        import mujoco
        from gymnasium.utils.seeding import np_random

        if env_id not in SUPPORTED:
            raise OffrlError(f"batched stepping supports {', '.join(SUPPORTED)}; got {env_id}")
        if num_envs < 1:
            raise OffrlError(f"num_envs must be positive, got {num_envs}")
        self._mj = mujoco
        env = gym_make(env_id, **env_kwargs)
        u = env.unwrapped
        if not u._exclude_current_positions_from_observation:
            raise OffrlError("batched stepping needs exclude_current_positions_from_observation=True")
        self.env_id = env_id
        self.spec = env.spec
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        self.single_observation_space, self.single_action_space = env.observation_space, env.action_space  # as a vector env
        self.max_episode_steps = int(env.spec.max_episode_steps)
        self.model = u.model
        self.frame_skip = int(u.frame_skip)
        self.dt = u.dt
        self.init_qpos = u.init_qpos.copy()
        self.init_qvel = u.init_qvel.copy()
        self.noise = u._reset_noise_scale
        self.forward_w = u._forward_reward_weight
        self.ctrl_w = u._ctrl_cost_weight
        self.cheetah = env_id.startswith("HalfCheetah")
        if not self.cheetah:
            self.healthy_reward = u._healthy_reward
            self.terminate_unhealthy = u._terminate_when_unhealthy
            self.z_range = u._healthy_z_range
            self.angle_range = u._healthy_angle_range
            self.state_range = getattr(u, "_healthy_state_range", None)  # Hopper only
        env.close()

        self.num_envs = num_envs
        nq, nv = self.model.nq, self.model.nv
        if backend == "auto":
            backend = "batch" if _has_batch() else "threads"
        if backend not in ("batch", "threads"):
            raise OffrlError(f"backend must be 'auto', 'batch' or 'threads', got '{backend}'")
        if backend == "batch" and not _has_batch():
            raise OffrlError(f"backend 'batch' needs mujoco >= 4 (mujoco.batch); this is mujoco {mujoco.__version__}")
        self.backend = backend
        self.rngs = [np_random(seed + i)[0] for i in range(num_envs)]
        self.qpos = np.zeros((num_envs, nq))
        self.qvel = np.zeros((num_envs, nv))
        self.elapsed = np.zeros(num_envs, dtype=np.int64)
        threads = threads or min(os.cpu_count() or 1, num_envs)
        self._pool = None
        if backend == "batch":
            from mujoco.batch import Batch

            self._batch = Batch(self.model, num_envs, nthread=threads)
            self._b_qpos, self._b_qvel = self._batch.bind("qpos"), self._batch.bind("qvel")
            self._b_ctrl = self._batch.bind("ctrl")
        else:
            self.datas = [mujoco.MjData(self.model) for _ in range(num_envs)]
            self._chunks = [c for c in np.array_split(np.arange(num_envs), threads) if len(c)]
            if len(self._chunks) > 1:
                self._pool = ThreadPoolExecutor(len(self._chunks))
        self._reset(np.arange(num_envs))
        self.obs = self._obs(self.qpos, self.qvel)

    # ------------------------------------------------------------------ physics
    def _initial_state(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Gymnasium's ``reset_model`` noise for copy ``i`` (from its own seeded generator)."""
        rng = self.rngs[i]
        qpos = self.init_qpos + rng.uniform(low=-self.noise, high=self.noise, size=self.model.nq)
        if self.cheetah:
            qvel = self.init_qvel + self.noise * rng.standard_normal(self.model.nv)
        else:
            qvel = self.init_qvel + rng.uniform(low=-self.noise, high=self.noise, size=self.model.nv)
        return qpos, qvel

    def _reset(self, ids: np.ndarray) -> None:
        """Gymnasium's ``reset`` (after seeding): mj_resetData, the noisy initial state, mj_forward."""
        states = [self._initial_state(i) for i in ids]
        if self.backend == "batch":
            self._batch.reset(ids, stage=self._mj.mjtStage.mjSTAGE_NONE)
            for i, (qpos, qvel) in zip(ids, states):
                self._b_qpos[i], self._b_qvel[i] = qpos, qvel
            self._batch.forward(ids)
            self.qpos[ids], self.qvel[ids] = self._b_qpos[ids], self._b_qvel[ids]
        else:
            mj = self._mj
            for i, (qpos, qvel) in zip(ids, states):
                d = self.datas[i]
                mj.mj_resetData(self.model, d)
                d.qpos[:], d.qvel[:] = qpos, qvel
                mj.mj_forward(self.model, d)
                self.qpos[i], self.qvel[i] = d.qpos, d.qvel
        self.elapsed[ids] = 0

    def _physics_step(self, actions: np.ndarray) -> None:
        if self.backend == "batch":
            self._b_ctrl[:] = actions
            self._batch.step(nstep=self.frame_skip)
            self.qpos, self.qvel = self._b_qpos.copy(), self._b_qvel.copy()
        elif self._pool is None:
            self._step_chunk(self._chunks[0], actions)
        else:
            list(self._pool.map(lambda c: self._step_chunk(c, actions), self._chunks))

    def _step_chunk(self, idx: np.ndarray, actions: np.ndarray) -> None:
        mj, model, n = self._mj, self.model, self.frame_skip
        for i in idx:
            d = self.datas[i]
            d.ctrl[:] = actions[i]
            mj.mj_step(model, d, nstep=n)
            self.qpos[i], self.qvel[i] = d.qpos, d.qvel

    def _obs(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        vel = qvel if self.cheetah else np.clip(qvel, -10, 10)
        return np.concatenate([qpos[:, 1:], vel], axis=1)

    def _healthy(self) -> np.ndarray:
        z, angle = self.qpos[:, 1], self.qpos[:, 2]
        ok = (self.z_range[0] < z) & (z < self.z_range[1])
        ok &= (self.angle_range[0] < angle) & (angle < self.angle_range[1])
        if self.state_range is not None:
            state = np.concatenate([self.qpos, self.qvel], axis=1)[:, 2:]
            ok &= np.all((self.state_range[0] < state) & (state < self.state_range[1]), axis=1)
        return ok

    # ------------------------------------------------------------------ api
    def step(self, actions: np.ndarray):
        """Step every copy: ``(next_obs, reward, terminated, truncated, final_obs)``.

        ``next_obs`` already holds the reset observation of copies whose episode ended;
        ``final_obs`` holds the true last observation of every copy (equal to ``next_obs``
        where the episode goes on); ``final_qpos``/``final_qvel`` hold the matching MuJoCo state,
        ``qpos``/``qvel`` the state of ``next_obs``. ``actions``: ``[num_envs, act_dim]`` float32 in [-1, 1].
        """
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, self.model.nu):
            raise OffrlError(f"actions have shape {actions.shape}, expected {(self.num_envs, self.model.nu)}")
        x_before = self.qpos[:, 0].copy()
        self._physics_step(actions)
        self.elapsed += 1
        x_velocity = (self.qpos[:, 0] - x_before) / self.dt
        forward_reward = self.forward_w * x_velocity
        ctrl_cost = self.ctrl_w * np.sum(np.square(actions), axis=1)
        if self.cheetah:
            reward = forward_reward - ctrl_cost
            terminated = np.zeros(self.num_envs, dtype=bool)
        else:
            healthy = self._healthy()
            reward = (forward_reward + healthy * self.healthy_reward) - ctrl_cost
            terminated = ~healthy & self.terminate_unhealthy
        truncated = self.elapsed >= self.max_episode_steps
        final_obs = self._obs(self.qpos, self.qvel)
        self.final_qpos, self.final_qvel = self.qpos.copy(), self.qvel.copy()  # before any reset
        next_obs = final_obs.copy()
        ended = np.flatnonzero(terminated | truncated)
        if len(ended):
            self._reset(ended)
            next_obs[ended] = self._obs(self.qpos[ended], self.qvel[ended])
        self.obs = next_obs
        return next_obs, reward, terminated, truncated, final_obs

    # ------------------------------------------------------------------ state
    def _integration_state(self, i: int) -> np.ndarray:
        """Copy ``i``'s ``mjSTATE_INTEGRATION`` vector (the layout of ``mujoco.mj_getState``)."""
        if self.backend == "batch":
            return self._batch.state[i].copy()
        mj = self._mj
        spec = mj.mjtState.mjSTATE_INTEGRATION
        buf = np.empty(mj.mj_stateSize(self.model, spec))
        mj.mj_getState(self.model, self.datas[i], buf, spec)
        return buf

    def state_dict(self) -> dict:
        """Every copy's exact state: ``{"envs": [{"rng", "mujoco", "elapsed"} per copy]}``.

        ``rng`` is the reset-noise generator's state (JSON), ``mujoco`` the integration state (a
        float64 tensor: time, qpos, qvel, warm start, controls, ...), ``elapsed`` the time-limit
        counter: the format of :func:`offrl.collector.env_state` for a Gymnasium env.
        """
        import torch

        return {"envs": [{"rng": json.dumps(self.rngs[i].bit_generator.state),
                          "mujoco": torch.from_numpy(self._integration_state(i)),
                          "elapsed": int(self.elapsed[i])} for i in range(self.num_envs)]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (or the per-copy states of Gymnasium envs of the same id)."""
        envs = state["envs"]
        if len(envs) != self.num_envs:
            raise OffrlError(f"the state has {len(envs)} env copies, this env has {self.num_envs}")
        mj = self._mj
        spec = mj.mjtState.mjSTATE_INTEGRATION
        size = mj.mj_stateSize(self.model, spec)
        rows = []
        for s in envs:
            if "mujoco" not in s or s["mujoco"].numel() != size:
                raise OffrlError(f"the saved MuJoCo state does not fit {self.env_id} ({size} numbers expected)")
            rows.append(s["mujoco"].numpy().astype(np.float64))
        ids = np.arange(self.num_envs)
        if self.backend == "batch":
            self._batch.state[:] = np.stack(rows)
            self._batch.forward(ids)
            self.qpos, self.qvel = self._b_qpos.copy(), self._b_qvel.copy()
        else:
            for i, row in enumerate(rows):
                d = self.datas[i]
                mj.mj_setState(self.model, d, row, spec)
                mj.mj_forward(self.model, d)
                self.qpos[i], self.qvel[i] = d.qpos, d.qvel
        for rng, s in zip(self.rngs, envs):
            rng.bit_generator.state = json.loads(s["rng"])
        self.elapsed[:] = [int(s.get("elapsed", 0)) for s in envs]
        self.obs = self._obs(self.qpos, self.qvel)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
