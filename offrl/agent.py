"""Base class of every agent: acting, checkpoint save/load, optimizer bookkeeping.

An algorithm file subclasses :class:`Agent`, builds its networks and optimizers in ``__init__``
and implements ``update(batch) -> dict[str, Tensor]`` and ``policy(obs, deterministic)``.
Everything else (numpy/torch conversion, observation normalization at act time, saving and
loading with the config, exact-resume state) lives here once.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from offrl.errors import OffrlError

CHECKPOINT_FORMAT = "offrl-checkpoint-v1"


def config_to_dict(cfg) -> dict[str, Any]:
    """A dataclass config as plain python values (tuples → lists) for checkpoints and JSON."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_from_dict(cls, data: dict[str, Any]):
    """Rebuild a config dataclass; unknown keys are ignored, list fields back to tuples."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            v = data[f.name]
            default = f.default if f.default is not dataclasses.MISSING else None
            kwargs[f.name] = tuple(v) if isinstance(v, list) and isinstance(default, tuple) else v
    return cls(**kwargs)


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Read an offrl checkpoint with ``torch.load(weights_only=True)``; one-line errors."""
    if not os.path.isfile(path):
        raise OffrlError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, zip errors, truncated files
        raise OffrlError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise OffrlError(f"{path} is not an offrl checkpoint")
    return ckpt


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temp file in the same directory, then rename over ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Agent(nn.Module):
    """Base agent. Subclasses set ``algo`` and ``Config`` and fill ``self.optimizers`` /
    ``self.schedulers`` (name → object) so that checkpoints capture them."""

    algo: ClassVar[str] = "agent"
    Config: ClassVar[type]
    policy_modules: ClassVar[tuple[str, ...]] = ("actor",)
    """Sub-modules that acting needs: what a policy file (:meth:`save_policy`) keeps."""

    def __init__(self, cfg, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.device = torch.device(device)
        mean = torch.zeros(obs_dim) if obs_mean is None else torch.as_tensor(obs_mean, dtype=torch.float32)
        std = torch.ones(obs_dim) if obs_std is None else torch.as_tensor(obs_std, dtype=torch.float32)
        self.register_buffer("obs_mean", mean.reshape(obs_dim).clone())
        self.register_buffer("obs_std", std.reshape(obs_dim).clone())
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}

    # ------------------------------------------------------------------ to implement
    def update(self, batch) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:  # pragma: no cover
        """Actions for a batch of *normalized* observations on the agent's device."""
        raise NotImplementedError

    def setup_data(self, buffer) -> None:
        """Called by the offline loop with the filled buffer before training (and on resume):
        agents that need the whole dataset (PRDC's nearest-neighbour index) build it here."""

    def compiled_update(self):
        """The update function ``--compile`` uses (agents with a python-side schedule override)."""
        return torch.compile(self.update)

    # ------------------------------------------------------------------ acting
    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        """Action(s) for raw observation(s): ``[obs_dim] → [act_dim]`` or ``[B, obs_dim] → [B, act_dim]``.

        Accepts numpy arrays, lists or tensors; returns a float32 numpy array.
        """
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32) if not isinstance(obs, torch.Tensor) else obs,
                            dtype=torch.float32, device=self.device)
        single = x.dim() == 1
        if x.shape[-1] != self.obs_dim:
            raise OffrlError(f"observation has {x.shape[-1]} dims, the agent expects {self.obs_dim}")
        if single:
            x = x.unsqueeze(0)
        was_training = self.training
        self.eval()
        try:
            a = self.raw_policy(x, deterministic)
        finally:
            self.train(was_training)
        a = a.float().cpu().numpy()
        return a[0] if single else a

    def raw_policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions for a batch of *raw* observations (tensor on the device); :meth:`act` calls it.
        Normalizes with the agent's statistics, then :meth:`policy`; plug-ins (CDSA) override it."""
        return self.policy(self.normalize_obs(obs), deterministic)

    # ------------------------------------------------------------------ state
    def training_state(self) -> dict[str, Any]:
        """Everything needed to continue training exactly: weights, optimizers, schedules."""
        return {
            "agent": self.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        if "policy" in state:  # a policy file: acting weights only
            self._load_policy_weights(state["agent"])
            return
        try:
            self.load_state_dict(state["agent"])
        except (RuntimeError, KeyError) as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = lines[-1] if lines else type(e).__name__
            raise OffrlError(f"the checkpoint's weights do not fit this {self.algo} config ({detail}); "
                             "flags that change the networks cannot be changed on resume") from None
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
            for group in o.param_groups:  # a tensor lr (in-place schedules) must stay on our device
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"] = group["lr"].to(self.device)
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])

    def _policy_keys(self) -> set[str]:
        keep = set(self.policy_modules) | {"obs_mean", "obs_std"}
        return {k for k in self.state_dict() if k.split(".")[0] in keep}

    def _load_policy_weights(self, weights: dict[str, torch.Tensor]) -> None:
        if set(weights) != self._policy_keys():
            raise OffrlError(f"the policy file's weights do not fit this {self.algo} config "
                             f"(keys differ: {sorted(set(weights) ^ self._policy_keys())[:3]})")
        try:
            self.load_state_dict(weights, strict=False)
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise OffrlError(f"the policy file's weights do not fit this {self.algo} config ({lines[-1]})") from None

    def save_policy(self, path: str, info: dict[str, Any] | None = None) -> None:
        """Write a small policy file: the acting weights (``policy_modules`` and the observation
        normalization), the config and ``info`` (provenance, evaluation return). :meth:`load` and
        ``offrl eval`` read it like a checkpoint; it cannot be resumed."""
        keys = self._policy_keys()
        weights = {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if k in keys}
        ckpt = {"format": CHECKPOINT_FORMAT, "algo": self.algo, "config": config_to_dict(self.cfg),
                "dims": {"obs_dim": self.obs_dim, "act_dim": self.act_dim}, "agent": weights, "policy": dict(info or {})}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_atomic(ckpt, path)

    def checkpoint(self, **extra) -> dict[str, Any]:
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "algo": self.algo,
            "config": config_to_dict(self.cfg),
            "dims": {"obs_dim": self.obs_dim, "act_dim": self.act_dim},
            **self.training_state(),
        }
        ckpt.update(extra)
        return ckpt

    def save(self, path: str, **extra) -> None:
        """Write a checkpoint (weights, optimizers, config) that :meth:`load` reads back."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_atomic(self.checkpoint(**extra), path)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device: str | torch.device | None = None, path: str = "checkpoint"):
        if ckpt.get("algo") != cls.algo:
            raise OffrlError(f"{path} is a checkpoint of algorithm '{ckpt.get('algo')}', not '{cls.algo}'")
        cfg = config_from_dict(cls.Config, ckpt["config"])
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        agent = cls(cfg, ckpt["dims"]["obs_dim"], ckpt["dims"]["act_dim"], device=device)
        try:
            agent.load_training_state(ckpt)
        except OffrlError as e:
            raise OffrlError(f"{path}: {e}") from None
        return agent

    @classmethod
    def load(cls, path: str, device: str | torch.device | None = None):
        """Rebuild an agent from a checkpoint written by :meth:`save` or by training.

        ``device=None`` picks cuda when available.
        """
        return cls.from_checkpoint(load_checkpoint(path), device=device, path=path)
