"""The data every update reads: named-column replay buffers, samplers and the data transform.

All rows of a :class:`ReplayBuffer` live in ONE packed float32 tensor on the training device,
columns side by side (``[obs | act | rew | next_obs | done | extras...]``), so drawing a batch is
one ``torch.randint`` on the device and one gather — no host round trip, no per-field indexing.
A batch is read by name (``batch.obs``, ``batch.weight``, ``batch.base_act``); a new column is
declared once (``extras={"base_act": (act_dim,)}``), not threaded through positional tuples.

Rows go in RAW (as the dataset or the environment gives them) and the buffer's
:class:`DataTransform` maps them into the training coordinates — observations normalized,
rewards transformed — so dataset rows and online rows always share one coordinate system; the
agent holds the same observation statistics and applies them when acting.

Samplers: uniform (``buffer.sample``), weighted (``buffer.set_weights`` then ``sample``; weights
change in place), several buffers in fixed proportions (:class:`MixedSampler`, RLPD-style 50/50),
and n-step targets over time-ordered data (:func:`nstep_targets`, ``from_dataset(n_step=...)``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from offrl.errors import OffrlError

CORE_COLUMNS = ("obs", "act", "rew", "next_obs", "done")


class Batch:
    """A batch of transitions with named columns: ``obs``, ``act``, ``rew``, ``next_obs``, ``done``
    (1.0 only for true termination: no bootstrap) and any declared extras (``batch.weight``, ...).

    ``Batch(obs, act, rew, next_obs, done, **extras)``; ``batch["name"]`` and ``batch.keys()``
    give columns by name.
    """

    def __init__(self, obs, act, rew, next_obs, done, **extras):
        self.obs, self.act, self.rew, self.next_obs, self.done = obs, act, rew, next_obs, done
        self.__dict__.update(extras)

    def keys(self) -> list[str]:
        return list(self.__dict__)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.__dict__[name]

    def __contains__(self, name: str) -> bool:
        return name in self.__dict__

    def __iter__(self):
        """The column tensors, in column order (for whole-batch operations; read columns by name)."""
        return iter(self.__dict__.values())

    def replace(self, **columns) -> "Batch":
        """A new batch with some columns replaced or added."""
        return Batch(**{**self.__dict__, **columns})

    def __repr__(self) -> str:
        cols = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.__dict__.items())
        return f"Batch({cols})"


def _as_tensor(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)


class DataTransform:
    """Raw rows → training coordinates: ``(obs − mean) / std`` and ``reward_fn(r)``.

    One instance serves a run: the buffer applies it to every row it stores (dataset and online),
    and the agent's ``obs_mean``/``obs_std`` are the same statistics, applied when acting.
    ``reward_fn`` works on numpy arrays (see :mod:`offrl.preprocess` for the named transforms).
    """

    def __init__(self, obs_mean=None, obs_std=None, reward_fn: Callable[[np.ndarray], np.ndarray] | None = None):
        self.obs_mean = None if obs_mean is None else np.asarray(obs_mean, np.float32)
        self.obs_std = None if obs_std is None else np.asarray(obs_std, np.float32)
        self.reward_fn = reward_fn

    def obs(self, x):
        """Normalized observations (numpy in → numpy out, tensor in → tensor out)."""
        if self.obs_mean is None:
            return x
        if isinstance(x, torch.Tensor):
            return (x - torch.as_tensor(self.obs_mean, device=x.device)) / torch.as_tensor(self.obs_std, device=x.device)
        return (np.asarray(x, np.float32) - self.obs_mean) / self.obs_std

    def reward(self, r):
        return r if self.reward_fn is None else self.reward_fn(np.asarray(r, np.float32))


class ReplayBuffer:
    """Packed transition storage on ``device`` with uniform or weighted sampling.

    Args:
        obs_dim, act_dim: feature sizes.
        capacity: maximum number of transitions (``add`` overwrites the oldest beyond it).
        device: where the data and the sampling generator live.
        seed: seed of the buffer's own ``torch.Generator`` (its state is checkpointed).
        extras: extra columns, name → shape (``()`` a scalar per row, ``(k,)`` a vector).
        transform: the :class:`DataTransform` applied to rows on the way in (default: none).
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device: str | torch.device = "cpu", seed: int = 0,
                 extras: dict[str, tuple[int, ...]] | None = None, transform: DataTransform | None = None):
        if capacity <= 0:
            raise OffrlError(f"buffer capacity must be positive, got {capacity}")
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, int(capacity)
        self.device = torch.device(device)
        self.transform = transform or DataTransform()
        shapes = {"obs": (obs_dim,), "act": (act_dim,), "rew": (), "next_obs": (obs_dim,), "done": ()}
        for name, shape in (extras or {}).items():
            if len(tuple(shape)) > 1:
                raise OffrlError(f"extra column '{name}': shape {tuple(shape)} (only () or (k,) columns)")
            if name in shapes:
                raise OffrlError(f"extra column '{name}' clashes with a core column")
            shapes[name] = tuple(shape)
        self.shapes = shapes
        self._splits = tuple(int(np.prod(s)) if s else 1 for s in shapes.values())
        self.width = sum(self._splits)
        self.data = torch.zeros(self.capacity, self.width, device=self.device)
        self.size = 0
        self.ptr = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.weights: torch.Tensor | None = None  # per-row sampling weights (set_weights)
        self._cdf: torch.Tensor | None = None
        self.num_fixed = 0  # leading rows rebuilt from a dataset (not saved in checkpoints)
        self.overwritten = False  # the ring has wrapped: old rows (maybe dataset rows) were replaced

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.shapes)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dataset(cls, dataset, device: str | torch.device = "cpu", seed: int = 0, capacity: int | None = None,
                     transform: DataTransform | None = None, rewards: np.ndarray | None = None,
                     actions: np.ndarray | None = None, extras: dict | None = None,
                     n_step: int = 1, discount: float = 0.99) -> "ReplayBuffer":
        """A buffer holding every transition of ``dataset`` (optionally with room for more).

        Rows pass through ``transform`` (observations normalized, ``reward_fn`` on the rewards).
        ``rewards`` replaces the dataset's rewards (already in training coordinates, e.g.
        imitation labels); ``actions`` replaces its actions (e.g. clipped). ``extras`` maps declared
        extra columns to per-row arrays. ``n_step > 1`` stores n-step targets
        (:func:`nstep_targets`): ``rew`` is the discounted n-step reward sum, ``next_obs`` the
        observation k ≤ n steps later, and the extra column ``discount`` = γᵏ.
        """
        n = len(dataset)
        t = transform or DataTransform()
        extras = dict(extras or {})
        shapes = {k: tuple(np.shape(v)[1:]) for k, v in extras.items()}
        rew = t.reward(dataset.rewards) if rewards is None else rewards
        next_obs, done = dataset.next_observations, dataset.terminals
        if n_step > 1:
            rew, last, disc = nstep_targets(rew, dataset.terminals, dataset.episode_ends(), discount, n_step)
            next_obs, done = dataset.next_observations[last], dataset.terminals[last]
            extras["discount"], shapes["discount"] = disc, ()
        buf = cls(dataset.obs_dim, dataset.act_dim, max(capacity or n, n), device, seed, extras=shapes, transform=t)
        buf._append(t.obs(dataset.observations), dataset.actions if actions is None else actions, rew,
                    t.obs(next_obs), done, **extras)
        buf.num_fixed = n
        return buf

    def add(self, obs, act, rew, next_obs, done, **extras) -> None:
        """Append raw transitions (leading dim = count; 1-D inputs count as one): observations and
        rewards go through the buffer's transform first."""
        t = self.transform
        self._append(t.obs(obs), act, t.reward(rew), t.obs(next_obs), done, **extras)

    def _append(self, obs, act, rew, next_obs, done, **extras) -> None:
        """Append rows already in training coordinates."""
        obs = _as_tensor(obs, self.device)
        if obs.dim() == 1:
            obs = obs.reshape(1, -1)
        n = obs.shape[0]
        if obs.shape[-1] != self.obs_dim:
            raise OffrlError(f"observation has {obs.shape[-1]} dims, the buffer expects {self.obs_dim}")
        act = _as_tensor(act, self.device).reshape(n, -1)
        if act.shape[-1] != self.act_dim:
            raise OffrlError(f"action has {act.shape[-1]} dims, the buffer expects {self.act_dim}")
        missing = set(self.shapes) - set(CORE_COLUMNS) - set(extras)
        unknown = set(extras) - set(self.shapes)
        if missing or unknown:
            raise OffrlError(f"buffer columns differ: missing {sorted(missing)}, unknown {sorted(unknown)}")
        parts = [obs, act, _as_tensor(rew, self.device).reshape(n, 1), _as_tensor(next_obs, self.device).reshape(n, -1),
                 _as_tensor(done, self.device).reshape(n, 1)]
        parts += [_as_tensor(extras[k], self.device).reshape(n, -1) for k in list(self.shapes)[len(CORE_COLUMNS):]]
        rows = torch.cat(parts, dim=1)
        if rows.shape[1] != self.width:
            raise OffrlError(f"rows have width {rows.shape[1]}, the buffer's columns need {self.width}")
        if n >= self.capacity:
            rows, n = rows[-self.capacity:], self.capacity
        self.overwritten |= self.size + n > self.capacity
        first = min(n, self.capacity - self.ptr)
        self.data[self.ptr: self.ptr + first] = rows[:first]
        if first < n:
            self.data[: n - first] = rows[first:]
        if self.weights is not None:  # new rows get weight 1 until set_weights says otherwise
            idx = (self.ptr + torch.arange(n, device=self.device)) % self.capacity
            self.weights[idx] = 1.0
            self._cdf = None
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    # ------------------------------------------------------------------ weights
    def set_weights(self, weights, index: torch.Tensor | None = None) -> None:
        """Per-row sampling weights (≥ 0), in place: all filled rows, or the rows ``index``.
        After the first call ``sample`` draws row i with probability wᵢ / Σw."""
        if self.weights is None:
            self.weights = torch.ones(self.capacity, device=self.device)
        w = _as_tensor(weights, self.device).reshape(-1)
        if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise OffrlError("sampling weights must be finite and >= 0")
        if index is None:
            if len(w) != self.size:
                raise OffrlError(f"got {len(w)} weights for {self.size} rows")
            self.weights[: self.size] = w
        else:
            self.weights[index.to(self.device)] = w
        self._cdf = None

    def _weighted_indices(self, batch_size: int) -> torch.Tensor:
        if self._cdf is None:  # rebuilt only after the weights or rows changed
            cdf = torch.cumsum(self.weights[: self.size].double(), 0)
            if not bool(cdf[-1] > 0):
                raise OffrlError("every sampling weight is zero")
            self._cdf = cdf
        u = torch.rand(batch_size, device=self.device, generator=self.generator, dtype=torch.float64) * self._cdf[-1]
        return torch.searchsorted(self._cdf, u, right=True).clamp_(max=self.size - 1)

    # ------------------------------------------------------------------ sampling
    def sample_indices(self, batch_size: int) -> torch.Tensor:
        if self.weights is not None:
            return self._weighted_indices(batch_size)
        return torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)

    def sample(self, batch_size: int) -> Batch:
        """A batch (with replacement) drawn on the device: uniform, or by the sampling weights."""
        if self.size == 0:
            raise OffrlError("cannot sample from an empty replay buffer")
        return self.batch(self.sample_indices(batch_size))

    def batch(self, idx: torch.Tensor) -> Batch:
        cols = self.data.index_select(0, idx).split(self._splits, dim=1)
        named = {k: (c.squeeze(1) if not s else c) for (k, s), c in zip(self.shapes.items(), cols)}
        return Batch(**named)

    def __len__(self) -> int:
        return self.size

    # ------------------------------------------------------------------ views
    def column(self, name: str) -> torch.Tensor:
        """The stored rows of one column (a view), ``[size, ...]``."""
        if name not in self.shapes:
            raise OffrlError(f"the buffer has no column '{name}' (columns: {', '.join(self.shapes)})")
        start = sum(self._splits[: list(self.shapes).index(name)])
        col = self.data[: self.size, start: start + self._splits[list(self.shapes).index(name)]]
        return col.squeeze(1) if not self.shapes[name] else col

    @property
    def observations(self) -> torch.Tensor:
        return self.column("obs")

    @property
    def actions(self) -> torch.Tensor:
        return self.column("act")

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self, include_data: bool = True) -> dict:
        """Sampling state, plus the stored rows when ``include_data``. Rows rebuilt from a dataset
        (the first ``num_fixed``) are left out while no online row has overwritten them."""
        state = {"size": self.size, "ptr": self.ptr, "generator": self.generator.get_state(),
                 "generator_device": self.device.type,
                 "columns": {k: list(s) for k, s in self.shapes.items()}, "overwritten": self.overwritten}
        if self.weights is not None:
            state["weights"] = self.weights[: self.size].to("cpu", copy=True)
        if include_data:
            start = 0 if self.overwritten else self.num_fixed
            # A copy, not a view: torch.save writes a view's whole storage (the full capacity).
            state["data"] = self.data[start: self.size].to("cpu", copy=True)
            state["data_start"] = start
        return state

    def load_state_dict(self, state: dict) -> None:
        cols = {k: tuple(s) for k, s in state.get("columns", {}).items()}
        if cols and cols != self.shapes:
            width = sum(int(np.prod(v)) if v else 1 for v in cols.values())
            raise OffrlError(f"buffer state has columns {cols} (rows of width {width}), this buffer "
                             f"{self.shapes} (width {self.width})")
        if "data" in state:
            if state["data"].shape[1] != self.width:
                raise OffrlError(f"buffer state has rows of width {state['data'].shape[1]}, expected {self.width}")
            start = int(state.get("data_start", 0))
            if start and start != self.num_fixed:
                raise OffrlError(f"checkpoint's buffer starts its saved rows at {start}, this buffer holds {self.num_fixed} dataset rows")
            self.data[start: start + len(state["data"])] = state["data"].to(self.device)
        elif int(state["size"]) != self.size:
            raise OffrlError(f"checkpoint was taken with {state['size']} transitions in the buffer, this one has {self.size}")
        self.size, self.ptr = int(state["size"]), int(state["ptr"])
        self.overwritten = bool(state.get("overwritten", False))
        if "weights" in state:
            self.weights = torch.ones(self.capacity, device=self.device)
            self.weights[: self.size] = state["weights"].to(self.device)
            self._cdf = None
        saved = state.get("generator_device", self.device.type)
        if saved != self.device.type:  # a CPU and a CUDA generator state cannot stand in for each other
            raise OffrlError(f"the buffer's sampling state was saved on {saved}, this run samples on "
                             f"{self.device.type}: resume with --device {saved}")
        self.generator.set_state(state["generator"].cpu())


