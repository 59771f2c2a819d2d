"""Base class of every agent: acting, exploring, checkpoint save/load, optimizer bookkeeping,
frozen policies, starting from another run, phase hooks and export.

An algorithm file subclasses :class:`Agent`, builds its networks and optimizers in ``__init__``
and implements ``update(batch) -> dict[str, Tensor]`` and ``policy(obs, deterministic)``.
Everything else (numpy/torch conversion, observation normalization at act time, saving and
loading with the config, exact-resume state) lives here once.

The agent protocol the run lifecycle (:mod:`offrl.run`) uses:

* ``update(batch)`` — one gradient step on a :class:`~offrl.buffer.Batch`, metrics as tensors;
* ``act(obs)`` — deterministic actions for raw observations (evaluation, deployment);
* ``explore(obs)`` — the behaviour in an online phase (default: sampled actions);
* ``rollout_action(obs) -> (actions, extras)`` — what a collector needs (on-policy: log-prob, value);
* ``state_value(obs)``, ``learn(storage, last_value)`` — on-policy agents: bootstrap values and learning
  from a full rollout;
* ``begin_phase(kind, steps)`` — called when a phase starts (phase-aware schedules);
* ``setup_data(buffer)`` — called with the filled buffer before an offline phase.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn

from offrl.errors import OffrlError
from offrl.io import save_torch

CHECKPOINT_FORMAT = "offrl-checkpoint-v1"
_LOADING_FROZEN: contextvars.ContextVar[dict | None] = contextvars.ContextVar("offrl_frozen", default=None)


@contextlib.contextmanager
def restoring_frozen(ckpt: dict | None):
    """While building an agent that resumes from ``ckpt``, its ``frozen_policy`` parts come from
    the copies saved in the checkpoint (not from their original files, which may have changed or
    gone)."""
    token = _LOADING_FROZEN.set((ckpt or {}).get("frozen"))
    try:
        yield
    finally:
        _LOADING_FROZEN.reset(token)


def config_to_dict(cfg) -> dict[str, Any]:
    """A dataclass config as plain python values (tuples → lists) for checkpoints and JSON."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_from_dict(cls, data: dict[str, Any]):
    """Rebuild a config dataclass; unknown keys are ignored, list fields back to tuples. A field the
    saved config lacks takes the class's ``legacy_defaults`` value when it has one (the behaviour
    before the field existed, so an older checkpoint loads and resumes as it was trained), else
    its default."""
    kwargs = {}
    legacy = getattr(cls, "legacy_defaults", {})
    for f in dataclasses.fields(cls):
        if f.name in data:
            v = data[f.name]
            default = f.default if f.default is not dataclasses.MISSING else None
            kwargs[f.name] = tuple(v) if isinstance(v, list) and isinstance(default, tuple) else v
        elif f.name in legacy:
            kwargs[f.name] = legacy[f.name]
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


