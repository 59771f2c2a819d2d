"""Recording a run's D4RL fields (dataset tooling: medium-replay datasets cut from a SAC run).

The :class:`Recorder` is a collector sink: it keeps, per env step in time order (one env), what
the replay buffer does not hold — the MuJoCo ``qpos``/``qvel`` of the state the action was taken
in, the action's log-probability under the behaviour (the ``logp`` extra), ``timeouts`` (cut by the
time limit, not terminated) and the exact final state of every episode that ended.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch


class PhysicsProbe(gym.Wrapper):
    """Keeps ``qpos``/``qvel`` right after each step, before a vector env's autoreset."""

    def step(self, action):
        out = self.env.step(action)
        d = self.env.unwrapped.data
        self.qpos, self.qvel = d.qpos.copy(), d.qvel.copy()
        return out


class Recorder:
    """Collector sink for ``--record`` (build the collector with ``wrap=PhysicsProbe``)."""

    KEYS = ("qpos", "qvel", "logp", "timeouts")

    def __init__(self, capacity: int, nq: int, nv: int):
        self.qpos = np.zeros((capacity, nq))
        self.qvel = np.zeros((capacity, nv))
        self.logp = np.zeros(capacity, np.float32)
        self.timeouts = np.zeros(capacity, bool)
        self.ends: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.size = 0
        self._pre: tuple[np.ndarray, np.ndarray] | None = None

        self._tail: tuple[np.ndarray, np.ndarray] | None = None

    def before_step(self, collector) -> None:
        self._pre = collector.physics()
        self._collector = collector

    def __call__(self, tr) -> None:
        qpos, qvel = self._pre
        i = self.size
        self.qpos[i], self.qvel[i] = qpos[0], qvel[0]
        self.logp[i], self.timeouts[i] = tr.extras["logp"][0], (tr.trunc & ~tr.term)[0]
        if tr.done[0]:  # the probe kept the state right after the step, before the autoreset
            probe = self._collector.venv.envs[0]
            self.ends.append((i, probe.qpos.copy(), probe.qvel.copy()))
        self.size += 1
        qpos, qvel = self._collector.physics()  # the state the next observation shows (after any reset)
        self._tail = (qpos[0].copy(), qvel[0].copy())

    def state_dict(self) -> dict:
        n = self.size
        state = {k: torch.from_numpy(getattr(self, k)[:n].copy()) for k in self.KEYS}
        nq, nv = self.qpos.shape[1], self.qvel.shape[1]
        state["end_rows"] = torch.tensor([e[0] for e in self.ends], dtype=torch.int64)
        state["end_qpos"] = torch.from_numpy(np.array([e[1] for e in self.ends]).reshape(-1, nq))
        state["end_qvel"] = torch.from_numpy(np.array([e[2] for e in self.ends]).reshape(-1, nv))
        if self._tail is not None:  # the final state of an episode cut where the record ends
            state["tail_qpos"], state["tail_qvel"] = (torch.from_numpy(x.copy()) for x in self._tail)
        return state

    def load_state_dict(self, state: dict) -> None:
        n = len(state["logp"])
        for k in self.KEYS:
            getattr(self, k)[:n] = state[k].numpy()
        self.ends = [(int(r), q.numpy(), v.numpy()) for r, q, v in
                     zip(state["end_rows"], state["end_qpos"], state["end_qvel"])]
        self.size = n
        if "tail_qpos" in state:
            self._tail = (state["tail_qpos"].numpy().copy(), state["tail_qvel"].numpy().copy())
