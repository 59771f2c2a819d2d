r"""On-policy rollout storage for PPO-style algorithms (CleanRL ``ppo_continuous_action`` conventions).

``T = num_steps`` steps of ``N = num_envs`` vectorized envs live as ``[T, N, ...]`` tensors on the
training device. ``add`` and ``compute_returns`` never read a value back to the host (no ``.item()``,
no data-dependent python branching), so a rollout on a GPU stays asynchronous.

Flags are stored *at the step they happened*: ``term_t`` / ``trunc_t`` say that the action taken at
step ``t`` ended the episode (true termination / time-limit truncation); the env then auto-reset, so
``obs_{t+1}`` belongs to a new episode. ``final_value_t`` is V(true final observation) of an episode
truncated at step ``t`` (only kept where ``trunc_t & ~term_t``; 0 elsewhere).

GAE (``compute_returns(last_value, gamma, lam, bootstrap_truncation)``)::

    end_t    = term_t | trunc_t
    v_next_t = (1 - end_t) * (value_{t+1} if t < T-1 else last_value)
               + [bootstrap_truncation] * (trunc_t & ~term_t) * final_value_t
    delta_t  = r_t + gamma * v_next_t - value_t
    A_t      = delta_t + gamma * lam * (1 - end_t) * A_{t+1},      A_T = 0
    ret_t    = A_t + value_t

With ``bootstrap_truncation=False`` this is exactly CleanRL (``dones = term | trunc``, no bootstrap at
time limits). CleanRL's loop reads ``nextnonterminal = 1 - dones[t+1]`` (``1 - next_done`` at
``t = T-1``), where ``dones[t+1]`` is the done flag returned with obs ``t+1``, i.e. produced by the
step taken at ``t``; hence ``dones[t+1] == end_t`` and ``next_done == end_{T-1}`` (see the comment in
:meth:`RolloutStorage.compute_returns`).

``minibatches`` follows CleanRL exactly: ``minibatch_size = T*N // num_minibatches`` and minibatches
start at ``range(0, T*N, minibatch_size)``, so when ``num_minibatches`` does not divide ``T*N`` the
remainder forms one extra, smaller last minibatch (no error; every sample is still used once).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Iterator

import numpy as np
import torch

from offrl.errors import OffrlError

_BASE = ("obs", "act", "logp", "value", "rew", "term", "trunc", "final_value")
_RESERVED = frozenset(_BASE) | {"adv", "ret"}


def _to(x, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def _np(x, dtype) -> np.ndarray:
    """``x`` (a CPU tensor or array-like) as a numpy array of ``dtype`` (a view when it already is one)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().numpy()
    return np.asarray(x).astype(dtype, copy=False)


