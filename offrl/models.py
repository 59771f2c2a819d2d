"""Learned dynamics models: a Gaussian ensemble of transition models and per-env termination functions.

:class:`EnsembleDynamics` is the transition model of MOPO/MOBILE as Uni-O4's offline policy
evaluation uses it (``Lei-Kun/Uni-O4`` @1eecc45, ``transition_model/``): E members (7), each an MLP
(s‖a) → 4 × 200 Swish → (mean, log-variance) of [Δs, r], all members in one batched matmul per layer
(:class:`offrl.nets.EnsembleLinear`). Inputs are standardized with the training inputs' mean and std
(std < 1e-12 → 1). The log-variance is soft-clamped into learned bounds,

    logvar = max_lv − softplus(max_lv − x);   logvar = min_lv + softplus(logvar − min_lv)

with max_lv = 0.5 and min_lv = −10 at the start. A step draws, per row, one of the elites (5) at
random and samples ``s' = s + Δŝ + σ·ε``, ``r = r̂ + σ·ε`` from it (only the drawn member is run).

Training (:class:`DynamicsTrainer`, one :meth:`~DynamicsTrainer.epoch` at a time so that a run can
checkpoint between epochs): a holdout of min(20 %, 1000) rows; each member trains on its own
bootstrap resample of the rest (re-shuffled every epoch), batches of 256, Adam 1e-3, loss per member

    L_e = mean((μ − y)² · exp(−logvar)) + mean(logvar)

summed over members, plus Σ_layers wd_l · ½‖W_l‖² and 0.01 · (Σ max_lv − Σ min_lv). After every
epoch the holdout MSE of each member's mean is compared with its best so far: a relative
improvement above 1 % saves that member's weights. Training stops after 5 epochs without any
saved improvement (or at ``max_epochs``); the elites are the members with the lowest best holdout
MSE and every member's weights go back to its saved best.

Termination functions (:func:`termination_fn`) follow Gymnasium's v5 MuJoCo envs (healthy ranges
read from the constructed env): Hopper ``z > 0.7``, ``|θ| < 0.2``, every entry of ``s[1:]`` in
(−100, 100); Walker2d ``0.8 < z < 2``, ``|θ| < 1``; HalfCheetah never terminates.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from offrl.errors import check
from offrl.nets import EnsembleLinear

HIDDEN = (200, 200, 200, 200)
WEIGHT_DECAY = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)


def soft_clamp(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Clamp with gradients everywhere: ``high − softplus(high − x)``, then ``low + softplus(· − low)``."""
    x = high - F.softplus(high - x)
    return low + F.softplus(x - low)


