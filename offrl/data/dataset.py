"""The in-memory dataset every algorithm trains from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from offrl.errors import OffrlError

ARRAY_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


@dataclass
class Dataset:
    """Transitions in flat float32 arrays, one row per transition.

    * ``observations``, ``next_observations``: ``(N, obs_dim)`` float32
    * ``actions``: ``(N, act_dim)`` float32
    * ``rewards``: ``(N,)`` float32
    * ``terminals``: ``(N,)`` float32, 1.0 only where the environment terminated (no bootstrap)
    * ``timeouts``: ``(N,)`` float32, 1.0 where an episode ends *without* termination
      (time limit, or the row before a transition the loader dropped, or the end of the data)

    Row ``i`` is the last row of an episode iff ``terminals[i] or timeouts[i]``; the two are never
    both set. ``metadata`` holds at least ``id``, ``env_id`` (Gymnasium id used for evaluation, or
    None), ``ref_min_score``, ``ref_max_score`` (None when unknown) and ``source``
    (``"d4rl"``, ``"minari"`` or ``"offrl"``).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ARRAY_FIELDS:
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`OffrlError` on inconsistent shapes or non-finite values."""
        name = self.metadata.get("id", "dataset")
        n = len(self.observations)
        if n == 0:
            raise OffrlError(f"{name}: the dataset has no transitions")
        if self.observations.ndim != 2 or self.actions.ndim != 2:
            raise OffrlError(
                f"{name}: observations and actions must be 2-D, got shapes "
                f"{self.observations.shape} and {self.actions.shape}"
            )
        for key in ARRAY_FIELDS:
            arr = getattr(self, key)
            if len(arr) != n:
                raise OffrlError(f"{name}: '{key}' has {len(arr)} rows, observations have {n}")
        for key in ("rewards", "terminals", "timeouts"):
            if getattr(self, key).ndim != 1:
                raise OffrlError(f"{name}: '{key}' must be 1-D, got shape {getattr(self, key).shape}")
        if self.next_observations.shape != self.observations.shape:
            raise OffrlError(
                f"{name}: next_observations shape {self.next_observations.shape} != "
                f"observations shape {self.observations.shape}"
            )
        for key in ("observations", "actions", "rewards", "next_observations"):
            arr = getattr(self, key)
            if not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(axis=1).sum())
                raise OffrlError(f"{name}: '{key}' contains NaN or inf in {bad} rows")
        if np.any((self.terminals > 0) & (self.timeouts > 0)):
            raise OffrlError(f"{name}: a row is marked both terminal and timeout")

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.observations)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def env_id(self) -> str | None:
        return self.metadata.get("env_id")

    @property
    def id(self) -> str:
        return self.metadata.get("id", "dataset")

    def episode_ends(self) -> np.ndarray:
        """Indices of the last row of each episode (the final row always closes one)."""
        ends = np.flatnonzero((self.terminals > 0) | (self.timeouts > 0))
        if len(ends) == 0 or ends[-1] != len(self) - 1:
            ends = np.append(ends, len(self) - 1)
        return ends

    def episode_starts(self) -> np.ndarray:
        ends = self.episode_ends()
        return np.concatenate([[0], ends[:-1] + 1])

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, in order."""
        csum = np.concatenate([[0.0], np.cumsum(self.rewards, dtype=np.float64)])
        ends = self.episode_ends()
        starts = self.episode_starts()
        return csum[ends + 1] - csum[starts]

    def episode_lengths(self) -> np.ndarray:
        return self.episode_ends() - self.episode_starts() + 1

    def normalized_score(self, returns):
        """D4RL-normalized score 100·(R − min)/(max − min) with this dataset's reference scores."""
        from offrl.evaluation import normalized_score

        return normalized_score(returns, self.metadata.get("ref_min_score"), self.metadata.get("ref_max_score"))

    def state_stats(self, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std (+eps) of the observations, as TD3+BC/CORL normalize."""
        mean = self.observations.mean(0)
        std = self.observations.std(0) + eps
        return mean.astype(np.float32), std.astype(np.float32)

    def subset(self, rows: np.ndarray) -> "Dataset":
        """A new dataset of the given rows (metadata copied)."""
        return Dataset(**{k: getattr(self, k)[rows] for k in ARRAY_FIELDS}, metadata=dict(self.metadata))

    def summary(self) -> dict[str, Any]:
        rets = self.episode_returns()
        return {
            "id": self.id,
            "transitions": len(self),
            "episodes": int(len(rets)),
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "return_mean": float(rets.mean()),
            "return_std": float(rets.std()),
            "terminals": int(self.terminals.sum()),
        }