class RolloutStorage:
    """``num_steps`` x ``num_envs`` of on-policy data on ``device``.

    Columns (attributes): ``obs [T,N,obs_dim]``, ``act [T,N,act_dim]``, ``logp``, ``value``, ``rew``,
    ``final_value`` (float32 ``[T,N]``), ``term``, ``trunc`` (bool ``[T,N]``), one column per declared
    extra (``extras={name: width}``; width 0 -> ``[T,N]``, else ``[T,N,width]``), and ``adv``, ``ret``
    (``[T,N]``, filled by :meth:`compute_returns`). ``ptr`` is the next step to write.
    """

    def __init__(self, num_steps: int, num_envs: int, obs_dim: int, act_dim: int,
                 device: str | torch.device = "cpu", extras: dict[str, int] | None = None):
        for name, v in (("num_steps", num_steps), ("num_envs", num_envs), ("obs_dim", obs_dim), ("act_dim", act_dim)):
            if int(v) <= 0:
                raise OffrlError(f"rollout {name} must be positive, got {v}")
        self.num_steps, self.num_envs = int(num_steps), int(num_envs)
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.device = torch.device(device)
        self.extras = dict(extras or {})
        for name, width in self.extras.items():
            if name in _RESERVED or not name.isidentifier():
                raise OffrlError(f"rollout extra name {name!r} is reserved or not an identifier")
            if int(width) < 0:
                raise OffrlError(f"rollout extra {name!r} width must be >= 0, got {width}")
        T, N = self.num_steps, self.num_envs
        self._shapes = {"obs": (N, self.obs_dim), "act": (N, self.act_dim)}
        self._shapes.update({k: (N,) for k in ("logp", "value", "rew", "term", "trunc", "final_value", "adv", "ret")})
        self._shapes.update({k: (N, int(w)) if int(w) else (N,) for k, w in self.extras.items()})
        self._columns = tuple(self._shapes)
        for name, shape in self._shapes.items():
            dtype = torch.bool if name in ("term", "trunc") else torch.float32
            setattr(self, name, torch.zeros((T, *shape), dtype=dtype, device=self.device))
        self.ptr = 0
        self.has_returns = False

    @property
    def full(self) -> bool:
        return self.ptr >= self.num_steps

    def reset(self) -> None:
        """Start the next rollout: the pointer goes back to step 0 (old data is overwritten by ``add``)."""
        self.ptr, self.has_returns = 0, False

    def _check(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != self._shapes[name]:
            raise OffrlError(f"rollout add: {name} has shape {tuple(x.shape)}, expected {self._shapes[name]}")
        return x

    def add(self, obs, act, logp, value, rew, term, trunc, final_value=None, **extras) -> None:
        """Store one time step for all N envs (numpy arrays or tensors; every declared extra is required)."""
        if self.full:
            raise OffrlError(f"rollout storage is full ({self.num_steps} steps); call reset() first")
        if set(extras) != set(self.extras):
            raise OffrlError(f"rollout add: extras {sorted(extras)} do not match the declared {sorted(self.extras)}")
        if self.device.type == "cpu":  # numpy writes into views of the CPU columns: the same values, less overhead
            self._add_numpy(obs, act, logp, value, rew, term, trunc, final_value, extras)
            return
        dev, f32 = self.device, torch.float32
        if final_value is None:
            final_value = torch.zeros(self.num_envs, device=dev)
        row = {k: self._check(k, _to(v, dev, f32)) for k, v in
               (("obs", obs), ("act", act), ("logp", logp), ("value", value), ("rew", rew), ("final_value", final_value))}
        row["term"] = self._check("term", _to(term, dev, torch.bool))
        row["trunc"] = self._check("trunc", _to(trunc, dev, torch.bool))
        row["final_value"] = row["final_value"] * (row["trunc"] & ~row["term"])  # 0 unless truncated, not terminated
        row.update({k: self._check(k, _to(v, dev, f32)) for k, v in extras.items()})
        for k, v in row.items():
            getattr(self, k)[self.ptr] = v
        self.ptr += 1
        self.has_returns = False

    def _add_numpy(self, obs, act, logp, value, rew, term, trunc, final_value, extras) -> None:
        row = {"obs": obs, "act": act, "logp": logp, "value": value, "rew": rew, **extras}
        t = self.ptr
        for k, v in row.items():
            v = _np(v, np.float32)
            if v.shape != self._shapes[k]:
                raise OffrlError(f"rollout add: {k} has shape {v.shape}, expected {self._shapes[k]}")
            getattr(self, k).numpy()[t] = v
        term, trunc = _np(term, np.bool_), _np(trunc, np.bool_)
        for k, v in (("term", term), ("trunc", trunc)):
            if v.shape != self._shapes[k]:
                raise OffrlError(f"rollout add: {k} has shape {v.shape}, expected {self._shapes[k]}")
            getattr(self, k).numpy()[t] = v
        fv = self.final_value.numpy()
        if final_value is None:
            fv[t] = 0.0
        else:
            final_value = _np(final_value, np.float32)
            if final_value.shape != self._shapes["final_value"]:
                raise OffrlError(f"rollout add: final_value has shape {final_value.shape}, expected {self._shapes['final_value']}")
            fv[t] = final_value * (trunc & ~term)  # 0 unless truncated, not terminated
        self.ptr += 1
        self.has_returns = False

    def compute_returns(self, last_value, gamma: float, lam: float, bootstrap_truncation: bool = False) -> None:
        """Fill ``adv`` and ``ret`` by GAE (equations in the module docstring); needs a full rollout.

        ``last_value``: ``[N]``, V(obs_T), the observation after the last stored step.
        """
        if not self.full:
            raise OffrlError(f"compute_returns needs a full rollout ({self.ptr}/{self.num_steps} steps stored)")
        last_value = _to(last_value, self.device, torch.float32)
        if tuple(last_value.shape) != (self.num_envs,):
            raise OffrlError(f"last_value has shape {tuple(last_value.shape)}, expected ({self.num_envs},)")
        # CleanRL: nextnonterminal_t = 1 - dones[t+1] (t < T-1), 1 - next_done (t = T-1), with dones[t+1]
        # the flag returned by the step taken at t  ==  1 - end_t here (flags stored where they happened).
        notend = 1.0 - (self.term | self.trunc).float()
        v_next = torch.cat([self.value[1:], last_value[None]]) * notend
        if bootstrap_truncation:
            v_next = v_next + self.final_value * (self.trunc & ~self.term)
        delta = self.rew + gamma * v_next - self.value
        a = torch.zeros(self.num_envs, device=self.device)
        for t in reversed(range(self.num_steps)):
            a = delta[t] + gamma * lam * notend[t] * a
            self.adv[t] = a
        self.ret.copy_(self.adv + self.value)
        self.has_returns = True

    def minibatches(self, num_minibatches: int, generator: torch.Generator | None = None) -> Iterator[SimpleNamespace]:
        """Yield minibatches (``obs, act, logp, value, adv, ret`` + extras) over the T*N flattened samples.

        A fresh ``torch.randperm(T*N, generator=generator)`` per call; sizes exactly as CleanRL (see module doc).
        """
        if not self.has_returns:
            raise OffrlError("minibatches: call compute_returns() on the full rollout first")
        batch_size = self.num_steps * self.num_envs
        if not 1 <= num_minibatches <= batch_size:
            raise OffrlError(f"num_minibatches must be in [1, {batch_size}], got {num_minibatches}")
        mb_size = batch_size // num_minibatches
        gen_device = generator.device if generator is not None else self.device
        perm = torch.randperm(batch_size, generator=generator, device=gen_device).to(self.device)
        names = ("obs", "act", "logp", "value", "adv", "ret", *self.extras)
        flat = {k: getattr(self, k).reshape(batch_size, *self._shapes[k][1:]) for k in names}
        for start in range(0, batch_size, mb_size):
            idx = perm[start:start + mb_size]
            yield SimpleNamespace(**{k: v[idx] for k, v in flat.items()})

    def state_dict(self) -> dict:
        """Exact checkpoint: geometry, pointer and every column (CPU copies)."""
        return {"num_steps": self.num_steps, "num_envs": self.num_envs, "obs_dim": self.obs_dim,
                "act_dim": self.act_dim, "extras": dict(self.extras), "ptr": self.ptr, "has_returns": self.has_returns,
                "columns": {k: getattr(self, k).detach().to("cpu", copy=True) for k in self._columns}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` into a storage of the same geometry (columns go back to ``device``)."""
        geometry = ("num_steps", "num_envs", "obs_dim", "act_dim", "extras")
        if any(state.get(k) != getattr(self, k) for k in geometry):
            raise OffrlError(f"rollout checkpoint geometry { {k: state.get(k) for k in geometry} } "
                             f"does not match this storage { {k: getattr(self, k) for k in geometry} }")
        for k in self._columns:
            getattr(self, k).copy_(state["columns"][k])
        self.ptr, self.has_returns = int(state["ptr"]), bool(state["has_returns"])