class EnsembleDynamics(nn.Module):
    """E Gaussian transition models of [Δs, r] given (s, a), evaluated together.

    ``forward(x_scaled [B, in] or [E, B, in]) -> (mean, logvar) [E, B, obs_dim + 1]`` on
    standardized inputs; :meth:`predict` standardizes raw ``(obs, act)`` and adds ``obs`` back;
    :meth:`step` samples next observations and rewards from random elites. The scaler
    statistics, the elites and each member's best weights are buffers (checkpointed with the module).
    """

    def __init__(self, obs_dim: int, act_dim: int, num_models: int = 7, num_elites: int = 5,
                 hidden: Sequence[int] = HIDDEN, weight_decay: Sequence[float] = WEIGHT_DECAY):
        super().__init__()
        check(0 < num_elites <= num_models, f"need 0 < elites <= models, got {num_elites} and {num_models}")
        check(len(weight_decay) == len(hidden) + 1, f"need one weight decay per layer ({len(hidden) + 1}), got {len(weight_decay)}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.num_models, self.num_elites = num_models, num_elites
        dims = [obs_dim + act_dim, *hidden, 2 * (obs_dim + 1)]
        self.layers = nn.ModuleList(EnsembleLinear(i, o, num_models) for i, o in zip(dims[:-1], dims[1:]))
        self.weight_decay = tuple(float(w) for w in weight_decay)
        for layer in self.layers:  # the official init: truncated normal std 1/(2√in), zero biases
            nn.init.trunc_normal_(layer.weight, std=1.0 / (2.0 * math.sqrt(layer.in_dim)))
            nn.init.zeros_(layer.bias)
        self.max_logvar = nn.Parameter(torch.full((obs_dim + 1,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((obs_dim + 1,), -10.0))
        self.register_buffer("elites", torch.arange(num_elites))
        self.register_buffer("input_mean", torch.zeros(obs_dim + act_dim))
        self.register_buffer("input_std", torch.ones(obs_dim + act_dim))
        for i, layer in enumerate(self.layers):  # each member's best weights so far (holdout)
            self.register_buffer(f"saved_weight{i}", layer.weight.detach().clone())
            self.register_buffer(f"saved_bias{i}", layer.bias.detach().clone())

    # ------------------------------------------------------------------ model
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers[:-1]:
            x = F.silu(layer(x))  # Swish
        mean, logvar = self.layers[-1](x).chunk(2, dim=-1)
        return mean, soft_clamp(logvar, self.min_logvar, self.max_logvar)

    def scale(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return (torch.cat([obs, act], -1) - self.input_mean) / self.input_std

    def set_scaler(self, inputs: torch.Tensor) -> None:
        """Standardize with these (training) inputs: mean and population std, std < 1e-12 → 1."""
        std = inputs.std(0, correction=0)
        self.input_mean.copy_(inputs.mean(0))
        self.input_std.copy_(torch.where(std < 1e-12, torch.ones_like(std), std))

    @torch.no_grad()
    def predict(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's (mean of [s', r], std) for raw ``obs``, ``act`` [B, ·] → [E, B, obs_dim + 1]."""
        mean, logvar = self(self.scale(obs, act))
        mean = torch.cat([mean[..., :-1] + obs, mean[..., -1:]], -1)
        return mean, (0.5 * logvar).exp()

    def member_forward(self, member: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Member ``member`` alone on standardized inputs ``x [B, in]`` → (mean, logvar) [B, obs_dim + 1]."""
        for layer in self.layers[:-1]:
            x = F.silu(torch.addmm(layer.bias[member], x, layer.weight[member]))
        last = self.layers[-1]
        mean, logvar = torch.addmm(last.bias[member], x, last.weight[member]).chunk(2, dim=-1)
        return mean, soft_clamp(logvar, self.min_logvar, self.max_logvar)

    @torch.no_grad()
    def step(self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator | None = None,
             grouped: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One imagined step: ``(next_obs [B, obs_dim], reward [B])``. Each row draws one elite
        uniformly and samples ``[s' − s, r] ~ N(μ, σ²)`` from it.

        ``grouped`` (default on a CPU): only the drawn member is evaluated, the rows grouped by elite,
        one forward per elite (fewer FLOPs; the group sizes are read back to the host). Otherwise
        (default on a GPU) every elite runs on every row in one batched forward and each row takes
        its own elite's output: no host sync. Both use the same random numbers the same way (the
        noise is applied in elite-sorted row order), so they agree up to float rounding."""
        n, dev = obs.shape[0], obs.device
        if grouped is None:
            grouped = dev.type != "cuda"
        pick = torch.randint(0, self.num_elites, (n,), generator=generator, device=dev)
        order = torch.argsort(pick, stable=True)
        x = self.scale(obs, act)
        if grouped:
            counts = torch.bincount(pick, minlength=self.num_elites).tolist()
            outs = [self.member_forward(e, chunk) for e, chunk in zip(self.elites.tolist(), x[order].split(counts))]
            mean = torch.cat([m for m, _ in outs])
            std = (0.5 * torch.cat([lv for _, lv in outs])).exp()
        else:
            mean_all, logvar_all = self(x)  # [E, n, ·] for every member
            member = self.elites[pick[order]]
            mean, std = mean_all[member, order], (0.5 * logvar_all[member, order]).exp()
        noise = torch.randn(mean.shape, generator=generator, device=dev, dtype=mean.dtype)
        sample = torch.empty_like(mean)
        sample[order] = mean + noise * std
        return obs + sample[:, :-1], sample[:, -1]

    # ------------------------------------------------------------------ training helpers
    def decay_loss(self) -> torch.Tensor:
        return sum(wd * 0.5 * layer.weight.square().sum() for wd, layer in zip(self.weight_decay, self.layers))

    @torch.no_grad()
    def save_members(self, mask: torch.Tensor) -> None:
        """Keep the current weights of the members where ``mask [E]`` is true as their best."""
        for i, layer in enumerate(self.layers):
            w, b = getattr(self, f"saved_weight{i}"), getattr(self, f"saved_bias{i}")
            w.copy_(torch.where(mask[:, None, None], layer.weight, w))
            b.copy_(torch.where(mask[:, None, None], layer.bias, b))

    @torch.no_grad()
    def load_saved(self) -> None:
        for i, layer in enumerate(self.layers):
            layer.weight.copy_(getattr(self, f"saved_weight{i}"))
            layer.bias.copy_(getattr(self, f"saved_bias{i}"))

    @torch.no_grad()
    def set_elites(self, holdout_losses: torch.Tensor) -> None:
        """The ``num_elites`` members with the lowest holdout losses (ties: lower index first)."""
        order = torch.sort(holdout_losses, stable=True).indices
        self.elites.copy_(order[: self.num_elites].to(self.elites))


def nll_loss(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ over members of mean((μ − y)² e^(−logvar)) + mean(logvar) (means over batch and dims)."""
    mse_inv = ((mean - target).square() * torch.exp(-logvar)).mean(dim=(1, 2))
    return mse_inv.sum() + logvar.mean(dim=(1, 2)).sum()


class DynamicsTrainer:
    """Holdout-early-stopped training of an :class:`EnsembleDynamics` on ``inputs = [s‖a]`` (raw) and
    ``targets = [Δs, r]``, one :meth:`epoch` per call; :meth:`state_dict` makes it resumable.

    ``generator`` draws the holdout split, the bootstrap resamples and their shuffles.
    """

    def __init__(self, model: EnsembleDynamics, optimizer: torch.optim.Optimizer, batch_size: int = 256,
                 holdout_ratio: float = 0.2, max_holdout: int = 1000, max_epochs_since_update: int = 5,
                 max_epochs: int | None = None, logvar_loss_coef: float = 0.01, improvement: float = 0.01):
        self.model, self.optimizer = model, optimizer
        self.batch_size, self.holdout_ratio, self.max_holdout = batch_size, holdout_ratio, max_holdout
        self.max_epochs_since_update, self.max_epochs = max_epochs_since_update, max_epochs
        self.logvar_loss_coef, self.improvement = logvar_loss_coef, improvement
        self.epochs = 0
        self.epochs_since_update = 0
        self.done = False
        self.holdout_losses: torch.Tensor | None = None
        self.train_idx = self.holdout_idx = self.boot = None

    def start(self, inputs: torch.Tensor, generator: torch.Generator) -> None:
        """Split, fit the scaler on the training rows, draw each member's bootstrap resample."""
        n = inputs.shape[0]
        holdout = min(int(n * self.holdout_ratio), self.max_holdout)
        perm = torch.randperm(n, generator=generator, device=generator.device).to(inputs.device)
        self.holdout_idx, self.train_idx = perm[:holdout], perm[holdout:]
        self.model.set_scaler(inputs[self.train_idx])
        size = len(self.train_idx)
        self.boot = torch.randint(0, size, (self.model.num_models, size), generator=generator,
                                  device=generator.device).to(inputs.device)
        self.holdout_losses = torch.full((self.model.num_models,), 1e10, device=inputs.device)

    @torch.no_grad()
    def validate(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Holdout MSE of each member's mean → [E]."""
        x = self.model.scale(inputs[self.holdout_idx, : self.model.obs_dim], inputs[self.holdout_idx, self.model.obs_dim:])
        mean, _ = self.model(x)
        return (mean - targets[self.holdout_idx]).square().mean(dim=(1, 2))

    def epoch(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator,
              on_batch=None) -> dict[str, torch.Tensor]:
        """One pass over each member's resample, then the holdout check; sets ``done`` at the end.
        ``on_batch(done, total)``, if given, is called after every minibatch (progress reporting)."""
        model, d = self.model, self.model.obs_dim
        if self.boot is None:
            self.start(inputs, generator)
        model.train()
        rows = self.train_idx[self.boot]  # [E, size]
        size = rows.shape[1]
        total = torch.zeros((), device=inputs.device)
        batches, n_batches = 0, -(-size // self.batch_size)
        for start in range(0, size, self.batch_size):
            idx = rows[:, start: start + self.batch_size]
            x, y = inputs[idx], targets[idx]  # [E, b, ·]
            mean, logvar = model(model.scale(x[..., :d], x[..., d:]))
            loss = nll_loss(mean, logvar, y) + model.decay_loss()
            loss = loss + self.logvar_loss_coef * (model.max_logvar.sum() - model.min_logvar.sum())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total = total + loss.detach()
            batches += 1
            if on_batch is not None:
                on_batch(batches, n_batches)
        model.eval()
        new = self.validate(inputs, targets)
        # re-shuffle each member's resample (the official shuffle_rows)
        keys = torch.rand(self.boot.shape, generator=generator, device=generator.device).to(self.boot.device)
        self.boot = torch.gather(self.boot, 1, keys.argsort(dim=1))
        better = (self.holdout_losses - new) / self.holdout_losses > self.improvement
        self.holdout_losses = torch.where(better, new, self.holdout_losses)
        self.epochs += 1
        if bool(better.any()):
            model.save_members(better)
            self.epochs_since_update = 0
        else:
            self.epochs_since_update += 1
        if self.epochs_since_update >= self.max_epochs_since_update or (self.max_epochs and self.epochs >= self.max_epochs):
            self.finish()
        k = model.num_elites
        return {"model_train_loss": total / max(batches, 1),
                "model_holdout_loss": torch.sort(new).values[:k].mean(),
                "model_best_holdout_loss": torch.sort(self.holdout_losses).values[:k].mean(),
                "model_epochs_since_update": torch.tensor(float(self.epochs_since_update), device=inputs.device)}

    def finish(self) -> None:
        """Elites from the best holdout losses; every member back to its saved best weights."""
        self.model.set_elites(self.holdout_losses)
        self.model.load_saved()
        self.model.eval()
        self.done = True

    def state_dict(self) -> dict:
        state = {"epochs": self.epochs, "epochs_since_update": self.epochs_since_update, "done": self.done}
        if not self.done and self.boot is not None:  # the split and resamples only while training
            state.update(holdout_losses=self.holdout_losses.cpu(), train_idx=self.train_idx.cpu(),
                         holdout_idx=self.holdout_idx.cpu(), boot=self.boot.to("cpu", torch.int32))
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epochs, self.epochs_since_update = int(state["epochs"]), int(state["epochs_since_update"])
        self.done = bool(state["done"])
        if "boot" in state:
            dev = self.model.input_mean.device
            self.holdout_losses = state["holdout_losses"].to(dev)
            self.train_idx, self.holdout_idx = state["train_idx"].to(dev), state["holdout_idx"].to(dev)
            self.boot = state["boot"].to(dev, torch.int64)


def dynamics_targets(obs: torch.Tensor, act: torch.Tensor, rew: torch.Tensor, next_obs: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pairs: inputs [s‖a], targets [s' − s, r]."""
    return torch.cat([obs, act], -1), torch.cat([next_obs - obs, rew.reshape(-1, 1)], -1)


# ------------------------------------------------------------------------------------ termination
TerminationFn = Callable[[torch.Tensor], torch.Tensor]

HOPPER_DEFAULTS = {"healthy_state_range": (-100.0, 100.0), "healthy_z_range": (0.7, float("inf")),
                   "healthy_angle_range": (-0.2, 0.2)}
WALKER2D_DEFAULTS = {"healthy_z_range": (0.8, 2.0), "healthy_angle_range": (-1.0, 1.0)}


def _env_ranges(env_id: str, defaults: dict) -> dict:
    """The healthy ranges of the constructed env (``env.unwrapped._healthy_*``); defaults if it cannot be made."""
    try:
        import gymnasium as gym

        env = gym.make(env_id)
        try:
            return {k: tuple(float(v) for v in getattr(env.unwrapped, f"_{k}", defaults[k])) for k in defaults}
        finally:
            env.close()
    except Exception:  # gymnasium or MuJoCo missing: Gymnasium v5's source defaults
        return dict(defaults)


def hopper_termination(healthy_state_range=(-100.0, 100.0), healthy_z_range=(0.7, float("inf")),
                       healthy_angle_range=(-0.2, 0.2)) -> TerminationFn:
    """Hopper-v5 (x excluded from the observation): terminated unless z = s[0], θ = s[1] and every
    entry of s[1:] lie strictly inside their ranges (and s is finite)."""
    (lo_s, hi_s), (lo_z, hi_z), (lo_a, hi_a) = healthy_state_range, healthy_z_range, healthy_angle_range

    def fn(next_obs: torch.Tensor) -> torch.Tensor:
        z, angle, rest = next_obs[:, 0], next_obs[:, 1], next_obs[:, 1:]
        healthy = ((rest > lo_s) & (rest < hi_s)).all(-1) & (z > lo_z) & (z < hi_z) & (angle > lo_a) & (angle < hi_a)
        return ~(healthy & torch.isfinite(next_obs).all(-1))

    return fn


def walker2d_termination(healthy_z_range=(0.8, 2.0), healthy_angle_range=(-1.0, 1.0)) -> TerminationFn:
    """Walker2d-v5: terminated unless z = s[0] and θ = s[1] lie strictly inside their ranges (and s is finite)."""
    (lo_z, hi_z), (lo_a, hi_a) = healthy_z_range, healthy_angle_range

    def fn(next_obs: torch.Tensor) -> torch.Tensor:
        z, angle = next_obs[:, 0], next_obs[:, 1]
        healthy = (z > lo_z) & (z < hi_z) & (angle > lo_a) & (angle < hi_a)
        return ~(healthy & torch.isfinite(next_obs).all(-1))

    return fn


def never_terminates(next_obs: torch.Tensor) -> torch.Tensor:
    """HalfCheetah (and envs without a termination rule here): never terminated."""
    return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)


def termination_fn(env_id: str | None) -> TerminationFn:
    """The termination function of ``env_id``'s MuJoCo family on raw observations → bool [B]:
    Hopper and Walker2d with the constructed env's healthy ranges, anything else never terminates."""
    name = (env_id or "").lower()
    if name.startswith("hopper"):
        return hopper_termination(**_env_ranges(env_id, HOPPER_DEFAULTS))
    if name.startswith("walker2d"):
        return walker2d_termination(**_env_ranges(env_id, WALKER2D_DEFAULTS))
    return never_terminates
