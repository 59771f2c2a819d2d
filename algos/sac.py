"""SAC: Soft Actor-Critic with automatic entropy tuning (Haarnoja et al., 2018).

Off-policy maximum-entropy RL: twin Q critics with Polyak targets, a tanh-squashed Gaussian policy,
and a temperature α tuned so the policy's entropy tracks a target (−|A|). Online, on the shared
collector and replay buffer (truncation is not termination).

Update per step (critic, then actor and α, then targets):

    a', log π(a'|s') ~ π(·|s')
    y     = r + γ (1 − d) [ min(Q̄₁, Q̄₂)(s', a') − α log π(a'|s') ]
    L_Q   = E[ (Q₁(s,a) − y)² + (Q₂(s,a) − y)² ]
    ã, log π(ã|s) ~ π(·|s)                     (reparameterized)
    L_π   = E[ α log π(ã|s) − min(Q₁, Q₂)(s, ã) ]
    L_α   = E[ −log α · (log π(ã|s) + H̄) ]      (H̄ = target entropy = −|A|; rlkit's form)
    Q̄     ← τ Q + (1 − τ) Q̄                     (τ = 0.005)

Networks 2×256 ReLU, lr 3e-4 (Adam) for actor, critics and α, batch 256, γ 0.99, 5000 uniform-random
warm-up steps, one update per env step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from offrl.agent import Agent
from offrl.errors import check
from offrl.nets import EnsembleCritic, TanhGaussianActor, soft_update_
from offrl.online import OnlineConfig
from offrl.registry import Algorithm, register


@dataclass
class Config(OnlineConfig):
    """Soft Actor-Critic with automatic entropy tuning."""

    discount: float = 0.99
    """Discount γ."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    actor_lr: float = 3e-4
    """Actor learning rate."""
    critic_lr: float = 3e-4
    """Critic learning rate."""
    alpha_lr: float = 3e-4
    """Temperature learning rate."""
    init_alpha: float = 1.0
    """Initial temperature α."""
    autotune: bool = True
    """Tune α towards the target entropy (else keep init_alpha)."""
    target_entropy: float | None = None
    """Target entropy H̄ (default −|A|)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of actor and critics."""
    log_std_min: float = -20.0
    """Lower bound of the actor's log-std (clamped)."""
    log_std_max: float = 2.0
    """Upper bound of the actor's log-std (clamped)."""

    def validate(self) -> None:
        super().validate()
        check(self.log_std_min < self.log_std_max,
              f"--log-std-min must be below --log-std-max, got {self.log_std_min} and {self.log_std_max}")
        check(0.0 <= self.discount <= 1.0, f"--discount must be in [0, 1], got {self.discount}")
        check(0.0 < self.tau <= 1.0, f"--tau must be in (0, 1], got {self.tau}")
        check(self.init_alpha > 0, f"--init-alpha must be positive, got {self.init_alpha}")