class MixedSampler:
    """Batches drawn from several buffers in fixed proportions (RLPD-style 50/50 and the like).

    ``MixedSampler([demos, online], [0.5, 0.5]).sample(256)`` takes exactly 128 rows from each
    buffer every batch (rounded counts, the remainder going to the first sources) and concatenates
    them, with an extra column ``source`` (the buffer's index, float). The buffers must have the
    same columns. A buffer that is still empty gives its share to the others.
    """

    def __init__(self, buffers: Sequence[ReplayBuffer], ratios: Sequence[float]):
        if len(buffers) != len(ratios) or not buffers:
            raise OffrlError("MixedSampler needs one ratio per buffer")
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise OffrlError(f"mixing ratios must be >= 0 with a positive sum, got {list(ratios)}")
        if len({b.columns for b in buffers}) != 1:
            raise OffrlError("mixed buffers must have the same columns")
        self.buffers = list(buffers)
        total = float(sum(ratios))
        self.ratios = [r / total for r in ratios]

    def counts(self, batch_size: int) -> list[int]:
        """Rows per buffer in a batch of ``batch_size`` (exact, summing to ``batch_size``)."""
        ratios = [r if len(b) > 0 else 0.0 for r, b in zip(self.ratios, self.buffers)]
        total = sum(ratios)
        if total <= 0:
            raise OffrlError("cannot sample: every mixed buffer is empty")
        raw = [batch_size * r / total for r in ratios]
        counts = [int(np.floor(x)) for x in raw]
        order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
        for i in order[: batch_size - sum(counts)]:
            counts[i] += 1
        return counts

    def sample(self, batch_size: int) -> Batch:
        parts = [(i, b.sample(n)) for i, (b, n) in enumerate(zip(self.buffers, self.counts(batch_size))) if n > 0]
        cols = {k: torch.cat([p[k] for _, p in parts]) for k in parts[0][1].keys()}
        device = parts[0][1].obs.device
        cols["source"] = torch.cat([torch.full((len(p.obs),), float(i), device=device) for i, p in parts])
        return Batch(**cols)

    def __len__(self) -> int:
        return sum(len(b) for b in self.buffers)

    def state_dict(self) -> dict:
        return {f"buffer{i}": b.state_dict() for i, b in enumerate(self.buffers)}

    def load_state_dict(self, state: dict) -> None:
        for i, b in enumerate(self.buffers):
            b.load_state_dict(state[f"buffer{i}"])


