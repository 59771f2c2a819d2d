"""Residual SAC: off-policy residual fine-tuning of a frozen base policy (ResFiT; Ankile et al., 2025).

A behaviour-cloned base policy π_b is frozen; a small residual actor that sees (s, a_b) learns a
bounded correction, trained off-policy on a 50/50 mix of demonstrations and online data. Official
code: amazon-science/residual-offpolicy-rl @66262b0 (``rl/q_agent.py``, ``rl/actor.py``,
``scripts/train_residual_td3.py``, ``utils/normalization.py``); followed where it and the paper
differ, quirks named and behind flags. State-based: MLPs instead of the ViT/SpatialEmb encoders.

Coordinates. Actions are min-max scaled from the demos' per-dimension range, the half-range first
raised to at least --min-action-range / 2 and then expanded by (1 + s), s = --action-scale:

    a_env = mid + (1 + s)·h · a,      a = scale(a_env) = (clamp(a_env, lo, hi) − mid) / ((1 + s)·h)

so base actions lie within about ±1/(1 + s) and the residual has room to reach ±1. Observations are
standardised by the demos' mean and std (std at least --min-obs-std).

Acting (a_b = scale(π_b(s)), Δa from the residual actor on (s̃, a_b), s̃ the standardised state):

    Δa  = s · tanh(u),  u ~ N(μ(s̃, a_b), σ(s̃, a_b))        (sac, default: a squashed Gaussian)
    Δa  = clampST(s · tanh(f(s̃, a_b)) + σ ε, ±(1 − 1e-6))    (td3: σ = 0.05, no clip when acting)
    a   = a_b + Δa (stored, unclamped);   executed: a_env = unscale(clamp(a, −1, 1))

The last layer of the residual actor is zero-initialised, so at the start μ = f = 0: the
deterministic action (evaluation) is exactly the base action (bit for bit: the executed action is
computed as π_b(s) + (clamp(a, ±1) − a_b)·(1 + s)h, the same number as unscale(clamp(a, ±1))).

Update per env step (4 critic updates, the actor on the 4th; each critic update moves the EMA):

    y    = R⁽ᵏ⁾ + γᵏ (1 − d) [ min_{2 random of 10} Q̄_j(s'ₖ, clamp(a_b' + Δa', ±1)) − α log π(Δa'|s'ₖ) ]
             sac: Δa' ~ π(·|s'ₖ, a_b');  td3: Δa' = f̄(s'ₖ, a_b') + clip(σ ε, ±0.3), no entropy term
             (k ≤ 3 steps, stopped at an episode end; d = terminated OR truncated: a time limit is
             not bootstrapped, official; during critic warm-up the next residual is its mean)
    L_Q  = mean_B [ (mean_{j=1..10} |Q_j(s, a) − y|)² ]           ("abs-mean-squared", official; not the MSE)
    L_π  = mean_B [ α log π(Δa|s, a_b) − mean_j Q_j(s, clamp(a_b + Δa, ±1)) ]      (sac, reparameterized)
    L_π  = −mean_B mean_j Q_j(s, clamp(a_b + f(s̃, a_b), ±1))                     (td3, no noise)
    L_α  = −log α · (log π + H̄)          (sac; log π of the unit-box residual tanh(u), H̄ = −|A|)
    Q̄ ← τ Q + (1 − τ) Q̄, f̄ ← τ f + (1 − τ) f̄   (τ = 0.005); AdamW (wd 0.01), grad-norm clip 1.0

Batches: 128 demo rows + 128 online rows (two buffers, :class:`~offrl.buffer.MixedSampler`). Demo
rows store the demo action itself as the executed action a, with a_b = π_b(s) alongside (a column,
``base_act``); online rows store a_b + Δa before the clamp to ±1, and a_b. Schedule: --learning-starts env steps
with a = a_b + U(−0.2, 0.2), then --critic-warmup-steps critic-only updates, then the loop above.

``--no-residual`` is the RLPD-style baseline: SAC from scratch (a_b = 0, the actor sees s only,
full action range, no expansion), with the same critic, demos, mixing and schedule
(uniform-random warm-up actions). See docs/residual_sac.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from offrl.algos.sac import SAC
from offrl.algos.sac import Config as SACConfig
from offrl.errors import check
from offrl.nets import MLP, EnsembleCritic, TanhGaussianActor, orthogonal_init_, soft_update_
from offrl.registry import Algorithm, register
from offrl.run import EnvPhase

DEMOS_FOR_ENV = {"offrl/FetchPush-v4": "offrl/fetch/push-scripted-v0",
                 "offrl/FetchPickAndPlace-v4": "offrl/fetch/pickandplace-scripted-v0"}
"""The default --demos of an env."""
ENV_ALIASES = {"FetchPush-v4": "offrl/FetchPush-v4", "FetchPickAndPlace-v4": "offrl/FetchPickAndPlace-v4"}
"""Gymnasium-Robotics ids → offrl's wrapped ids (flat observation ‖ goal, success reward; envs/robotics.py):
``--env FetchPush-v4`` means the task as ResFiT uses it."""
CLAMP_EPS = 1e-6
"""The official TruncatedNormal clamps a sampled residual to ±(1 − 1e-6) (straight-through)."""


@dataclass
class Config(SACConfig):
    """Residual SAC / residual TD3 on a frozen base policy (ResFiT; official residual-TD3 defaults, 2×256 nets on CPU, paper 2×1024)."""

    env: str = "offrl/FetchPush-v4"
    """Gymnasium env id (actions are rescaled to [-1, 1])."""
    base_policy: str | None = None
    """The frozen base policy: a policy file or checkpoint of any offrl algorithm (e.g. algos/bc.py's checkpoint.pt). Saved inside this run's checkpoints and restored from them on resume."""
    demos: str | None = None
    """Demonstrations dataset id (the offline buffer); default: the env's scripted demos (offrl/fetch/push-scripted-v0 for offrl/FetchPush-v4)."""
    demo_episodes: int = 0
    """Use the demos' first N episodes only (0: all)."""
    residual: bool = True
    """Residual learning on the base (--no-residual: the RLPD-style baseline, SAC from scratch with the same demos, critic and schedule)."""
    residual_actor: Literal["sac", "td3"] = "sac"
    """sac: a tanh-squashed Gaussian residual with entropy tuning (the method's name); td3: the official residual TD3 (deterministic residual, truncated-normal noise)."""
    action_scale: float = 0.1
    """s: the residual is s·tanh(·) in the scaled action box (official 0.1; 0.2 for BoxCleanup, Coffee, CanSort)."""
    expand_action_range: bool = True
    """Expand the demos' action range by (1 + s) (official), so base actions sit within about ±1/(1 + s)."""
    min_action_range: float = 0.1
    """Each action dimension's demo range is raised to at least this (official min_range_per_dim 0.1)."""
    min_obs_std: float = 0.1
    """Observations are standardised by the demos' mean and std, the std at least this (official 0.1)."""
    num_critics: int = 10
    """Critic ensemble size K (LayerNorm MLPs on (s, combined action))."""
    target_critics: int = 2
    """The target is the min over this many heads drawn at random per update (official 2)."""
    critic_loss: Literal["abs-mean-squared", "mse"] = "abs-mean-squared"
    """abs-mean-squared: mean_B (mean_k |Q_k − y|)² (official update_critic); mse: mean_{k,B} (Q_k − y)²."""
    n_step: int = 3
    """n-step returns (official 3; Coffee/CanSort 5); an episode end stops the sum."""
    bootstrap_truncation: bool = False
    """Bootstrap from a time-limit end (official: no, the buffer's done is terminated | truncated)."""
    offline_fraction: float = 0.5
    """Fraction of each batch drawn from the demos (official 0.5: 128 + 128)."""
    updates_per_step: float = 4.0
    """Critic updates per env step after the warm-ups (official UTD 4)."""
    actor_updates_per_step: int = 1
    """Actor updates per env step, on the last of each group of critic updates (official 1)."""
    learning_starts: int = 10_000
    """Warm-up env steps with a = a_b + U(−w, w) (w = --warmup-noise) before any update (official 10k)."""
    warmup_noise: float | None = None
    """w of the warm-up actions (official 0.2; --no-residual: 1.0, uniform over the action box)."""
    critic_warmup_steps: int = 10_000
    """Critic-only updates after --learning-starts, before the loop (official 10k); the target's next residual is its mean (zero noise)."""
    stddev: float = 0.05
    """td3: σ of the exploration and target noise (official stddev_min = stddev_max = 0.05)."""
    stddev_clip: float = 0.3
    """td3: the target noise is clipped at ±this (official 0.3); acting uses no clip."""
    actor_lr: float | None = None
    """Actor AdamW learning rate (default: td3 1e-6 as official; sac 1e-4)."""
    critic_lr: float = 1e-4
    """Critic AdamW learning rate (official 1e-4)."""
    weight_decay: float = 0.01
    """AdamW weight decay of the actor and critic (official: torch's default 0.01)."""
    grad_clip: float = 1.0
    """Gradient-norm clip of the critic and the actor (official 1.0)."""
    init_alpha: float = 0.01
    """sac: initial temperature α (sparse 0/1 rewards: a small start)."""
    backup_entropy: bool = True
    """sac: subtract α log π(Δa'|s') in the TD target (SAC's soft backup)."""
    layer_norm: bool = True
    """LayerNorm in the hidden layers of the actor and critics (official)."""
    critic_init: Literal["default", "orthogonal"] = "default"
    """Critic weights. default: PyTorch's nn.Linear init, which is what the official heads get (its per-head orthogonal init is applied to stacked tensors, not to Linear modules, so it does nothing: a quirk, followed); orthogonal: gain 1, zero biases (what the official code meant)."""
    buffer_size: int = 200_000
    """Online replay buffer capacity (official 200k)."""
    total_steps: int = 300_000
    """Environment steps, the warm-up included (official: 300k after the warm-up)."""
    eval_every: int = 10_000
    """Evaluate every this many env steps (and at the end); 0 disables periodic evaluation."""
    eval_episodes: int = 50
    """Episodes per evaluation (deterministic residual; official 50)."""
    eval_base: bool = True
    """Evaluate the frozen base policy once before training (the summary's ``base``)."""

    def resolve(self, dataset) -> None:
        self.env = ENV_ALIASES.get(self.env, self.env)
        if self.demos is None:
            self.demos = DEMOS_FOR_ENV.get(self.env)
        if self.warmup_noise is None:
            self.warmup_noise = 0.2 if self.residual else 1.0
        if self.actor_lr is None:
            self.actor_lr = 1e-6 if self.residual_actor == "td3" else 1e-4

    def validate(self) -> None:
        super().validate()
        check(self.action_scale > 0, f"--action-scale must be positive, got {self.action_scale}")
        check(self.num_critics >= 1, f"--num-critics must be >= 1, got {self.num_critics}")
        check(1 <= self.target_critics <= self.num_critics,
              f"--target-critics must be in [1, --num-critics {self.num_critics}], got {self.target_critics}")
        check(self.n_step >= 1, f"--n-step must be >= 1, got {self.n_step}")
        check(0.0 <= self.offline_fraction <= 1.0, f"--offline-fraction must be in [0, 1], got {self.offline_fraction}")
        check(float(self.updates_per_step).is_integer(), f"--updates-per-step must be a whole number, got {self.updates_per_step}")
        k = int(self.updates_per_step)
        check(1 <= self.actor_updates_per_step <= k and k % self.actor_updates_per_step == 0,
              f"--actor-updates-per-step must divide --updates-per-step {k}, got {self.actor_updates_per_step}")
        check(self.critic_warmup_steps >= 0, f"--critic-warmup-steps must be >= 0, got {self.critic_warmup_steps}")
        check(self.warmup_noise is None or self.warmup_noise >= 0, f"--warmup-noise must be >= 0, got {self.warmup_noise}")
        check(self.stddev >= 0 and self.stddev_clip >= 0, "--stddev and --stddev-clip must be >= 0")
        check(self.min_action_range > 0 and self.min_obs_std > 0, "--min-action-range and --min-obs-std must be positive")
        check(self.grad_clip > 0, f"--grad-clip must be positive, got {self.grad_clip}")
        check(self.demo_episodes >= 0, f"--demo-episodes must be >= 0 (0: all), got {self.demo_episodes}")
        check(self.num_envs == 1, f"residual_sac steps one env (--num-envs 1, as the official n-step buffer), got {self.num_envs}")
        check(not self.record and not self.snapshots, "--record and --snapshots are not available for residual_sac")
        check(not self.compile, "--compile is not available for residual_sac (its update takes the schedule's flags)")


# ------------------------------------------------------------------------------------ math
def abs_mean_squared_loss(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The official critic loss: ``mean_B (mean_k |Q_k − y|)²`` for ``q [K, B]``, ``y [B]``
    (the square of the mean absolute TD error over heads, not the mean squared error)."""
    return (q - y).abs().mean(0).square().mean()


def action_limits(actions: np.ndarray, action_scale: float, min_range: float = 0.1, expand: bool = True):
    """(mid, half) of the scaled action box from demo actions (the official ``ActionScaler``):
    half = max((max − min)/2, min_range/2) · (1 + s) per dimension."""
    lo, hi = np.asarray(actions, np.float64).min(0), np.asarray(actions, np.float64).max(0)
    half = np.maximum((hi - lo) / 2, min_range / 2) * ((1 + action_scale) if expand else 1.0)
    return ((lo + hi) / 2).astype(np.float32), half.astype(np.float32)


def clamp_st(x: torch.Tensor, bound: float) -> torch.Tensor:
    """Clamp to ±bound with a straight-through gradient (the official TruncatedNormal._clamp)."""
    return x - x.detach() + x.detach().clamp(-bound, bound)


class ResidualActor(nn.Module):
    """The td3 residual: ``s · tanh(MLP(x))`` (LayerNorm, ReLU; orthogonal hidden layers, zero last layer)."""

    def __init__(self, in_dim: int, act_dim: int, hidden, scale: float, layer_norm: bool = True):
        super().__init__()
        self.net = MLP(in_dim, act_dim, hidden, layer_norm=layer_norm)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.tanh(self.net(x))


# ------------------------------------------------------------------------------------ agent
class ResidualSAC(SAC):
    """Residual SAC / TD3 agent on a frozen base (``self.base``, a :class:`~offrl.agent.FrozenPolicy`).

    ``act(obs)`` executes unscale(clamp(a_b + mean residual)); :meth:`behaviour` gives the online
    actions with the stored scaled action and a_b as extras. SAC's named steps are overridden:
    :meth:`td_target`, :meth:`critic_step`, :meth:`actor_loss`, :meth:`actor_step`,
    :meth:`update_targets`; ``update(batch, update_actor, warmup)`` runs them in the official order.
    Without a base policy (``base_policy`` None, e.g. ``offrl bench``) a_b = 0."""

    algo = "residual_sac"
    Config = Config
    policy_modules = ("actor", "act_mid", "act_half")

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu",
                 base=None, act_mid=None, act_half=None):
        from offrl.agent import Agent

        cfg.resolve(None)
        Agent.__init__(self, cfg, obs_dim, act_dim, obs_mean, obs_std, device)  # SAC's networks are replaced
        hidden, A = tuple(cfg.hidden), act_dim
        self.scale = float(cfg.action_scale) if cfg.residual else 1.0
        in_dim = obs_dim + (A if cfg.residual else 0)
        self.td3 = cfg.residual_actor == "td3"
        if self.td3:
            self.actor = ResidualActor(in_dim, A, hidden, self.scale, cfg.layer_norm)
            last = self.actor.net.net[-1]
        else:
            self.actor = TanhGaussianActor(in_dim, A, hidden, layer_norm=cfg.layer_norm,
                                           log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max)
            last = self.actor.head
        orthogonal_init_(self.actor, gain=1.0)  # official: orthogonal gain 1 on the intermediate layers
        if cfg.residual:  # official actor_last_layer_init_scale 0: the residual starts at exactly 0
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.critic = EnsembleCritic(obs_dim, A, cfg.num_critics, hidden, layer_norm=cfg.layer_norm)
        if cfg.critic_init == "orthogonal":
            orthogonal_init_(self.critic, gain=1.0)
        self.critic_target = EnsembleCritic(obs_dim, A, cfg.num_critics, hidden, layer_norm=cfg.layer_norm)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        if self.td3:
            self.actor_target = ResidualActor(in_dim, A, hidden, self.scale, cfg.layer_norm)
            self.actor_target.load_state_dict(self.actor.state_dict())
            self.actor_target.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(float(np.log(cfg.init_alpha))))
        self.target_entropy = float(-A if cfg.target_entropy is None else cfg.target_entropy)
        mid = torch.zeros(A) if act_mid is None else torch.as_tensor(act_mid, dtype=torch.float32)
        half = torch.ones(A) if act_half is None else torch.as_tensor(act_half, dtype=torch.float32)
        self.register_buffer("act_mid", mid.reshape(A).clone())
        self.register_buffer("act_half", half.reshape(A).clone())
        self.to(self.device)
        source = base if base is not None else cfg.base_policy
        self.base = None
        if cfg.residual and source is not None:
            self.frozen_policy("base", source)
            check(self.base.obs_dim == obs_dim and self.base.act_dim == A,
                  f"--base-policy acts on {self.base.obs_dim}/{self.base.act_dim} obs/act dims, the env has {obs_dim}/{A}")
        self.optimizers = {"actor": self.adamw(self.actor.parameters(), cfg.actor_lr),
                           "critic": self.adamw(self.critic.parameters(), cfg.critic_lr)}
        if not self.td3:
            self.optimizers["alpha"] = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)

    def adamw(self, params, lr) -> torch.optim.AdamW:
        fused = dict(fused=True, capturable=self.device.type == "cuda") if self.device.type in ("cpu", "cuda") else {}
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.cfg.weight_decay, **fused)

    # ------------------------------------------------------------------ coordinates
    def scale_action(self, a_env: torch.Tensor) -> torch.Tensor:
        """Env actions → the scaled box (clamped to the expanded range first, as the official)."""
        lo, hi = self.act_mid - self.act_half, self.act_mid + self.act_half
        return (torch.minimum(torch.maximum(a_env, lo), hi) - self.act_mid) / self.act_half

    def unscale_action(self, a: torch.Tensor) -> torch.Tensor:
        """Scaled actions → env actions, ``a`` clamped to [−1, 1] first (official), then to the env box."""
        return (self.act_mid + a.clamp(-1.0, 1.0) * self.act_half).clamp(-1.0, 1.0)

    @torch.no_grad()
    def base_env_action(self, obs_raw: torch.Tensor) -> torch.Tensor:
        """π_b(s) in env units, clamped to the expanded box as ``scale`` clamps it (zeros without a
        base or with --no-residual)."""
        if self.base is None:
            return torch.zeros(obs_raw.shape[0], self.act_dim, device=self.device)
        lo, hi = self.act_mid - self.act_half, self.act_mid + self.act_half
        return torch.minimum(torch.maximum(self.base(obs_raw), lo), hi)

    def base_action(self, obs_raw: torch.Tensor) -> torch.Tensor:
        """a_b = scale(π_b(s)) for raw observations."""
        return (self.base_env_action(obs_raw) - self.act_mid) / self.act_half

    def execute(self, base_env: torch.Tensor, base_act: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The env action of the scaled action ``a``: unscale(clamp(a, ±1)), computed as
        π_b(s) + (clamp(a, ±1) − a_b)·(1 + s)h (the same number, without the float round trip of
        scale → unscale, so a zero residual executes the base action bit for bit), then the env box."""
        # a_b lies in [−1, 1] (π_b(s) is clamped to the box); clamping it too removes its rounding at ±1
        return (base_env + (a.clamp(-1.0, 1.0) - base_act.clamp(-1.0, 1.0)) * self.act_half).clamp(-1.0, 1.0)

    def actor_input(self, obs: torch.Tensor, base_act: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs, base_act], -1) if self.cfg.residual else obs

    def residual(self, obs: torch.Tensor, base_act: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Δa for standardised observations and scaled base actions: the mean, or an exploration sample."""
        x = self.actor_input(obs, base_act)
        if self.td3:
            d = self.actor(x)
            return d if deterministic else clamp_st(d + self.cfg.stddev * torch.randn_like(d), 1 - CLAMP_EPS)
        return self.scale * self.actor.act(x, deterministic)

    def raw_policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        b_env = self.base_env_action(obs)
        b = (b_env - self.act_mid) / self.act_half
        return self.execute(b_env, b, b + self.residual(self.normalize_obs(obs), b, deterministic))

    def policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError("residual_sac acts on raw observations (raw_policy): the base needs them")

    @torch.no_grad()
    def behaviour(self, obs, noise: np.ndarray | None = None):
        """Online actions for raw observations: ``(env actions, {"act": stored a, "base_act": a_b})``;
        ``noise`` (U(−1, 1) per dim) gives the warm-up a = a_b + w·noise instead of the residual."""
        x = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)
        b_env = self.base_env_action(x)
        b = (b_env - self.act_mid) / self.act_half
        if noise is not None:
            a = b + self.cfg.warmup_noise * torch.as_tensor(np.asarray(noise, np.float32), device=self.device)
        else:
            a = b + self.residual(self.normalize_obs(x), b, deterministic=False)
        out = torch.cat([self.execute(b_env, b, a), a, b], -1).cpu().numpy()  # one device→host copy, not three
        env_a, stored, base = (np.ascontiguousarray(part) for part in np.split(out, 3, axis=-1))
        return env_a, {"act": stored, "base_act": base}

    def explore(self, obs):
        return self.behaviour(obs)[0]

    # ------------------------------------------------------------------ named steps
    @torch.no_grad()
    def td_target(self, batch, alpha: torch.Tensor, warmup: bool = False) -> torch.Tensor:
        """y = R + γᵏ(1 − d)[min over random heads of Q̄(s', clamp(a_b' + Δa', ±1)) − α log π]."""
        nb = batch.next_base_act if "next_base_act" in batch else torch.zeros_like(batch.act)
        x = self.actor_input(batch.next_obs, nb)
        bonus = 0.0
        if self.td3:
            d = self.actor_target(x)
            if not warmup:  # official: stddev 0 during the critic warm-up
                d = clamp_st(d + (self.cfg.stddev * torch.randn_like(d)).clamp(-self.cfg.stddev_clip, self.cfg.stddev_clip),
                             1 - CLAMP_EPS)
        elif warmup:
            d = self.scale * self.actor.act(x, True)
        else:
            u, logp = self.actor.sample(x)
            d = self.scale * u
            if self.cfg.backup_entropy:
                bonus = -alpha * logp
        q = self.critic_target(batch.next_obs, (nb + d).clamp(-1.0, 1.0))
        heads = torch.randperm(q.shape[0], device=q.device)[: self.cfg.target_critics]
        next_q = q.index_select(0, heads).min(0).values + bonus
        disc = batch.discount if "discount" in batch else self.cfg.discount
        return batch.rew + disc * (1.0 - batch.done) * next_q

    def critic_step(self, batch, alpha: torch.Tensor, warmup: bool = False) -> dict[str, torch.Tensor]:
        y = self.td_target(batch, alpha, warmup)
        q = self.critic(batch.obs, batch.act)
        loss = abs_mean_squared_loss(q, y) if self.cfg.critic_loss == "abs-mean-squared" else (q - y).square().mean()
        opt = self.optimizers["critic"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.cfg.grad_clip)
        opt.step()
        return {"critic_loss": loss.detach(), "critic_qt": y.mean(), "q_mean": q.detach().mean(),
                "critic_grad_norm": norm.detach()}

    def actor_loss(self, batch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(loss, log π or None, Δa)``: the ensemble-mean Q of clamp(a_b + Δa, ±1) (official)."""
        b = batch.base_act if "base_act" in batch else torch.zeros_like(batch.act)
        x = self.actor_input(batch.obs, b)
        if self.td3:
            d, logp = self.actor(x), None  # stddev 0 in the actor loss (official)
        else:
            u, logp = self.actor.sample(x)
            d = self.scale * u
        self.critic.requires_grad_(False)
        q = self.critic(batch.obs, (b + d).clamp(-1.0, 1.0)).mean(0)
        self.critic.requires_grad_(True)
        loss = -q.mean() if logp is None else (alpha * logp - q).mean()
        return loss, logp, d

    def actor_step(self, batch, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        opt = self.optimizers
        loss, logp, d = self.actor_loss(batch, alpha)
        opt["actor"].zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.actor.parameters(), self.cfg.grad_clip)
        opt["actor"].step()
        out = {"actor_loss": loss.detach(), "actor_grad_norm": norm.detach(),
               "residual_l1": d.detach().abs().sum(-1).mean(), "residual_l2": d.detach().norm(dim=-1).mean()}
        if self.td3:
            soft_update_(self.actor_target, self.actor, self.cfg.tau)
            return out
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        if self.cfg.autotune:
            opt["alpha"].zero_grad(set_to_none=True)
            alpha_loss.backward()
            opt["alpha"].step()
        out.update(alpha_loss=alpha_loss.detach(), entropy=-logp.detach().mean())
        return out

    def update_targets(self) -> None:
        soft_update_(self.critic_target, self.critic, self.cfg.tau)

    def update(self, batch, update_actor: bool = True, warmup: bool = False) -> dict[str, torch.Tensor]:
        """One critic update and its EMA, then (``update_actor``) one actor update (and α / the
        actor EMA). ``warmup``: the critic warm-up's target (mean next residual)."""
        alpha = self.log_alpha.detach().exp()
        metrics = self.critic_step(batch, alpha, warmup)
        self.update_targets()
        if update_actor:
            metrics.update(self.actor_step(batch, alpha))
        if not self.td3:
            metrics["alpha"] = alpha
        return metrics


# ------------------------------------------------------------------------------------ data
BUFFER_EXTRAS = ("base_act", "next_base_act", "discount")


def _buffer(agent: ResidualSAC, capacity: int, seed: int, transform):
    from offrl.buffer import ReplayBuffer

    A = agent.act_dim
    return ReplayBuffer(agent.obs_dim, A, capacity, agent.device, seed=seed, transform=transform,
                        extras={"base_act": (A,), "next_base_act": (A,), "discount": ()})


def nstep_rows(obs, act, rew, next_obs, end_flag, discount: float, n: int):
    """n-step rows of one stretch of consecutive steps of one episode (rows in time order; only the
    last row may end the episode, ``end_flag`` = its done): ``(obs, act, R, next_obs, done, γᵏ)``
    per row, ``R = Σ_{i<k} γⁱ r_{t+i}`` with k = min(n, rows left) (:func:`offrl.buffer.nstep_targets`)."""
    from offrl.buffer import nstep_targets

    rew = np.asarray(rew, np.float32)
    flags = np.asarray(end_flag, np.float32)
    R, last, disc = nstep_targets(rew, flags, np.array([len(rew) - 1]), discount, n)
    return obs, act, R, np.asarray(next_obs)[last], flags[last], disc


def demo_buffer(cfg: Config, agent: ResidualSAC, dataset, transform):
    """The demos as n-step rows: the demo action (scaled) as the executed action, a_b = π_b(s) and
    a_b' = π_b(s'ₖ) (0 at a done) alongside; rebuilt from the dataset on resume (not saved)."""
    from offrl.buffer import nstep_targets

    dev = agent.device
    ends = dataset.episode_ends()
    flags = np.asarray(dataset.terminals, np.float32).copy()
    if not cfg.bootstrap_truncation:
        flags[ends] = 1.0  # official: done = terminated | truncated at every episode end
    R, last, disc = nstep_targets(dataset.rewards, flags, ends, cfg.discount, cfg.n_step)
    done = flags[last].astype(np.float32)
    next_obs = dataset.next_observations[last]
    obs_t = torch.as_tensor(dataset.observations, device=dev)
    nxt_t = torch.as_tensor(next_obs, device=dev)
    act = agent.scale_action(torch.as_tensor(dataset.actions, device=dev))
    base = agent.base_action(obs_t)
    next_base = agent.base_action(nxt_t) * (1.0 - torch.as_tensor(done, device=dev)).unsqueeze(-1)
    buf = _buffer(agent, len(dataset), cfg.seed + 1, transform)
    buf.add(dataset.observations, act, R, next_obs, done, base_act=base, next_base_act=next_base, discount=disc)
    buf.num_fixed = len(buf)
    return buf


class NStepSink:
    """Online transitions → n-step rows in the online buffer (one env copy). A step waits until n
    steps follow it or its episode ends; then its row (``nstep_rows``) is added, with the stored
    action ``extras["act"]`` (a_b + Δa, unclamped), ``extras["base_act"]`` and a_b' = π_b(s'ₖ) (0 at a
    done). The pending steps are checkpointed (a run part)."""

    FIELDS = ("obs", "act", "rew", "next_obs", "end", "base_act")

    def __init__(self, buffer, agent: ResidualSAC, cfg: Config):
        self.buffer, self.agent, self.cfg = buffer, agent, cfg
        self.pending: list[tuple] = []

    def __call__(self, tr) -> None:
        ended = bool(tr.term[0] or tr.trunc[0])
        end = float(tr.term[0] or (ended and not self.cfg.bootstrap_truncation))
        self.pending.append((tr.obs[0], tr.extras["act"][0], float(tr.rew[0]), tr.next_obs[0], end,
                             tr.extras["base_act"][0]))
        if ended:
            self._emit(len(self.pending))
            self.pending = []
        elif len(self.pending) == self.cfg.n_step:
            self._emit(1)
            self.pending.pop(0)

    def _emit(self, count: int) -> None:
        cols = [np.stack([np.asarray(p[i], np.float32) for p in self.pending]) for i in range(6)]
        obs, act, R, nxt, done, disc = nstep_rows(cols[0], cols[1], cols[2], cols[3], cols[4], self.cfg.discount,
                                                  self.cfg.n_step)
        dev = self.agent.device
        next_base = self.agent.base_action(torch.as_tensor(nxt[:count], device=dev))
        next_base = next_base * (1.0 - torch.as_tensor(done[:count], device=dev)).unsqueeze(-1)
        self.buffer.add(obs[:count], act[:count], R[:count], nxt[:count], done[:count], base_act=cols[5][:count],
                        next_base_act=next_base, discount=disc[:count])

    def state_dict(self) -> dict:
        return {"pending": [[torch.as_tensor(np.asarray(v, np.float32)) for v in p] for p in self.pending]}

    def load_state_dict(self, state: dict) -> None:
        self.pending = [(p[0].numpy(), p[1].numpy(), float(p[2]), p[3].numpy(), float(p[4]), p[5].numpy())
                        for p in state["pending"]]


class ResidualPhase(EnvPhase):
    """The official schedule, one ``advance`` at a time: --learning-starts warm-up env steps
    (a = a_b + U(−w, w); U from the collector's checkpointed action-space RNG); then
    --critic-warmup-steps critic-only updates (one per advance, no env step); then per env step
    ``updates_per_step`` critic updates, the actor on every (k / actor_updates_per_step)-th."""

    kind = "online"

    def __init__(self, cfg: Config, sampler, sink: NStepSink, make_collector, name: str = "online"):
        super().__init__(name, cfg.total_steps, make_collector)
        self.cfg, self.sampler, self.sink = cfg, sampler, sink
        self.env_steps = 0
        self.critic_warmup = 0

    def begin(self, run) -> None:
        super().begin(run)
        self.collector.sinks.append(self.sink)

    def advance(self, run) -> int:
        cfg, agent = self.cfg, run.agent
        if self.env_steps >= cfg.learning_starts and self.critic_warmup < cfg.critic_warmup_steps:
            run.acc.add(agent.update(self.sampler.sample(cfg.batch_size), update_actor=False, warmup=True))
            self.critic_warmup += 1
            self.updates += 1
            return 0
        warm = self.env_steps < cfg.learning_starts
        self.collector.step(lambda obs: agent.behaviour(obs, self.collector.random_actions() if warm else None))
        self.env_steps += 1
        if not warm:
            k = int(cfg.updates_per_step)
            every = k // cfg.actor_updates_per_step
            for i in range(k):
                run.acc.add(agent.update(self.sampler.sample(cfg.batch_size), update_actor=(i + 1) % every == 0))
                self.updates += 1
        return 1

    def state_dict(self) -> dict:
        return {**super().state_dict(), "env_steps": self.env_steps, "critic_warmup": self.critic_warmup}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.env_steps, self.critic_warmup = int(state["env_steps"]), int(state["critic_warmup"])


class BaseEval:
    """The frozen base policy's evaluation before training (same episodes as every evaluation);
    a run part, so a resumed run reports it too."""

    def __init__(self):
        self.result: dict | None = None
        self.zero_residual: dict | None = None
        """The agent before training, Δa = 0: the base's action clamped to the expanded demo range,
        which is what the residual starts from (it differs from ``result`` where the base acts outside that range)."""

    def state_dict(self) -> dict:
        return {"result": self.result, "zero_residual": self.zero_residual}

    def load_state_dict(self, state: dict) -> None:
        self.result = state.get("result")
        self.zero_residual = state.get("zero_residual")


# ------------------------------------------------------------------------------------ train
def train(cfg: Config) -> dict:
    """Train residual SAC / TD3 (or the --no-residual baseline) in ``cfg.env`` with ``cfg.demos``;
    returns the summary (offrl's keys plus ``base``: the frozen base's evaluation, and
    ``final_success_rate`` where the env reports success)."""
    from offrl.agent import config_to_dict
    from offrl.buffer import DataTransform, MixedSampler
    from offrl.collector import Collector
    from offrl.data import load_dataset
    from offrl.envs import env_dims
    from offrl.evaluation import evaluate
    from offrl.run import Run
    from offrl.train import make_evaluator, setup_torch, start_run

    ckpt, cfg, run_dir = start_run(cfg, ResidualSAC.algo, cfg.env)
    cfg.resolve(None)
    cfg.validate()
    check(cfg.demos is not None, f"--demos is needed: no default demonstrations for {cfg.env}")
    check(not cfg.residual or cfg.base_policy is not None or ckpt is not None,
          "--base-policy is needed (a policy file or checkpoint, e.g. from algos/bc.py); --no-residual trains without one")
    obs_dim, act_dim = env_dims(cfg.env)
    dataset = load_dataset(cfg.demos)
    check((dataset.obs_dim, dataset.act_dim) == (obs_dim, act_dim),
          f"--demos {dataset.id} has obs/act dims {dataset.obs_dim}/{dataset.act_dim}, {cfg.env} has {obs_dim}/{act_dim}")
    if cfg.demo_episodes:
        from offrl.algos.bc import first_episodes

        dataset = first_episodes(dataset, cfg.demo_episodes)
    device = setup_torch(cfg)
    mean = dataset.observations.mean(0).astype(np.float32)
    std = np.maximum(dataset.observations.std(0), cfg.min_obs_std).astype(np.float32)
    mid, half = action_limits(dataset.actions, cfg.action_scale, cfg.min_action_range, cfg.expand_action_range)
    if not cfg.residual:  # plain SAC over the env's action box
        mid, half = np.zeros(act_dim, np.float32), np.ones(act_dim, np.float32)
    base = (ckpt.get("frozen") or {}).get("base") if ckpt is not None else None  # the checkpoint's copy
    agent = ResidualSAC(cfg, obs_dim, act_dim, mean, std, device=device, base=base, act_mid=mid, act_half=half)
    transform = DataTransform(mean, std)
    demos = demo_buffer(cfg, agent, dataset, transform)
    online = _buffer(agent, cfg.buffer_size, cfg.seed, transform)
    sampler = MixedSampler([demos, online], [cfg.offline_fraction, 1.0 - cfg.offline_fraction])
    sink = NStepSink(online, agent, cfg)
    backend = getattr(cfg, "env_backend", "auto")
    phase = ResidualPhase(cfg, sampler, sink, lambda: Collector(cfg.env, 1, cfg.seed, backend=backend))
    ref_min, ref_max = dataset.metadata.get("ref_min_score"), dataset.metadata.get("ref_max_score")
    if dataset.env_id != cfg.env:
        from offrl.envs import reference_scores

        ref_min, ref_max = reference_scores(cfg.env)
    evaluator = make_evaluator(cfg, cfg.env, ref_min, ref_max)
    base_eval = BaseEval()
    meta = {"algo": agent.algo, "config": config_to_dict(cfg), "dataset": dataset.summary(), "env_id": cfg.env,
            "device": str(device), "torch": torch.__version__,
            "action_limits": {"mid": mid.tolist(), "half": half.tolist()}}
    run = Run(cfg, agent, [phase], evaluator, run_dir, meta,
              parts={"demos": demos, "online": online, "nstep": sink, "base_eval": base_eval}, ckpt=ckpt,
              desc=f"{agent.algo} {cfg.env}",
              checkpoint_extra={"dataset": dataset.id,
                                "env": {"env_id": cfg.env, "ref_min_score": ref_min, "ref_max_score": ref_max}},
              summary_extra={"algo": agent.algo, "dataset": dataset.id, "env": cfg.env})
    if ckpt is None and cfg.eval_base and agent.base is not None:
        res = evaluate(lambda o: agent.base(torch.as_tensor(np.asarray(o, np.float32), device=device)).cpu().numpy(), cfg.env,
                       cfg.eval_episodes, evaluator.seed, ref_min, ref_max)
        base_eval.result = {k: v for k, v in res.items() if not isinstance(v, list)}
        if cfg.residual:
            res = evaluate(lambda o: agent.act(o, deterministic=True), cfg.env, cfg.eval_episodes, evaluator.seed, ref_min,
                           ref_max)
            base_eval.zero_residual = {k: v for k, v in res.items() if not isinstance(v, list)}
    run.summary_updates.append(lambda: {"base": base_eval.result, "zero_residual": base_eval.zero_residual,
                                        "final_success_rate": run.evaluator.last.get("success_rate")})
    return run.execute()


ALGORITHM = register(Algorithm("residual_sac", ResidualSAC, Config, train=train, kind="online",
                               doc="Residual SAC / TD3 on a frozen base policy (ResFiT; Ankile et al., 2025)"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/residual_sac.py [flags]`


if __name__ == "__main__":
    main()