class SAC(Agent):
    """SAC agent: ``update(batch) -> metrics``, ``act(obs)`` (tanh of the mean), ``explore(obs)`` (a sample).

    Named steps a method built on SAC overrides (AILBoost, residual SAC, CQL): construction —
    :meth:`make_actor`, :meth:`make_critic`, :meth:`make_extras`, :meth:`make_optimizers`; update —
    :meth:`td_target`, :meth:`critic_step`, :meth:`actor_loss`, :meth:`actor_step` (actor, then α),
    :meth:`update_targets`."""

    algo = "sac"
    Config = Config

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)
        # named construction steps, in this (RNG) order; a method built on SAC overrides its own (CQL)
        self.actor = self.make_actor()
        self.critic = self.make_critic()
        self.critic_target = self.make_critic()
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(float(np.log(getattr(cfg, "init_alpha", 1.0)))))
        self.target_entropy = float(-act_dim if cfg.target_entropy is None else cfg.target_entropy)
        self.make_extras()
        self.to(self.device)
        self.optimizers = self.make_optimizers()

    def make_actor(self) -> torch.nn.Module:
        cfg = self.cfg
        return TanhGaussianActor(self.obs_dim, self.act_dim, tuple(cfg.hidden), log_std_min=cfg.log_std_min,
                                 log_std_max=cfg.log_std_max)

    def make_critic(self) -> torch.nn.Module:
        """One Q ensemble (called for the critic, then for its target, which then copies it)."""
        return EnsembleCritic(self.obs_dim, self.act_dim, 2, tuple(self.cfg.hidden))

    def make_extras(self) -> None:
        """Further parameters of a method built on SAC, made before the move to the device."""

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.cfg
        return {"actor": self.adam(self.actor.parameters(), cfg.actor_lr),
                "critic": self.adam(self.critic.parameters(), cfg.critic_lr),
                "alpha": torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)}

    def policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.actor.act(obs, deterministic)

    @torch.no_grad()
    def explore(self, obs, with_log_prob: bool = False):
        """Sampled actions for a batch of raw observations (the collector's behaviour); with
        ``with_log_prob`` also log π(a|s) of each action (float32 numpy arrays)."""
        if not with_log_prob:
            return self.act(obs, deterministic=False)
        x = self.normalize_obs(torch.as_tensor(np.asarray(obs, np.float32), device=self.device))
        a, logp = self.actor.sample(x)
        return a.cpu().numpy(), logp.cpu().numpy()

    # ------------------------------------------------------------------ named steps
    @torch.no_grad()
    def td_target(self, batch, alpha: torch.Tensor) -> torch.Tensor:
        """y = r + γ(1 − d)[min Q̄(s', a') − α log π(a'|s')], a' ~ π(·|s')."""
        next_act, next_logp = self.actor.sample(batch.next_obs)
        next_q = self.critic_target(batch.next_obs, next_act).min(0).values - alpha * next_logp
        return batch.rew + self.cfg.discount * (1.0 - batch.done) * next_q

    def critic_step(self, batch, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.td_target(batch, alpha)
        q = self.critic(batch.obs, batch.act)
        critic_loss = (q - y).square().sum(0).mean()
        opt = self.optimizers["critic"]
        opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        opt.step()
        return {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean()}

    def actor_loss(self, batch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E[α log π(ã|s) − min Q(s, ã)] with ã reparameterized; returns (loss, log π(ã|s))."""
        new_act, logp = self.actor.sample(batch.obs)
        self.critic.requires_grad_(False)  # the actor loss needs dQ/da only, no critic weight grads
        q_pi = self.critic(batch.obs, new_act).min(0).values
        self.critic.requires_grad_(True)
        return (alpha * logp - q_pi).mean(), logp

    def actor_step(self, batch, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """The actor update, then the temperature's."""
        opt = self.optimizers
        actor_loss, logp = self.actor_loss(batch, alpha)
        opt["actor"].zero_grad(set_to_none=True)
        actor_loss.backward()
        opt["actor"].step()
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        if self.cfg.autotune:
            opt["alpha"].zero_grad(set_to_none=True)
            alpha_loss.backward()
            opt["alpha"].step()
        return {"actor_loss": actor_loss.detach(), "alpha_loss": alpha_loss.detach(), "entropy": -logp.detach().mean()}

    def update_targets(self) -> None:
        soft_update_(self.critic_target, self.critic, self.cfg.tau)

    def update(self, batch) -> dict[str, torch.Tensor]:
        alpha = self.log_alpha.detach().exp()
        critic = self.critic_step(batch, alpha)
        actor = self.actor_step(batch, alpha)
        self.update_targets()
        return {"critic_loss": critic["critic_loss"], "actor_loss": actor["actor_loss"],
                "alpha_loss": actor["alpha_loss"], "alpha": alpha, "entropy": actor["entropy"],
                "q_mean": critic["q_mean"]}


ALGORITHM = register(Algorithm("sac", SAC, Config, kind="online", doc="SAC (Haarnoja et al., 2018)"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/sac.py [flags]`


if __name__ == "__main__":
    main()