class FrozenPolicy(nn.Module):
    """A loaded policy that acts but never learns: its parameters never require gradients (no
    optimizer touches them), it stays in eval mode, and it is saved inside its owner's checkpoint
    as a policy file (acting weights and config) and restored from there — the original file is
    not needed again. Calling it gives the policy's deterministic actions for raw observations.
    """

    def __init__(self, source: str | dict, device: str | torch.device = "cpu"):
        super().__init__()
        from offrl.registry import agent_class

        ckpt = load_checkpoint(source) if isinstance(source, str) else source
        agent = agent_class(ckpt.get("algo")).from_checkpoint(ckpt, device=device,
                                                              path=source if isinstance(source, str) else "frozen policy")
        keep = agent._policy_keys()
        self.policy_file = {k: ckpt[k] for k in ("format", "algo", "config", "dims")}
        self.policy_file["agent"] = {k: v.detach().cpu().clone() for k, v in ckpt["agent"].items() if k in keep}
        self.policy_file["policy"] = dict(ckpt.get("policy") or {"dataset": ckpt.get("dataset")})
        if ckpt.get("frozen"):
            self.policy_file["frozen"] = ckpt["frozen"]
        self.agent = agent.requires_grad_(False).eval()
        self.obs_dim, self.act_dim, self.algo = agent.obs_dim, agent.act_dim, agent.algo

    def train(self, mode: bool = True) -> "FrozenPolicy":
        return super().train(False)  # always in eval mode (dropout off)

    @torch.no_grad()
    def forward(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.agent.raw_policy(obs, deterministic)


def adam(params, lr, device: torch.device, **kwargs) -> torch.optim.Adam:
    """Adam, fused on CPU and CUDA (a tensor ``lr`` makes in-place schedules possible); capturable
    on CUDA (its step counters stay on the device, so a whole update can be graph-captured)."""
    fused = dict(fused=True, capturable=device.type == "cuda") if device.type in ("cpu", "cuda") else {}
    return torch.optim.Adam(params, lr=lr, **fused, **kwargs)


class Agent(nn.Module):
    """Base agent. Subclasses set ``algo`` and ``Config`` and fill ``self.optimizers``
    (name → optimizer) so that checkpoints capture them."""

    algo: ClassVar[str] = "agent"
    Config: ClassVar[type]
    policy_modules: ClassVar[tuple[str, ...]] = ("actor",)
    """Sub-modules that acting needs: what a policy file (:meth:`save_policy`) keeps."""
    online_continuation: ClassVar[bool] = False
    """Whether the method defines an online phase after its offline one (``--online-steps``)."""
    stackable: ClassVar[bool] = False
    """Whether ``update`` works on stacked seeds (:mod:`offrl.stacked`: batches ``[S, B, ...]``, losses
    reduced per seed over the batch dim, summed over seeds before ``backward``)."""
    seeds: int = 0
    """Stacked seeds of this agent (0: a single agent; set by :class:`offrl.stacked.Stack`)."""
    graph_safe: ClassVar[bool] = False
    """Whether ``update`` can be captured as a CUDA graph (``--cuda-graph``, :mod:`offrl.graphs`):
    no host sync, no data-dependent shapes, no python-side state that changes between steps (or
    :meth:`graph_parts` / :meth:`graph_step` say how to replay it)."""

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
        self._frozen: dict[str, FrozenPolicy] = {}
        self.phase_kind = "offline"

    def seed_mean(self, x: torch.Tensor, seed_dim: int = 0) -> torch.Tensor:
        """A metric's mean over the batch: a scalar for a single agent, per seed ``[S]`` for stacked
        seeds (``seed_dim``: where the seed dim is, 0, or 1 for an ensemble output ``[E, S, B]``)."""
        if not self.seeds:
            return x.mean()
        return x.mean(dim=[d for d in range(x.dim()) if d != seed_dim])

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

    def graph_parts(self, batch, outputs: dict) -> dict:
        """``--cuda-graph``: name → function of one captured graph, run on the static ``batch``
        (captured in order; a later part may read ``outputs[earlier part]`` when it runs). Default:
        the whole update."""
        return {"update": lambda: self.update(batch)}

    def graph_step(self, replays: dict, outputs: dict) -> dict[str, torch.Tensor]:
        """``--cuda-graph``: one training step by replaying the captured parts; its metrics."""
        from offrl.graphs import outputs_of

        replays["update"]()
        return outputs_of(outputs["update"])

    def begin_phase(self, kind: str, steps: int) -> None:
        """Called by the run when a phase starts (``kind``: offline, online, on-policy; ``steps``:
        its length). Phase-aware schedules override it and call super()."""
        self.phase_kind = kind

    def adam(self, params, lr, **kwargs) -> torch.optim.Adam:
        return adam(params, lr, self.device, **kwargs)

    # ------------------------------------------------------------------ frozen parts, other runs
    def frozen_policy(self, name: str, source: str | dict) -> FrozenPolicy:
        """Load ``source`` (a checkpoint or policy file path, or its dict) as the frozen part
        ``name``; when this agent is being restored from its own checkpoint, the copy saved there
        is used instead of ``source``."""
        saved = (_LOADING_FROZEN.get() or {}).get(name)
        part = FrozenPolicy(saved if saved is not None else source, self.device)
        setattr(self, name, part)
        self._frozen[name] = part
        return part

    def init_from(self, source: str | dict, parts: Sequence[str] = ("actor",)) -> "Agent":
        """Start from another run: copy the weights of the sub-modules ``parts`` (e.g. ``actor``,
        ``critic``, ``critic_target``, ``obs_stats`` for the observation normalization) from a
        checkpoint or policy file of any algorithm with modules of the same names and shapes."""
        ckpt = load_checkpoint(source) if isinstance(source, str) else source
        weights = ckpt["agent"]
        for part in parts:
            if part == "obs_stats":
                self.obs_mean.copy_(weights["obs_mean"])
                self.obs_std.copy_(weights["obs_std"])
                continue
            sub = {k[len(part) + 1:]: v for k, v in weights.items() if k.startswith(part + ".")}
            if not sub or not isinstance(getattr(self, part, None), nn.Module):
                raise OffrlError(f"cannot take '{part}' from a {ckpt.get('algo')} checkpoint into {self.algo}")
            try:
                getattr(self, part).load_state_dict(sub)
            except RuntimeError as e:
                raise OffrlError(f"'{part}' of the {ckpt.get('algo')} checkpoint does not fit {self.algo}: "
                                 f"{str(e).splitlines()[-1].strip()}") from None
        return self

    def export(self, path: str, format: str = "torchscript") -> str:
        """Write the deterministic acting policy, observation normalization inside, as a file that
        runs without offrl (TorchScript or ONNX); see :mod:`offrl.export`."""
        from offrl.export import export_policy

        return export_policy(self, path, format)

    # ------------------------------------------------------------------ acting
    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def explore(self, obs) -> np.ndarray:
        """The behaviour in an online phase: sampled actions for raw observations (an agent with a
        deterministic actor adds its exploration noise here)."""
        return self.act(obs, deterministic=False)

    def rollout_action(self, obs) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(actions, extras)`` for a collector; on-policy agents add ``logp`` and ``value``."""
        return self.explore(obs), {}

    def state_value(self, obs) -> np.ndarray:  # pragma: no cover - on-policy agents implement it
        """On-policy agents: V(s) for raw observations (bootstrap values of an on-policy phase)."""
        raise NotImplementedError(f"{self.algo} has no state-value function")

    def rollout_sink(self, storage):
        """On-policy agents: the collector sink that fills ``storage`` (agents that normalize what
        they store return their own)."""
        from offrl.collector import RolloutSink

        return RolloutSink(storage, self.state_value)

    def learn(self, storage, last_value) -> dict[str, torch.Tensor]:  # pragma: no cover
        """On-policy agents: learn from one full rollout (:class:`~offrl.rollout.RolloutStorage`)."""
        raise NotImplementedError(f"{self.algo} does not learn from rollouts")

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
    def state_dict(self, *args, **kwargs):
        """The module's state without the frozen parts (they are saved as policy files)."""
        sd = super().state_dict(*args, **kwargs)
        if not self._frozen:
            return sd
        prefixes = tuple(f"{n}." for n in self._frozen)
        return type(sd)((k, v) for k, v in sd.items() if not k.startswith(prefixes))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self._frozen:
            prefixes = tuple(f"{n}." for n in self._frozen)
            own = {k: v for k, v in super().state_dict().items() if k.startswith(prefixes)}
            state_dict = {**own, **state_dict}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def training_state(self) -> dict[str, Any]:
        """Everything needed to continue training exactly: weights and optimizers."""
        return {
            "agent": self.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
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
                if group.get("capturable") and self.device.type != "cuda":
                    # saved on CUDA (capturable Adam, or one torch.compile flipped): off CUDA a
                    # capturable Adam asserts at its first step
                    group["capturable"] = False

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
        if self._frozen:  # a wrapped base policy travels with the policy that acts through it
            ckpt["frozen"] = {k: p.policy_file for k, p in self._frozen.items()}
        save_torch(ckpt, path)

    def checkpoint(self, **extra) -> dict[str, Any]:
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "algo": self.algo,
            "config": config_to_dict(self.cfg),
            "dims": {"obs_dim": self.obs_dim, "act_dim": self.act_dim},
            **self.training_state(),
        }
        if self._frozen:
            ckpt["frozen"] = {k: p.policy_file for k, p in self._frozen.items()}
        ckpt.update(extra)
        return ckpt

    def save(self, path: str, **extra) -> None:
        """Write a checkpoint (weights, optimizers, config) that :meth:`load` reads back."""
        save_torch(self.checkpoint(**extra), path)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device: str | torch.device | None = None, path: str = "checkpoint"):
        if ckpt.get("algo") != cls.algo:
            raise OffrlError(f"{path} is a checkpoint of algorithm '{ckpt.get('algo')}', not '{cls.algo}'")
        from offrl.utils import resolve_device

        cfg = config_from_dict(cls.Config, ckpt["config"])
        device = resolve_device("auto" if device is None else str(device))  # one-line errors, cuda → cuda:0
        token = _LOADING_FROZEN.set(ckpt.get("frozen"))
        try:
            agent = cls(cfg, ckpt["dims"]["obs_dim"], ckpt["dims"]["act_dim"], device=device)
        finally:
            _LOADING_FROZEN.reset(token)
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