def nstep_targets(rewards: np.ndarray, terminals: np.ndarray, episode_ends: np.ndarray, discount: float,
                  n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n-step targets over time-ordered rows: for row t with k = min(n, steps to its episode's end,
    or to the first termination),

        R_t = Σ_{i<k} γⁱ r_{t+i},     last_t = t + k − 1,     discount_t = γᵏ

    so the target is ``R_t + discount_t · (1 − done[last_t]) · V(next_obs[last_t])``; an episode
    cut by a time limit bootstraps from its last next observation. Returns ``(R, last, discount)``.
    """
    if n < 1:
        raise OffrlError(f"n-step must be >= 1, got {n}")
    rewards = np.asarray(rewards, np.float64)
    size = len(rewards)
    end_of = np.empty(size, np.int64)  # the last row of each row's episode
    start = 0
    for e in np.asarray(episode_ends, np.int64):
        end_of[start: e + 1] = e
        start = e + 1
    end_of[start:] = size - 1
    ret = np.zeros(size)
    last = np.arange(size)
    k = np.zeros(size, np.int64)
    alive = np.ones(size, bool)  # still accumulating
    t = np.arange(size)
    for i in range(n):
        j = t + i
        alive &= j <= end_of
        ret[alive] += discount ** i * rewards[j[alive]]
        last[alive] = j[alive]
        k[alive] += 1
        alive &= np.asarray(terminals)[np.minimum(j, size - 1)] <= 0  # a termination ends the sum
    return ret.astype(np.float32), last, (discount ** k).astype(np.float32)
