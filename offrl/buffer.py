"""The replay buffer every algorithm samples from.

All transitions live in ONE packed float32 tensor on the training device, row layout
``[obs | act | rew | next_obs | done]``, so sampling a batch is one ``torch.randint`` on the
device and one gather — no host round trip, no per-field indexing. Offline algorithms build it
from a :class:`~offrl.data.Dataset`; online ones ``add`` transitions up to ``capacity`` (a ring).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from offrl.errors import OffrlError


class Batch(NamedTuple):
    """A batch of transitions; ``done`` is 1.0 only for true termination (no bootstrap)."""

    obs: torch.Tensor
    act: torch.Tensor
    rew: torch.Tensor
    next_obs: torch.Tensor
    done: torch.Tensor


def _as_tensor(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)


class ReplayBuffer:
    """Packed transition storage on ``device`` with uniform sampling.

    Args:
        obs_dim, act_dim: feature sizes.
        capacity: maximum number of transitions (``add`` overwrites the oldest beyond it).
        device: where the data and the sampling generator live.
        seed: seed of the buffer's own ``torch.Generator`` (its state is checkpointed).
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device: str | torch.device = "cpu", seed: int = 0):
        if capacity <= 0:
            raise OffrlError(f"buffer capacity must be positive, got {capacity}")
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, int(capacity)
        self.device = torch.device(device)
        self.width = 2 * obs_dim + act_dim + 2
        self.data = torch.zeros(self.capacity, self.width, device=self.device)
        self.size = 0
        self.ptr = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        o, a = obs_dim, act_dim
        self._splits = (o, a, 1, o, 1)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dataset(
        cls,
        dataset,
        device: str | torch.device = "cpu",
        seed: int = 0,
        capacity: int | None = None,
        rewards: np.ndarray | None = None,
        actions: np.ndarray | None = None,
        obs_mean: np.ndarray | None = None,
        obs_std: np.ndarray | None = None,
    ) -> "ReplayBuffer":
        """A buffer holding every transition of ``dataset`` (optionally with room for more).

        ``rewards`` / ``actions`` replace the dataset's (e.g. scaled rewards, clipped actions); ``obs_mean``/``obs_std``
        normalize observations and next observations on the way in.
        """
        n = len(dataset)
        buf = cls(dataset.obs_dim, dataset.act_dim, max(capacity or n, n), device, seed)
        obs, next_obs = dataset.observations, dataset.next_observations
        if obs_mean is not None:
            obs = (obs - obs_mean) / obs_std
            next_obs = (next_obs - obs_mean) / obs_std
        buf.add(obs, dataset.actions if actions is None else actions, dataset.rewards if rewards is None else rewards, next_obs, dataset.terminals)
        return buf

    def add(self, obs, act, rew, next_obs, done) -> None:
        """Append a batch of transitions (leading dim = count); 1-D inputs count as one."""
        obs = _as_tensor(obs, self.device)
        if obs.dim() == 1:
            obs, act, rew, next_obs, done = (_as_tensor(x, self.device).reshape(1, -1) for x in (obs, act, rew, next_obs, done))
        n = obs.shape[0]
        if obs.shape[-1] != self.obs_dim:
            raise OffrlError(f"observation has {obs.shape[-1]} dims, the buffer expects {self.obs_dim}")
        act = _as_tensor(act, self.device).reshape(n, -1)
        if act.shape[-1] != self.act_dim:
            raise OffrlError(f"action has {act.shape[-1]} dims, the buffer expects {self.act_dim}")
        rows = torch.cat(
            [
                obs.reshape(n, -1),
                act,
                _as_tensor(rew, self.device).reshape(n, 1),
                _as_tensor(next_obs, self.device).reshape(n, -1),
                _as_tensor(done, self.device).reshape(n, 1),
            ],
            dim=1,
        )
        if n >= self.capacity:
            rows, n = rows[-self.capacity :], self.capacity
        first = min(n, self.capacity - self.ptr)
        self.data[self.ptr : self.ptr + first] = rows[:first]
        if first < n:
            self.data[: n - first] = rows[first:]
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    # ------------------------------------------------------------------ sampling
    def sample_indices(self, batch_size: int) -> torch.Tensor:
        return torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)

    def sample(self, batch_size: int) -> Batch:
        """A uniform batch (with replacement) drawn on the device."""
        if self.size == 0:
            raise OffrlError("cannot sample from an empty replay buffer")
        return self.batch(self.sample_indices(batch_size))

    def batch(self, idx: torch.Tensor) -> Batch:
        rows = self.data.index_select(0, idx)
        obs, act, rew, next_obs, done = rows.split(self._splits, dim=1)
        return Batch(obs, act, rew.squeeze(1), next_obs, done.squeeze(1))

    def __len__(self) -> int:
        return self.size

    # ------------------------------------------------------------------ views
    @property
    def observations(self) -> torch.Tensor:
        return self.data[: self.size, : self.obs_dim]

    @property
    def actions(self) -> torch.Tensor:
        return self.data[: self.size, self.obs_dim : self.obs_dim + self.act_dim]

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self, include_data: bool = True) -> dict:
        """Sampling state, plus the stored rows when ``include_data`` (online runs need them to
        resume; offline runs rebuild the rows from the dataset)."""
        state = {"size": self.size, "ptr": self.ptr, "generator": self.generator.get_state()}
        if include_data:
            # A copy, not a view: torch.save writes a view's whole storage, i.e. the full
            # preallocated capacity (a 1M-row buffer holding 180k rows saved 168 MB, not 30 MB).
            state["data"] = self.data[: self.size].to("cpu", copy=True)
        return state

    def load_state_dict(self, state: dict) -> None:
        if "data" in state:
            if state["data"].shape[1] != self.width:
                raise OffrlError(f"buffer state has rows of width {state['data'].shape[1]}, expected {self.width}")
            self.data[: len(state["data"])] = state["data"].to(self.device)
        elif int(state["size"]) != self.size:
            raise OffrlError(f"checkpoint was taken with {state['size']} transitions in the buffer, this one has {self.size}")
        self.size, self.ptr = int(state["size"]), int(state["ptr"])
        self.generator.set_state(state["generator"].cpu() if self.device.type == "cpu" else state["generator"])
